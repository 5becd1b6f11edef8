"""Self-Extend in the tuner: attention at the positions llama.cpp's group attention gives each query.

transformers applies rotary embeddings at each token's own index, then calls the model's attention
function. This one, registered with transformers' AttentionInterface (the way flash-attention kernels plug
in), cuts the sequence into windows of W queries. A window's queries see its own keys as they are and every
older key rotated back to its grouped position (sealgguf.self_extend.grouped_key_position), one SDPA call
per window. RoPE rotations compose, so a key rotated at index p and then by (position - p) is the key
rotated at its grouped position: the scores equal llama.cpp's after its cache edits.

    attach(model, SelfExtend(2, 1024))   # every layer's attention now groups
    detach(model)                        # back to the implementation it had
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sealgguf.errors import SealError
from sealgguf.self_extend import SelfExtend, grouped_key_position

NAME = "sealgguf_self_extend"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, D] (rotated at some positions, transformers' half-split layout) rotated by `delta` [n] more."""
    angle = delta.to(torch.float32)[:, None] * inv_freq[None, :].to(torch.float32)
    angle = torch.cat((angle, angle), dim=-1)
    return x * angle.cos().to(x.dtype) + _rotate_half(x) * angle.sin().to(x.dtype)


def group_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [B, H, T, D], key/value [B, H_kv, T, D], rotated at
    positions 0..T-1; returns [B, T, H, D]. Causal, no padding (the tuner's batches have none)."""
    se: SelfExtend = module.self_extend
    inv_freq: torch.Tensor = module.self_extend_inv_freq
    T, W = query.shape[2], se.window
    index = torch.arange(T, device=query.device)
    outs = []
    for s in range(0, T, W):
        e = min(s + W, T)
        k = key[:, :, :e]
        if s:
            old = index[:s]
            k = torch.cat((rotate(key[:, :, :s], grouped_key_position(se, s, old) - old, inv_freq),
                           key[:, :, s:e]), dim=2)
        causal = index[None, :e] <= index[s:e, None]  # [e - s, e], True = attend
        outs.append(F.scaled_dot_product_attention(query[:, :, s:e], k, value[:, :, :e], attn_mask=causal,
                                                   scale=scaling, enable_gqa=query.shape[1] != key.shape[1]))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _rotary(model: nn.Module) -> nn.Module:
    base = getattr(model, "model", model)
    rotary = getattr(base, "rotary_emb", None) or getattr(getattr(base, "language_model", None), "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise SealError(f"{type(model).__name__}: no rotary embedding found; Self-Extend needs RoPE")
    return rotary


def attach(model: nn.Module, se: SelfExtend) -> None:
    """Run every attention layer of `model` under Self-Extend `se` (a no-op when it is off)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from sealgguf.tune.model import decoder_layers

    if not se.active:
        return
    cfg = getattr(model.config, "text_config", None) or model.config
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or []) or getattr(cfg, "use_sliding_window", False):
        raise SealError(f"--self-extend: {cfg.model_type} has sliding-window layers; Self-Extend in tuning "
                        "supports models whose every layer attends to the whole context")
    rotary = _rotary(model)
    if getattr(rotary, "rope_type", "default") == "dynamic":
        raise SealError("--self-extend: dynamic NTK rope changes frequencies with length; it cannot be regrouped")
    layers = decoder_layers(model)
    head_dim = layers[0].self_attn.head_dim
    if rotary.inv_freq.numel() * 2 != head_dim:
        raise SealError(f"--self-extend: the rotary embedding covers {rotary.inv_freq.numel() * 2} of "
                        f"{head_dim} head dimensions; partial rotary is not supported")
    AttentionInterface.register(NAME, group_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    for layer in layers:
        layer.self_attn.self_extend = se
        layer.self_attn.self_extend_inv_freq = rotary.inv_freq
    model._sealgguf_attn_before = model.config._attn_implementation
    model.set_attn_implementation(NAME)


def detach(model: nn.Module) -> None:
    before = getattr(model, "_sealgguf_attn_before", None)
    if before is not None:
        model.set_attn_implementation(before)
        del model._sealgguf_attn_before
