"""`sealgguf heads`: which attention heads help retrieval and which hurt it (the paper's Figure 2).

For every (layer, head), the change in the answer loss when that head's output is removed (scaled to 0
before o_proj), on synthetic samples of a task:
  * method "ablate": exact. One forward per head per sample; the heads of a layer are removed one per row of
    a batch (n_head rows), so a layer costs one batched forward, and the layers below it replay their
    outputs from the unablated run.
  * method "grad": first order, from one backward pass per sample through the SEAL-H scales at 1.0:
    removing head h moves its scale from 1 to 0, so the change in loss is about -dL/ds_h.
A positive change means the head helps (removing it raises the loss); a negative one means it hurts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from sealgguf.errors import SealError
from sealgguf.fsutil import atomic_output

METHODS = ("ablate", "grad")


def _replay(output, rows: int):
    """A decoder layer's forward that returns `output` (its batch-1 output in the unablated run), for `rows`."""
    def forward(*args, **kwargs):
        if isinstance(output, tuple):
            return (output[0].expand(rows, *output[0].shape[1:]),) + output[1:]
        return output.expand(rows, *output.shape[1:])
    return forward


@torch.no_grad()
def ablate(model, layout, examples, device: str, progress: bool = False) -> dict[str, np.ndarray]:
    """Exact single-head ablation: loss and exact-match change per (layer, head), averaged over examples.

    Removing a head of layer i leaves layers 0..i-1 as they were, so those layers replay their outputs from
    the unablated run instead of computing them again (half the work on average)."""
    from tqdm import tqdm

    from sealgguf.tune.model import decoder_layers
    from sealgguf.tune.trainer import answer_losses

    L, H, D = layout.n_layer, layout.n_head, layout.head_dim
    d_loss, d_exact = np.zeros((L, H)), np.zeros((L, H))
    masks = (1.0 - torch.eye(H, device=device)).repeat_interleave(D, dim=1)[:, None, :]  # row h removes head h
    layers = decoder_layers(model)
    bar = tqdm(total=len(examples) * L, desc="ablating heads", unit="layer", disable=not progress)
    for ex in examples:
        ids = ex.ids[None].to(device)
        outputs = []
        handles = [layer.register_forward_hook(lambda m, a, out: outputs.append(out)) for layer in layers]
        try:
            base_loss, base_exact = answer_losses(model, ids, ex.n_answer)
        finally:
            for h in handles:
                h.remove()
        for i, layer in enumerate(layers):
            def hook(module, args):
                return (args[0] * masks.to(args[0].dtype),) + tuple(args[1:])
            handle = layer.self_attn.o_proj.register_forward_pre_hook(hook)
            for j in range(i):
                layers[j].forward = _replay(outputs[j], H)
            try:
                loss, exact = answer_losses(model, ids.expand(H, -1), ex.n_answer)
            finally:
                handle.remove()
                for j in range(i):
                    del layers[j].forward  # back to the class's forward
            d_loss[i] += (loss - base_loss).cpu().numpy()
            d_exact[i] += (exact.float() - base_exact.float()).cpu().numpy()
            bar.update(1)
    bar.close()
    n = max(1, len(examples))
    return {"delta_loss": d_loss / n, "delta_exact_match": d_exact / n}


def gradient(model, layout, examples, device: str, progress: bool = False) -> dict[str, np.ndarray]:
    """First-order estimate of the loss change from removing each head: -dL/ds at s = 1, averaged."""
    from tqdm import tqdm

    from sealgguf.tune.model import SealScales
    from sealgguf.tune.trainer import answer_loss

    seal = SealScales(layout, "head").to(device).attach(model)
    try:
        for ex in tqdm(examples, desc="head gradients", unit="sample", disable=not progress):
            loss, _ = answer_loss(model, ex, device)
            (loss / len(examples)).backward()
        return {"delta_loss": -seal.scales.grad.double().cpu().numpy()}
    finally:
        seal.detach_hooks()


def head_map(model_path: str, task: str, length: int, samples: int, method: str, scales_path: str | None = None,
             apply_scales: bool = False, device: str = "auto", seed: int = 0, progress: bool = False) -> dict:
    """The layer x head map as a JSON-able dict (heads.json)."""
    from sealgguf import scales as scales_file
    from sealgguf.eval.stats import spearman
    from sealgguf.models import resolve
    from sealgguf.tasks import parse_tasks
    from sealgguf.tune import pick_device
    from sealgguf.tune.data import make_examples
    from sealgguf.tune.model import SealScales, load

    if method not in METHODS:
        raise SealError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if samples < 1 or length < 1:
        raise SealError("--samples and --length must be >= 1")
    if apply_scales and not scales_path:
        raise SealError("--apply-scales needs --scales FILE")
    parse_tasks(task)
    device = pick_device(device)
    path = resolve(model_path)
    learned = scales_file.load(scales_path) if scales_path else None
    lm = load(path, device, dtype="fp32")
    if learned is not None:
        learned.check_layout(lm.layout, str(scales_path))
    examples = make_examples([task], samples, length, lm.encoder, "train", seed)
    applied = None
    if apply_scales:  # the map of the tuned model: every head keeps its learned scale unless removed
        applied = SealScales(lm.layout, learned.granularity).to(device)
        with torch.no_grad():
            applied.scales.copy_(torch.from_numpy(learned.values))
        applied.attach(lm.model)
    t0 = time.time()
    try:
        out = (ablate if method == "ablate" else gradient)(lm.model, lm.layout, examples, device, progress)
    finally:
        if applied is not None:
            applied.detach_hooks()
    result = {"model": path.name, "task": task, "length": length, "samples": samples, "method": method,
              "seed": seed, "scales": str(scales_path) if scales_path else None, "scales_applied": apply_scales,
              "n_layer": lm.layout.n_layer, "n_head": lm.layout.n_head, "seconds": round(time.time() - t0, 1),
              **{k: v.round(6).tolist() for k, v in out.items()}}
    if learned is not None:
        per_head = learned.values if learned.values.ndim == 2 else learned.values.mean(-1)
        result["learned_scales"] = per_head.round(5).tolist()
        result["spearman_scales_vs_delta_loss"] = spearman(per_head, out["delta_loss"])
    return result


def write_json(result: dict, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1))


def plot(result: dict, path: str | Path) -> None:
    """Layer x head heatmap of the loss change (diverging, centred at 0); the learned scales beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    delta = np.asarray(result["delta_loss"])
    panels = [("change in answer loss when the head is removed\n(red: the head helps, blue: it hurts)", delta,
               "RdBu_r", max(1e-9, float(np.abs(delta).max())))]
    if "learned_scales" in result:
        s = np.asarray(result["learned_scales"])
        panels.append((f"learned scale (Spearman vs loss change {result['spearman_scales_vs_delta_loss']:+.2f})",
                       s - 1.0, "PuOr_r", max(1e-9, float(np.abs(s - 1.0).max()))))
    L, H = delta.shape
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 0.55 * H * len(panels) + 2.0 * len(panels),
                                                      1.2 + 0.22 * L), squeeze=False)
    for ax, (title, grid, cmap, lim) in zip(axes[0], panels):
        im = ax.imshow(grid, cmap=cmap, norm=TwoSlopeNorm(0.0, -lim, lim), aspect="auto")
        ax.set(title=title, xlabel="head", ylabel="layer", xticks=range(H), yticks=range(0, L, max(1, L // 15)))
        ax.title.set_fontsize(8)
        cb = fig.colorbar(im, ax=ax)
        if cmap == "PuOr_r":
            cb.set_label("scale - 1")
    how = "ablation" if result["method"] == "ablate" else "gradient estimate"
    applied = ", with the learned scales applied" if result.get("scales_applied") else ""
    fig.suptitle(f"{result['model']}: {result['task']} at {result['length']} tokens, {result['samples']} samples, "
                 f"{how}{applied}", fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
