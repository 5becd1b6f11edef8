"""Load a frozen causal LM for tuning and attach the SEAL scales to each layer's o_proj input.

A GGUF file is dequantized by transformers (`gguf_file=`), so the scales are learned against the
very weights that ship. A Hugging Face folder loads as usual.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sealgguf.errors import SealError
from sealgguf.layout import AttentionLayout
from sealgguf.rope import RopeScaling
from sealgguf.tokens import PromptEncoder

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3_text", "gemma2", "phi3")


class SealScales(nn.Module):
    """The learnable scales, applied to each layer's o_proj input by a forward pre-hook. All start at 1.0.

    form "columns" (the paper): `scales` [n_layer, n_head] (SEAL-H) or [n_layer, n_head, head_dim] (SEAL-C).
    form "factorized" (`--exact-fold`): `attn_v` [n_layer, n_head_kv, head_dim or 1], shared by the query
    heads of each KV group, times `attn_output` [n_layer, n_head // tie], one scalar per run of `tie` query
    heads (None when a run is as wide as a KV group: it would add nothing). Both fold with no
    requantization (sealgguf.scales documents the file form).
    """

    def __init__(self, layout: AttentionLayout, granularity: str, form: str = "columns", tie: int = 1):
        super().__init__()
        L, H, Hkv, D = layout.n_layer, layout.n_head, layout.n_head_kv, layout.head_dim
        self.head_dim, self.group, self.tie, self.form, self.granularity = D, H // Hkv, tie, form, granularity
        width = D if granularity == "channel" else 1
        if form == "columns":
            self.scales = nn.Parameter(torch.ones((L, H, D) if granularity == "channel" else (L, H)))
        else:
            self.attn_v = nn.Parameter(torch.ones(L, Hkv, width))
            self.attn_output = nn.Parameter(torch.ones(L, H // tie)) if tie < self.group else None
        self.enabled = True  # False: the hooks pass activations through (the baseline model)
        self._handles: list = []

    def head_scales(self, layer: int) -> torch.Tensor:
        """[n_head, head_dim or 1] scales of one layer, whatever the form."""
        if self.form == "columns":
            s = self.scales[layer]
            return s[:, None] if s.ndim == 1 else s
        s = self.attn_v[layer].repeat_interleave(self.group, dim=0)
        if self.attn_output is not None:
            s = s * self.attn_output[layer].repeat_interleave(self.tie)[:, None]
        return s

    def column_scales(self, layer: int) -> torch.Tensor:
        return self.head_scales(layer).expand(-1, self.head_dim).reshape(-1)

    def factors(self) -> dict[str, np.ndarray] | None:
        """The factorized form's arrays, as the scales file stores them (sealgguf.scales.FACTORS)."""
        if self.form == "columns":
            return None
        v = self.attn_v.detach().float().cpu()
        L, H = v.shape[0], v.shape[1] * self.group
        o = (self.attn_output.detach().float().cpu().repeat_interleave(self.tie, dim=1)
             if self.attn_output is not None else torch.ones(L, H))
        return {"attn_v": v.expand(-1, -1, self.head_dim).contiguous().numpy(), "attn_output": o.numpy()}

    def values(self) -> np.ndarray:
        """The per-query-head scales ([L, H] or [L, H, D]) as the scales file holds them."""
        from sealgguf.scales import compose

        f = self.factors()
        if f is not None:
            return compose(f["attn_v"], f["attn_output"], self.granularity)
        return self.scales.detach().float().cpu().numpy()

    def attach(self, model: nn.Module) -> "SealScales":
        for i, layer in enumerate(decoder_layers(model)):
            def hook(module, args, i=i):
                if not self.enabled:
                    return None
                x = args[0]
                return (x * self.column_scales(i).to(x.device, x.dtype),) + tuple(args[1:])

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
    attn_output_block_sizes: list[int]  # values per block of each attn_output type in the GGUF ([] for a folder)


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load(model_path: Path, device: str, rope: RopeScaling = RopeScaling(), dtype: str = "fp32",
         fast: bool = True, device_map: str | dict | None = None, offload_folder: str | None = None,
         max_memory: dict | None = None) -> LoadedModel:
    """The frozen model in `dtype` (fp32, bf16, fp16) on `device`, its layout and its prompt encoder.
    fast=False loads a GGUF the way transformers alone does (kept for tools/bench_load.py). `device_map`
    ("auto" or a module -> device dict) places the layers with accelerate instead, as transformers'
    big-model loading does: every GPU, then CPU, then `offload_folder` on disk; accelerate's hooks move the
    activations from device to device, and the backward pass follows them; `max_memory` caps each device
    (accelerate's {0: "20GiB", "cpu": "64GiB"})."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if max_memory and device_map is None:  # tune, imatrix and seal all load here: one check, before any loading
        raise SealError("--max-memory limits what --device-map auto places on each device: add --device-map auto")
    is_gguf = model_path.is_file()
    folder, kw = (model_path.parent, {"gguf_file": model_path.name}) if is_gguf else (model_path, {})
    model_kw = dict(kw)
    block_sizes: list[int] = []
    src, saved = None, None
    if is_gguf:
        import gguf
        from transformers import GgufConfig

        # plain weights in `dtype`: the tuner runs torch's kernels, never transformers' packed GGUF ones
        model_kw["quantization_config"] = GgufConfig(dequantize=True)

        from sealgguf.gguf_file import open_gguf, read_layout

        src = open_gguf(model_path)
        gguf_layout = read_layout(src, model_path)  # one-line errors before transformers
        block_sizes = [gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]][0]
                       for name in gguf_layout.attn_output_types]
    from sealgguf import hardware
    from sealgguf.tune import gguf_loader

    if is_gguf and fast:
        saved = gguf_loader.load_conversion(src)
    with gguf_loader.fast_gguf(saved) if is_gguf and fast else contextlib.nullcontext({}) as parsed:
        try:
            config = AutoConfig.from_pretrained(folder, **kw)
        except ValueError as e:
            raise SealError(f"{model_path}: transformers cannot load it ({str(e).splitlines()[0]})") from None
        layout = head_layout(config)
        rope = rope.bind(layout.context_length, layout.head_dim)
        _apply_rope(config, rope)
        # the tokenizer first: its conversion's transient memory (Gemma 3's 262k vocabulary: ~0.5 GiB) then
        # comes and goes before the model's weights exist, not on top of them
        tok = saved or AutoTokenizer.from_pretrained(folder, **kw)
        hardware.trim_heap()  # what the tokenizer's parse or conversion freed, before the weights arrive
        model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=TORCH_DTYPES[dtype], **model_kw)
    if is_gguf and fast and saved is None and len(parsed) == 1:
        gguf_loader.save_conversion(src, next(iter(parsed.values())), tok)
    model.requires_grad_(False)
    if device_map is None:
        model.to(device)
    else:
        place(model, device_map, offload_folder, max_memory)
    model.config.use_cache = False

    if is_gguf:
        from sealgguf.tokens import gguf_adds_bos

        add_bos = gguf_adds_bos(src)
    else:
        add_bos = bool(getattr(tok, "add_bos_token", False))
    encoder = PromptEncoder(
        encode=saved.encode if saved else lambda text: tok(text, add_special_tokens=False)["input_ids"],
        bos_id=tok.bos_token_id if add_bos and tok.bos_token_id is not None else None,
        chat_template=getattr(tok, "chat_template", None), bos_text=tok.bos_token or "",
    )
    return LoadedModel(model, layout, encoder, model_path, is_gguf, rope, block_sizes)


def place(model: nn.Module, device_map: str | dict, offload_folder: str | None = None,
          max_memory: dict | None = None) -> dict:
    """Spread a loaded model with accelerate: "auto" fills every GPU, then CPU RAM, then `offload_folder` (its
    infer_auto_device_map, decoder layers never split); a dict places modules by name ("cpu", "disk", GPU
    index); `max_memory` caps each device for "auto". accelerate's hooks then move activations between devices
    and load offloaded weights when their layer runs. The model is loaded into CPU RAM first (transformers
    refuses disk offload for GGUF files)."""
    from accelerate import dispatch_model, infer_auto_device_map

    if device_map == "auto":
        device_map = infer_auto_device_map(model, max_memory=max_memory,
                                           no_split_module_classes=model._no_split_modules,
                                           dtype=next(model.parameters()).dtype)
    if "disk" in device_map.values() and not offload_folder:
        raise SealError("the device map offloads layers to disk: give an offload folder")
    dispatch_model(model, device_map=device_map, offload_dir=offload_folder)
    return device_map


def shard(model: nn.Module, device: str) -> None:
    """FSDP2 (torch's fully_shard) over the processes of this run: each decoder layer's frozen weights, and the
    rest of the model's, are split across them and gathered for the layer's forward (and its recompute
    under checkpointing); the scales are not in the model and stay whole on every process. Weights loaded
    on the CPU move to `device` as they are sharded. For a model one device cannot hold."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


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
