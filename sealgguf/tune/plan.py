"""The memory and time plan of a tuning run, made from the model's shape before anything big is loaded.

Peak memory on the tuning device = frozen weights + what the step keeps alive:
  * checkpoints: with activation checkpointing, each decoder layer's input [T, hidden] (L of them);
  * one layer's activations, saved for its backward: the whole model's when checkpointing is off (L layers);
    with it on, the layer being recomputed, twice (its saved tensors and their gradients);
  * attention: SDPA's kernels keep O(T) per head, never an eager [T x T] score matrix; the masks
    transformers builds for sliding-window layers are [T x T] booleans;
  * logits: only the answer tokens' (tiny); with --keep, two [256 x vocab] fp32 distributions and their
    log-softmaxes and gradient on the anchor window.
The per-token activation count of a layer is read off the ops the eager transformers layer runs (norms,
q/k/v, rope, the scale hook, o_proj input, the gated MLP); tools/bench_tune.py prints it beside measured
peaks. Time per step = the step's FLOPs (forward, the input-gradient backward of frozen weights, the
recompute), each kind at a rate measured on the spot in the dtype: the linear layers' at a square matmul's,
attention's at SDPA's causal forward + backward in the model's head shape (on this project's CPU, flash
attention ran at ~110 GFLOP/s, a quarter of a bf16 1024^2 matmul, and is most of a long step). An estimate,
low by the unfused elementwise ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sealgguf.errors import SealError

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Checkpointing "auto" turns it off only when the plan without it fits this many times over: the plan's
# count without checkpointing was 27% below to 78% above measured peaks, and glibc's heap retention adds
# more on CPU (README, Benchmarks)
NO_CHECKPOINT_HEADROOM = 2.0
ANCHOR_TOKENS = 256  # the --keep window (tune.data.anchor_windows)
GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a model, read without its weights."""
    n_layer: int
    hidden: int
    ffn: int
    n_head: int
    n_head_kv: int
    head_dim: int
    vocab: int
    n_params: int
    sliding_window: int = 0   # > 0: some layers attend to a window only (a [T x T] mask of their own)


def shape_from_gguf(path: Path) -> ModelShape:
    """From the GGUF header: the tensor table and the {arch}.* keys."""
    from sealgguf.gguf_file import open_gguf, read_layout

    reader = open_gguf(path)
    layout = read_layout(reader, path)
    shapes = {t.name: t.shape for t in reader.tensors}
    emb = shapes.get("token_embd.weight")
    if emb is None:
        raise SealError(f"{path}: tensor 'token_embd.weight' is missing")
    ffn = reader.get(f"{layout.arch}.feed_forward_length") or shapes.get("blk.0.ffn_up.weight", (0, 0))[1]
    return ModelShape(layout.n_layer, emb[0], int(ffn if not isinstance(ffn, list) else max(ffn)), layout.n_head,
                      layout.n_head_kv, layout.head_dim, emb[1], sum(math.prod(s) for s in shapes.values()),
                      int(reader.get(f"{layout.arch}.attention.sliding_window") or 0))


def shape_from_config(config) -> ModelShape:
    """From a transformers config (a Hugging Face folder): parameters counted from the shapes."""
    cfg = getattr(config, "text_config", None) or config
    h, L, f, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    H = cfg.num_attention_heads
    Hkv = getattr(cfg, "num_key_value_heads", None) or H
    D = getattr(cfg, "head_dim", None) or h // H
    per_layer = h * D * (2 * H + 2 * Hkv) + 3 * h * f
    n = L * per_layer + V * h * (1 if getattr(cfg, "tie_word_embeddings", False) else 2)
    return ModelShape(L, h, f, H, Hkv, D, V, n, int(getattr(cfg, "sliding_window", 0) or 0))


@dataclass(frozen=True)
class Rates:
    """FLOP/s measured on the device, in the dtype (measure_rates)."""
    matmul: float     # a square matmul: the linear layers
    attention: float  # SDPA, causal, forward + backward: attention's score and value products


@dataclass
class Plan:
    device: str
    dtype: str
    length: int
    checkpointing: bool
    parts: dict[str, int]       # bytes: weights, checkpoints, layer activations, attention masks, logits
    available: int | None       # bytes free on the device (None: unknown)
    flops: dict[str, float]     # FLOPs of one step: "linear", "attention"
    rates: Rates

    @property
    def peak(self) -> int:
        return sum(self.parts.values())

    @property
    def seconds_per_step(self) -> float:
        return self.flops["linear"] / self.rates.matmul + self.flops["attention"] / self.rates.attention

    def describe(self) -> str:
        rows = [f"plan: {self.device}, {self.dtype}, {self.length} tokens, activation checkpointing "
                f"{'on' if self.checkpointing else 'off'}"]
        rows += [f"  {name:<18s} {b / GIB:8.2f} GiB" for name, b in self.parts.items()]
        rows.append(f"  {'peak':<18s} {self.peak / GIB:8.2f} GiB"
                    + (f" of {self.available / GIB:.1f} GiB available" if self.available else ""))
        rows.append(f"  time per step      {self.seconds_per_step:8.1f} s ({self.flops['linear'] / 1e12:.2f} TFLOP "
                    f"of matmuls at {self.rates.matmul / 1e9:.0f} GFLOP/s, {self.flops['attention'] / 1e12:.2f} "
                    f"TFLOP of attention at {self.rates.attention / 1e9:.0f} GFLOP/s, both measured here)")
        return "\n".join(rows)


def layer_activation_bytes(s: ModelShape, tokens: int, b: int) -> int:
    """Tensors one eager decoder layer saves for backward, per the ops it runs: 2 norms (input and output
    of each: 4 hidden), q/k/v and their rope'd copies (2 x (H + 2 Hkv) x D), attention output, the scale
    hook's input and o_proj's input (3 x H x D), the MLP's gate, up, activation and product (4 ffn), plus
    the residual stream (2 hidden)."""
    per_token = 6 * s.hidden + 2 * (s.n_head + 2 * s.n_head_kv) * s.head_dim + 3 * s.n_head * s.head_dim + 4 * s.ffn
    return per_token * tokens * b


def attention_flops(n_head: int, head_dim: int, tokens: int) -> float:
    """One causal attention pass of one layer: the score and value products, half of the square."""
    return 2 * 2 * n_head * head_dim * tokens * tokens / 2


def step_flops(s: ModelShape, tokens: int, checkpointing: bool) -> dict[str, float]:
    """FLOPs of forward + the input-gradient backward (the weights are frozen: no weight gradients) + the
    forward recompute under checkpointing: the linear layers' matmuls, and attention's."""
    linear = 2 * tokens * s.n_layer * (s.hidden * s.head_dim * (2 * s.n_head + 2 * s.n_head_kv) + 3 * s.hidden * s.ffn)
    passes = 1 + 1 + (1 if checkpointing else 0)  # forward, backward to the inputs, recompute
    # flash attention's backward does ~2x its forward
    return {"linear": passes * linear, "attention": (passes + 1) * s.n_layer * attention_flops(s.n_head, s.head_dim,
                                                                                             tokens)}


def _best_time(fn, device: str, tries: int = 3) -> float:
    import time

    import torch

    best = float("inf")
    for _ in range(tries + 1):  # the first is a warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_rates(device: str, dtype: str, s: ModelShape, n: int = 1024, tokens: int = 2048) -> Rates:
    """A 1024^2 matmul, and SDPA's causal attention forward + backward over `tokens` in the model's head shape
    (query heads, head_dim; the KV heads repeated as transformers' eager and SDPA paths see them), as the step
    calls it: best of 3 each, after a warm-up."""
    import torch
    import torch.nn.functional as F

    from sealgguf.tune.model import TORCH_DTYPES

    dt = TORCH_DTYPES[dtype]
    a = torch.randn(n, n, device=device).to(dt)
    matmul = 2 * n**3 / _best_time(lambda: a @ a, device)
    q, k, v = (torch.randn(1, s.n_head, tokens, s.head_dim, device=device).to(dt).requires_grad_() for _ in range(3))

    def attend():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    attention = 3 * attention_flops(s.n_head, s.head_dim, tokens) / _best_time(attend, device)
    return Rates(matmul, attention)


def available_bytes(device: str) -> int | None:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def make_plan(s: ModelShape, length: int, dtype: str, device: str, checkpointing: bool, keep: bool,
              rates: Rates | None = None) -> Plan:
    b = DTYPE_BYTES[dtype]
    layer = layer_activation_bytes(s, length, b)
    parts = {
        "weights": s.n_params * b,
        "checkpoints": s.n_layer * length * s.hidden * b if checkpointing else 0,
        "layer activations": 2 * layer if checkpointing else s.n_layer * layer,
        "attention masks": length * length * (2 if s.sliding_window and s.sliding_window < length else 1),
        "logits": 4 * ANCHOR_TOKENS * s.vocab * 4 if keep else 0,
    }
    return Plan(device, dtype, length, checkpointing, parts, available_bytes(device),
                step_flops(s, length, checkpointing), rates or measure_rates(device, dtype, s))


def plan_checkpointing(s: ModelShape, length: int, dtype: str, device: str, checkpointing: bool | None, keep: bool,
                       rates: Rates | None = None) -> Plan:
    """The plan of a run; checkpointing None ("auto") picks it: off (no recompute, the faster step) when the
    plan without it fits the free memory NO_CHECKPOINT_HEADROOM times over, else on."""
    if checkpointing is not None:
        return make_plan(s, length, dtype, device, checkpointing, keep, rates)
    off = make_plan(s, length, dtype, device, False, keep, rates)
    if off.available is not None and off.peak * NO_CHECKPOINT_HEADROOM <= off.available:
        return off
    return make_plan(s, length, dtype, device, True, keep, off.rates)


def check(plan: Plan, where: str) -> None:
    """Refuse a run that cannot fit, naming the fix."""
    if plan.available is None or plan.peak <= plan.available:
        return
    need, have = plan.peak / GIB, plan.available / GIB
    if plan.parts["weights"] > 0.8 * plan.available:
        fix = "--dtype bf16" if plan.dtype == "fp32" else "--device-map auto or a smaller model"
    elif not plan.checkpointing:
        fix = "activation checkpointing (drop --no-checkpointing)"
    else:
        fix = f"a shorter --length (the activations grow with it: {plan.length} tokens now)"
    raise SealError(f"{where}: the plan needs {need:.1f} GiB on {plan.device} but {have:.1f} GiB is free; "
                    f"use {fix} (--dry-run prints the plan)")
