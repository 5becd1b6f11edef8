"""Load a frozen causal LM for tuning and attach the SEAL scales to each layer's o_proj input.

A GGUF file is dequantized by transformers (`gguf_file=`), so the scales are learned against the
very weights that ship. A Hugging Face folder loads as usual.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sealgguf.errors import SealError
from sealgguf.layout import AttentionLayout
from sealgguf.rope import RopeScaling
from sealgguf.tokens import PromptEncoder

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3_text", "gemma2", "phi3")


class SealScales(nn.Module):
    """SEAL-H: scales [n_layer, n_head]; SEAL-C: [n_layer, n_head, head_dim]. Start at 1.0 (no change)."""

    def __init__(self, layout: AttentionLayout, granularity: str):
        super().__init__()
        shape = (layout.n_layer, layout.n_head) + ((layout.head_dim,) if granularity == "channel" else ())
        self.head_dim = layout.head_dim
        self.scales = nn.Parameter(torch.ones(shape, dtype=torch.float32))
        self.enabled = True  # False: the hooks pass activations through (the baseline model)
        self._handles: list = []

    def column_scales(self, layer: int) -> torch.Tensor:
        s = self.scales[layer]
        return s.repeat_interleave(self.head_dim) if s.ndim == 1 else s.reshape(-1)

    def attach(self, model: nn.Module) -> "SealScales":
        for i, layer in enumerate(decoder_layers(model)):
            def hook(module, args, i=i):
                if not self.enabled:
                    return None
                x = args[0]
                return (x * self.column_scales(i).to(x.dtype),) + tuple(args[1:])

            self._handles.append(layer.self_attn.o_proj.register_forward_pre_hook(hook))
        return self

    @contextlib.contextmanager
    def bypassed(self):
        """Run the model as if every scale were 1.0 (the frozen baseline)."""
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None) or getattr(getattr(base, "language_model", None), "layers", None)
    if layers is None or not hasattr(layers[0], "self_attn") or not hasattr(layers[0].self_attn, "o_proj"):
        raise SealError(f"{type(model).__name__}: no decoder layers with self_attn.o_proj (attention heads) found")
    return layers


def head_layout(config) -> AttentionLayout:
    cfg = getattr(config, "text_config", None) or config
    arch = cfg.model_type
    if arch not in SUPPORTED_ARCHS:
        raise SealError(f"architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")
    n_head = getattr(cfg, "num_attention_heads", None)
    if not n_head:
        raise SealError(f"model config ({arch}) has no num_attention_heads")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    n_head_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    return AttentionLayout(arch, cfg.num_hidden_layers, n_head, n_head_kv, head_dim,
                           int(getattr(cfg, "max_position_embeddings", 0) or 0))


def _apply_rope(config, rope: RopeScaling) -> None:
    """Set rope scaling on a transformers config (v4 `rope_scaling` or v5 `rope_parameters`)."""
    if not rope.active:
        return
    cfg = getattr(config, "text_config", None) or config
    params = getattr(cfg, "rope_parameters", None)
    theta = (params or {}).get("rope_theta") if isinstance(params, dict) else None
    theta = theta or getattr(cfg, "rope_theta", 10000.0)
    new = rope.transformers_params(theta)
    if isinstance(params, dict) and "full_attention" not in params:
        cfg.rope_parameters = new
    elif isinstance(params, dict):  # per-attention-type parameters (gemma3): scale the global layers
        params["full_attention"] = new
    else:
        cfg.rope_theta = new["rope_theta"]
        cfg.rope_scaling = None if new["rope_type"] == "default" else new
    cfg.max_position_embeddings = rope.context(rope.original_context_length)


@dataclass
class LoadedModel:
    model: nn.Module
    layout: AttentionLayout
    encoder: PromptEncoder
    source: Path
    is_gguf: bool
    rope: RopeScaling  # applied during tuning (bound to the native window)


def load(model_path: Path, device: str, rope: RopeScaling = RopeScaling()) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    is_gguf = model_path.is_file()
    folder, kw = (model_path.parent, {"gguf_file": model_path.name}) if is_gguf else (model_path, {})
    if is_gguf:
        from sealgguf.gguf_file import open_gguf, read_layout

        read_layout(open_gguf(model_path), model_path)  # one-line errors for a bad file, before transformers
    try:
        config = AutoConfig.from_pretrained(folder, **kw)
    except ValueError as e:
        raise SealError(f"{model_path}: transformers cannot load it ({str(e).splitlines()[0]})") from None
    layout = head_layout(config)
    rope = rope.bind(layout.context_length, layout.head_dim)
    _apply_rope(config, rope)
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32, **kw)
    model.requires_grad_(False)
    model.to(device)
    model.config.use_cache = False
    tok = AutoTokenizer.from_pretrained(folder, **kw)

    if is_gguf:
        from sealgguf.gguf_file import open_gguf
        from sealgguf.tokens import gguf_adds_bos

        add_bos = gguf_adds_bos(open_gguf(model_path))
    else:
        add_bos = bool(getattr(tok, "add_bos_token", False))
    encoder = PromptEncoder(
        encode=lambda text: tok(text, add_special_tokens=False)["input_ids"],
        bos_id=tok.bos_token_id if add_bos and tok.bos_token_id is not None else None,
        chat_template=getattr(tok, "chat_template", None), bos_text=tok.bos_token or "",
    )
    return LoadedModel(model, layout, encoder, model_path, is_gguf, rope)


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing that works with frozen weights (non-reentrant)."""
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def disable_checkpointing(model: nn.Module) -> None:
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
