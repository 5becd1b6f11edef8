"""`sealgguf tune`: learn SEAL-H / SEAL-C scales for a model and write the scales file."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from sealgguf.errors import SealError
from sealgguf.rope import RopeScaling
from sealgguf.self_extend import SelfExtend

# Chosen from tools/reproduce.py on SmolLM2 lines at 1K (README "Results"): SEAL-C at the paper's lr 2e-2 with
# keep 10 had the lowest validation loss of the runs that kept short-context perplexity within +2%. For SEAL-H
# the same rule picked lr 5e-2 with keep 10.
DEFAULT_GRANULARITY = "channel"
DEFAULT_LR = {"head": 5e-2, "channel": 2e-2}
DEFAULT_KEEP = 10.0
# --lr auto: each candidate trains on the first LR_SWEEP_SAMPLES training samples and is scored on the
# validation samples (sweep_score); the full tune then runs at the best one. The candidates bracket the
# defaults by about 2.5x each way.
LR_CANDIDATES = {"head": (1e-2, 2e-2, 5e-2, 1e-1), "channel": (5e-3, 1e-2, 2e-2, 5e-2)}
LR_SWEEP_SAMPLES = 12
QK_K = 256  # values per K-quant super-block, the widest ggml block


@dataclass
class TuneOptions:
    model: str
    out: Path
    tasks: list[str] = field(default_factory=lambda: ["lines"])
    granularity: str = DEFAULT_GRANULARITY
    exact_fold: bool = False       # factorized scales (KV-group vector x per-head scalar): fold with no requantization
    length: int = 1024
    samples: int = 50
    val_samples: int = 10
    lr: float | str | None = None  # None: DEFAULT_LR; "auto": a short sweep over LR_CANDIDATES (sweep_lr)
    epochs: int = 1
    grad_accum: int = 1
    keep: float = DEFAULT_KEEP     # knowledge-keeping term: weight of KL(baseline || sealed) on essay text
    anchor_windows: int = 16       # 256-token essay windows the KL term cycles through
    seed: int = 0
    device: str = "auto"
    device_map: str | None = None  # "auto": accelerate spreads the layers over every GPU, then CPU, then disk
    offload_folder: str | None = None  # where --device-map auto may offload layers to disk
    max_memory: dict | None = None  # --device-map auto: accelerate's per-device limits ({0: "20GiB", "cpu": ...})
    fsdp: bool = False             # under torchrun: shard the frozen weights over the processes (torch FSDP2)
    dtype: str = "auto"            # the frozen weights' storage and compute dtype; scales and AdamW stay fp32
    rope: RopeScaling = field(default_factory=RopeScaling)  # applied while tuning; fold writes it to the GGUF
    self_extend: SelfExtend = field(default_factory=SelfExtend)  # group attention while tuning; fold records it
    checkpointing: bool | None = None  # activation checkpointing; None ("auto"): off when the plan fits without it
    checkpoint_every: int = 0
    resume: bool = False
    dry_run: bool = False          # print the memory and time plan (tune.plan) and stop before loading
    progress: bool = True


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SealError(f"--device {device}: no CUDA device is available")
    return device


def join_processes(device: str) -> str:
    """Under torchrun / accelerate launch (WORLD_SIZE > 1): join the process group (NCCL on CUDA, gloo on CPU)
    and return this process's device (cuda:LOCAL_RANK on CUDA). Otherwise `device` unchanged."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def check_fsdp(opt: TuneOptions) -> None:
    """FSDP gathers each layer's weights in a collective call, so every process must run the same number of
    forward passes: the samples of every step must split evenly over the processes."""
    from sealgguf.tune.trainer import world

    n_proc, _ = world()
    if n_proc < 2:
        raise SealError("--fsdp shards the model over the processes of a torchrun / accelerate launch run; "
                        "this run has one process")
    if opt.device_map is not None:
        raise SealError("--fsdp and --device-map are two ways to spread one model: use one of them")
    if opt.lr == "auto":
        raise SealError("--fsdp needs a fixed --lr (the --lr auto sweep does not split evenly over processes)")
    if opt.grad_accum % n_proc or (opt.samples * opt.epochs) % opt.grad_accum:
        raise SealError(f"--fsdp needs --grad-accum a multiple of the {n_proc} processes and --samples x --epochs "
                        f"a multiple of --grad-accum (got {opt.grad_accum} and {opt.samples} x {opt.epochs})")


DTYPES = ("auto", "fp32", "bf16", "fp16")


def pick_dtype(dtype: str, device: str) -> str:
    """`auto`: bf16 where the hardware runs it fast (a CUDA GPU with bf16; a CPU with AMX-BF16 or AVX512-BF16),
    fp16 on an older GPU, else fp32. Without bf16 units torch emulates bf16 matmuls, slower than fp32."""
    import torch

    from sealgguf.hardware import cpu_has_fast_bf16

    if dtype not in DTYPES:
        raise SealError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device == "cpu" and cpu_has_fast_bf16() else "fp32"


def run_tune(opt: TuneOptions) -> dict:
    import torch

    from sealgguf import hardware
    from sealgguf import scales as scales_file
    from sealgguf.fsutil import sha256_file
    from sealgguf.models import resolve
    from sealgguf.scales import attn_output_tie
    from sealgguf.tasks import parse_tasks
    from sealgguf.tune import group_attention
    from sealgguf.tune.data import anchor_windows, make_examples
    from sealgguf.tune.model import SealScales, enable_checkpointing, load, shard
    from sealgguf.tune.plan import check as check_plan
    from sealgguf.tune.trainer import TrainConfig, train, world

    for name in ("length", "samples", "epochs", "grad_accum"):
        if getattr(opt, name) < 1:
            raise SealError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opt, name)}")
    if opt.val_samples < 0 or opt.checkpoint_every < 0:
        raise SealError("--val-samples and --checkpoint-every must be >= 0")
    if opt.lr is not None and opt.lr != "auto" and not (
            isinstance(opt.lr, (int, float)) and opt.lr > 0 and math.isfinite(opt.lr)):
        raise SealError(f"--lr must be 'auto' or a finite number > 0, got {opt.lr}")
    opt.rope.check("--rope-factor")
    opt.self_extend.check()
    if not (opt.keep >= 0 and math.isfinite(opt.keep)):
        raise SealError(f"--keep must be a finite number >= 0, got {opt.keep}")
    if opt.granularity not in DEFAULT_LR:
        raise SealError(f"--granularity must be 'head' or 'channel', got {opt.granularity!r}")
    parse_tasks(",".join(opt.tasks))
    device = join_processes(pick_device(opt.device))
    dtype = pick_dtype(opt.dtype, device)
    if opt.fsdp:
        check_fsdp(opt)
    torch.manual_seed(opt.seed)
    path = resolve(opt.model)
    plan = tuning_plan(path, opt, device, dtype)
    if opt.dry_run:
        return {"plan": plan}
    if opt.device_map is None and not opt.fsdp:
        check_plan(plan, str(path))  # the plan models one device; a device map or FSDP spreads the layers
    lm = load(path, "cpu" if opt.fsdp else device, opt.rope, dtype, device_map=opt.device_map,
              offload_folder=opt.offload_folder, max_memory=opt.max_memory)
    if opt.fsdp:
        shard(lm.model, device)
    limit = opt.self_extend.context(lm.rope.context(lm.layout.context_length))
    if lm.layout.context_length and opt.length > limit:
        raise SealError(f"--length {opt.length} exceeds the model's context of {int(limit)} tokens; "
                        "use --rope-scaling linear|yarn|ntk with --rope-factor, or --self-extend G,W")
    group_attention.attach(lm.model, opt.self_extend)
    if plan.checkpointing:
        enable_checkpointing(lm.model)

    train_set = make_examples(opt.tasks, opt.samples, opt.length, lm.encoder, "train", opt.seed)
    val_set = make_examples(opt.tasks, opt.val_samples, opt.length, lm.encoder, "val", opt.seed)
    anchors = anchor_windows(lm.encoder, opt.anchor_windows) if opt.keep else []
    form, tie = "columns", 1
    if opt.exact_fold:  # a folder has no quant types yet: tie for QK_K, the widest ggml block, exact for all
        form, tie = "factorized", attn_output_tie(lm.layout.n_head, lm.layout.head_dim,
                                                  lm.attn_output_block_sizes or [QK_K])
    def new_scales() -> SealScales:
        return SealScales(lm.layout, opt.granularity, form, tie).to(device).attach(lm.model)

    t0 = time.time()
    sweep = []
    if opt.lr == "auto":
        sweep = sweep_lr(lm.model, new_scales, train_set[:LR_SWEEP_SAMPLES], val_set, anchors, opt, device)
        lr = min(sweep, key=lambda c: c["score"])["lr"]
    else:
        lr = opt.lr if opt.lr is not None else DEFAULT_LR[opt.granularity]
    sweep_seconds = round(time.time() - t0, 1)
    cfg = TrainConfig(lr=lr, epochs=opt.epochs, grad_accum=opt.grad_accum, keep=opt.keep, seed=opt.seed,
                      checkpoint_every=opt.checkpoint_every, resume=opt.resume, progress=opt.progress,
                      checkpoint_path=Path(str(opt.out) + ".ckpt.pt"))
    seal = new_scales()
    t0 = time.time()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    result = train(lm.model, seal, train_set, val_set, cfg, device, anchors)
    # the training's peak, to set beside the plan's: the tensors CUDA's allocator handed out on the tuning device
    # (the weights included); on CPU the process's resident high-water mark, loading included
    peak_mib = (torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else
                hardware.process_mib("VmHWM") * 2**20) / 2**20
    values, factors = seal.values(), seal.factors()
    seal.detach_hooks()

    lengths = [int(ex.ids.numel()) for ex in train_set]
    meta = {
        "task": ",".join(opt.tasks), "length": opt.length, "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "samples": opt.samples, "lr": lr, "epochs": opt.epochs, "grad_accum": opt.grad_accum, "keep": opt.keep,
        "seed": opt.seed, "attn_output_tie": tie if opt.exact_fold else None,
        "rope_scaling": lm.rope.to_dict(), "self_extend": opt.self_extend.to_dict(),  # save writes them as JSON
        "arch": lm.layout.arch, "n_layer": lm.layout.n_layer,
        "n_head": lm.layout.n_head, "n_head_kv": lm.layout.n_head_kv, "head_dim": lm.layout.head_dim,
        "source": str(path), "source_sha256": sha256_file(path) if lm.is_gguf else "",
        "device": device, "device_map": opt.device_map,
        "max_memory": ",".join(f"{k}={v}" for k, v in opt.max_memory.items()) if opt.max_memory else None,
        "fsdp": True if opt.fsdp else None, "dtype": dtype,
        "checkpointing": plan.checkpointing,
        "seconds": round(time.time() - t0, 1),
        "peak_mib": round(peak_mib) if math.isfinite(peak_mib) else None,
        "plan_peak_mib": round(plan.peak / 2**20),
        "val_exact_match_before": result.val_before, "val_exact_match_after": result.val_after,
        "val_loss_before": result.val_loss_before, "val_loss_after": result.val_loss_after,
        "loss_first": result.losses[0] if result.losses else None,
        "loss_last10": sum(result.losses[-10:]) / max(1, len(result.losses[-10:])),
        "kl_last10": sum(result.kls[-10:]) / len(result.kls[-10:]) if result.kls else None,
        "lr_sweep": sweep or None, "lr_sweep_seconds": sweep_seconds if sweep else None,
    }
    n_proc, rank = world()
    meta["processes"] = n_proc if n_proc > 1 else None
    if rank == 0:  # every process holds the same scales; one writes them
        recorded = {k: v for k, v in meta.items() if v is not None}
        recorded["rope_scaling"] = meta["rope_scaling"] or ""  # always recorded; "" = the model's own rope
        scales_file.save(opt.out, values, recorded, factors)
        if cfg.checkpoint_path.exists():
            cfg.checkpoint_path.unlink()
    return {**meta, "granularity": opt.granularity, "exact_fold": opt.exact_fold, "losses": result.losses,
            "scale_min": float(values.min()), "scale_max": float(values.max())}


def tuning_plan(path: Path, opt: TuneOptions, device: str, dtype: str):
    """The run's memory and time plan (sealgguf.tune.plan), from the GGUF header or the folder's config; it
    settles --checkpointing auto. A device map or FSDP spreads the layers, which the one-device plan does not
    model: auto keeps checkpointing on there."""
    from sealgguf.tune.plan import plan_checkpointing, shape_from_config, shape_from_gguf

    if path.is_file():
        shape = shape_from_gguf(path)
    else:
        from transformers import AutoConfig

        shape = shape_from_config(AutoConfig.from_pretrained(path))
    checkpointing = opt.checkpointing
    if checkpointing is None and (opt.device_map is not None or opt.fsdp):
        checkpointing = True
    return plan_checkpointing(shape, opt.length, dtype, device, checkpointing, opt.keep > 0)


def sweep_lr(model, new_scales, train_set, val_set, anchors, opt: TuneOptions, device: str) -> list[dict]:
    """--lr auto: train fresh scales at each of LR_CANDIDATES[granularity] on `train_set` (one epoch, the run's
    keep), score each on the validation samples (trainer.sweep_score), and return one row per candidate."""
    from tqdm import tqdm

    from sealgguf.tune.trainer import TrainConfig, sweep_score, train

    if not val_set:
        raise SealError("--lr auto picks by validation loss: it needs --val-samples >= 1")
    rows = []
    for lr in tqdm(LR_CANDIDATES[opt.granularity], desc="lr sweep", unit="lr", disable=not opt.progress):
        seal = new_scales()
        try:
            train(model, seal, train_set, [], TrainConfig(lr=lr, keep=opt.keep, seed=opt.seed, progress=False),
                  device, anchors)
            rows.append({"lr": lr, **sweep_score(model, seal, val_set, anchors[:4], opt.keep, device)})
        finally:
            seal.detach_hooks()
    return rows


__all__ = ["TuneOptions", "run_tune", "sweep_lr", "LR_CANDIDATES", "LR_SWEEP_SAMPLES", "DEFAULT_GRANULARITY",
           "DEFAULT_LR", "DEFAULT_KEEP"]
