"""The SEAL training loop: frozen model, only the scales learn, loss on the answer tokens only."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sealgguf.fsutil import atomic_output
from sealgguf.tune.data import Example
from sealgguf.tune.model import SealScales


@dataclass
class TrainConfig:
    lr: float = 1e-2
    epochs: int = 1
    grad_accum: int = 1
    keep: float = 0.0                   # weight of the knowledge-keeping KL term (0 = the paper's loss)
    seed: int = 0
    checkpoint_every: int = 0           # steps; 0 = never
    checkpoint_path: Path | None = None
    resume: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)   # answer loss per step
    kls: list[float] = field(default_factory=list)      # KL(baseline || sealed) per step, when keep > 0
    val_before: float | None = None     # teacher-forced exact match on the validation samples
    val_after: float | None = None
    val_loss_before: float | None = None  # mean answer cross-entropy on the same samples
    val_loss_after: float | None = None


def answer_losses(model, ids: torch.Tensor, n_answer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `ids` [B, T]: the mean cross-entropy of its last n_answer tokens, and whether each is the
    argmax; logits only for those positions, never [T x vocab]."""
    logits = model(input_ids=ids, logits_to_keep=n_answer + 1, use_cache=False).logits
    logits = logits[:, :-1].float()          # position t predicts token t + 1
    target = ids[:, -n_answer:]
    loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(-1)
    return loss, (logits.argmax(-1) == target).all(-1)


def answer_loss(model, ex: Example, device: str) -> tuple[torch.Tensor, bool]:
    """The answer cross-entropy of one example, and whether the model gets every answer token (teacher-forced)."""
    loss, exact = answer_losses(model, ex.ids[None].to(device), ex.n_answer)
    return loss[0], bool(exact[0])


def anchor_kl(model, seal: SealScales, ids: torch.Tensor, device: str) -> torch.Tensor:
    """Mean KL(baseline || sealed) of the next-token distributions over a window of plain text."""
    ids = ids[None].to(device)
    with torch.no_grad(), seal.bypassed():
        base = F.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), dim=-1)
    cur = F.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), dim=-1)
    return F.kl_div(cur, base, log_target=True, reduction="batchmean")


@torch.no_grad()
def validate(model, examples: list[Example], device: str) -> tuple[float, float]:
    """(teacher-forced exact match: every answer token is the argmax, mean answer loss)."""
    if not examples:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    scored = [answer_loss(model, ex, device) for ex in examples]
    model.train(was_training)
    return (sum(hit for _, hit in scored) / len(scored), sum(loss.item() for loss, _ in scored) / len(scored))


@torch.no_grad()
def sweep_score(model, seal: SealScales, val_set: list[Example], anchors: list[torch.Tensor], keep: float,
                device: str) -> dict[str, float]:
    """What --lr auto minimizes: the mean validation answer loss, plus keep x the mean KL(baseline || sealed) on
    the anchor windows: the tuning objective, measured on samples the candidate did not train on."""
    _, val_loss = validate(model, val_set, device)
    kl = sum(anchor_kl(model, seal, ids, device).item() for ids in anchors) / len(anchors) if keep and anchors else 0.0
    return {"val_loss": round(val_loss, 5), "kl": round(kl, 5), "score": round(val_loss + keep * kl, 5)}


def world() -> tuple[int, int]:
    """(processes, this one's rank) of a torchrun / accelerate launch run; (1, 0) otherwise."""
    import torch.distributed as dist

    return (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)


def train(model, seal: SealScales, train_set: list[Example], val_set: list[Example], cfg: TrainConfig,
          device: str, anchors: list[torch.Tensor] = ()) -> TrainResult:
    """AdamW on the scales, one sample at a time, an optimizer step every cfg.grad_accum samples. Under torchrun
    or accelerate launch, the grad_accum samples of each step are dealt round-robin to the processes and their
    gradients summed (data parallel, as DDP does): the same scales as one process with the same grad_accum."""
    import torch.distributed as dist
    from tqdm import tqdm

    n_proc, rank = world()
    result = TrainResult()
    result.val_before, result.val_loss_before = validate(model, val_set, device)
    opt = torch.optim.AdamW(seal.parameters(), lr=cfg.lr, weight_decay=0.0)  # constant lr, as the paper
    start = 0
    if cfg.resume and cfg.checkpoint_path and cfg.checkpoint_path.exists():
        state = torch.load(cfg.checkpoint_path, map_location="cpu")
        seal.load_state_dict(state["seal"])
        opt.load_state_dict(state["opt"])
        start, result.losses, result.kls = state["step"], state["losses"], state.get("kls", [])

    rng = random.Random(cfg.seed)
    order = [i for _ in range(cfg.epochs) for i in rng.sample(range(len(train_set)), len(train_set))]
    model.train()  # turns activation checkpointing on (dropout is 0 in these models)
    bar = tqdm(total=len(order), initial=start, desc="tuning", unit="sample", disable=not cfg.progress or rank > 0)
    group = torch.zeros(2, cfg.grad_accum, dtype=torch.float64)  # this step's answer losses and KLs, by slot
    for step in range(start, len(order)):
        slot = step % cfg.grad_accum
        if slot % n_proc == rank:  # this process's share of the step
            loss, _ = answer_loss(model, train_set[order[step]], device)
            total = loss
            if cfg.keep and anchors:
                kl = anchor_kl(model, seal, anchors[step % len(anchors)], device)
                total = loss + cfg.keep * kl
                group[1, slot] = kl.item()
            (total / cfg.grad_accum).backward()
            group[0, slot] = loss.item()
        bar.update(1)
        if slot + 1 < cfg.grad_accum and step + 1 < len(order):
            continue
        if n_proc > 1:  # sum the processes' gradients and losses
            for p in seal.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
            summed = group.to(p.grad.device)  # NCCL reduces GPU tensors only
            dist.all_reduce(summed)
            group = summed.cpu()
        opt.step()
        opt.zero_grad(set_to_none=True)
        result.losses += group[0, :slot + 1].tolist()
        result.kls += group[1, :slot + 1].tolist() if cfg.keep and anchors else []
        group.zero_()
        bar.set_postfix(loss=f"{sum(result.losses[-10:]) / len(result.losses[-10:]):.3f}")
        stepped = (step + 1) % cfg.grad_accum == 0  # no gradient half-accumulated: safe to save
        if rank == 0 and cfg.checkpoint_every and cfg.checkpoint_path and (step + 1) % cfg.checkpoint_every == 0 and stepped:
            with atomic_output(cfg.checkpoint_path) as tmp:
                torch.save({"seal": seal.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                            "losses": result.losses, "kls": result.kls}, tmp)
    bar.close()
    model.eval()
    result.val_after, result.val_loss_after = validate(model, val_set, device)
    return result
