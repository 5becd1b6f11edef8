"""Run a GGUF in llama.cpp (through llama-cpp-python) on task samples: greedy decoding after the
task's answer prefix, with the KV cache reused across samples that share a token prefix."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sealgguf.errors import SealError
from sealgguf.eval.backend import load_llama
from sealgguf.rope import RopeScaling
from sealgguf.self_extend import GroupState, SelfExtend, shift_steps
from sealgguf.tokens import PromptEncoder, gguf_adds_bos


def rope_to_apply(reader, rope: RopeScaling) -> RopeScaling:
    """The scaling eval must apply at load: none when the file already carries `rope` in its metadata
    (fold writes the tuning's scaling there and records it in seal.tune.rope_scaling), since applying it
    again would stretch twice (NTK: a base raised twice; YaRN: the wrong original window)."""
    carried = RopeScaling.from_json(reader.get("seal.tune.rope_scaling"), str(reader.path))
    if rope.active and carried.active and (carried.kind, carried.factor) == (rope.kind, rope.factor):
        return RopeScaling()
    return rope


class LlamaRunner:
    """One GGUF loaded in llama.cpp for greedy, prefix-reusing generation."""

    def __init__(self, path: str | Path, n_ctx: int, threads: int | None = None, flash_attn: bool = True,
                 rope: RopeScaling = RopeScaling(), reuse_prefix: bool = True, gpu_layers: int = 0,
                 reader=None, self_extend: SelfExtend = SelfExtend()):
        from sealgguf.gguf_file import field_value, open_gguf, read_layout

        self.path = Path(path)
        reader = reader or open_gguf(self.path)  # the caller's, when it has already validated the header
        layout = read_layout(reader, self.path)
        base = float(field_value(reader, f"{layout.arch}.rope.freq_base", 10000.0))
        kwargs = rope_to_apply(reader, rope).llama_kwargs(base, layout.context_length, layout.head_dim)
        self.llm = load_llama(self.path, gpu_layers, n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                              n_threads=threads or os.cpu_count(), flash_attn=flash_attn, swa_full=True, **kwargs)
        self.self_extend = self_extend
        self.reuse_prefix = reuse_prefix and not self_extend.active  # grouped positions depend on the history
        self.native_div = False  # True: llama.cpp's own seq_div, sign error and all (tools/self_extend_check.py)
        self._group = GroupState()
        self.tokens_processed = 0
        template = field_value(reader, "tokenizer.chat_template")
        bos = self.llm.token_bos()
        bos_text = self.llm.detokenize([bos], special=True).decode("utf-8", "replace") if bos >= 0 else ""
        self.encoder = PromptEncoder(
            encode=lambda text: self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True),
            bos_id=bos if gguf_adds_bos(reader) and bos >= 0 else None,
            chat_template=template, bos_text=bos_text,
        )
        self._eog = {self.llm.token_eos()} | {t for t in (self.llm.token_nl(),) if t >= 0}

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))

    def _feed(self, ids: list[int]) -> None:
        """Bring the context to exactly `ids`, evaluating only what is not already cached."""
        keep = 0
        if self.reuse_prefix:
            cached = self.llm.input_ids[: self.llm.n_tokens]
            limit = min(len(cached), len(ids) - 1)  # always evaluate at least one token for fresh logits
            while keep < limit and cached[keep] == ids[keep]:
                keep += 1
        self.llm.n_tokens = keep
        self.llm.eval(ids[keep:])
        self.tokens_processed += len(ids) - keep

    def _decode_grouped(self, ids: list[int]) -> None:
        """Self-Extend: decode `ids` in batches at llama.cpp's positions, editing the cache before each batch as
        llama.cpp's main loop does (sealgguf.self_extend.shift_steps); no batch crosses a window boundary."""
        import llama_cpp

        mem = llama_cpp.llama_get_memory(self.llm._ctx.ctx)
        start = 0
        while start < len(ids):
            for op, p0, p1, v in shift_steps(self.self_extend, self._group):
                if op == "add" or self.native_div:
                    (llama_cpp.llama_memory_seq_add if op == "add" else llama_cpp.llama_memory_seq_div)(mem, 0, p0, p1, v)
                    continue
                # llama.cpp's seq_div moves the positions but records the keys' rotation with the wrong sign
                # (llama-kv-cells.h, pos_div: shift += p_old - p_new), so keys would turn away from their new
                # positions (measured: tools/self_extend_check.py). One seq_add per position divides the same way
                # and rotates correctly; in increasing order no moved cell falls into a later range.
                for p in range(max(p0, 1), p1):
                    if p // v != p:
                        llama_cpp.llama_memory_seq_add(mem, 0, p, p + 1, p // v - p)
            chunk = ids[start:start + self.self_extend.batch(self._group, self.llm.n_batch)]
            self.llm._batch.set_batch(chunk, n_past=self._group.n_past, logits_all=False)
            self.llm._ctx.decode(self.llm._batch)
            self._group.n_past += len(chunk)
            start += len(chunk)
        self.tokens_processed += len(ids)

    def max_position(self) -> int:
        """The largest position in the cache (llama.cpp's own count, for checks)."""
        import llama_cpp

        return int(llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(self.llm._ctx.ctx), 0))

    def generate(self, ids: list[int], max_tokens: int) -> str:
        """Greedy continuation of `ids`, stopped at end of generation or a newline."""
        from llama_cpp import llama_vocab_is_eog

        if len(ids) + max_tokens > self.llm.n_ctx():
            raise SealError(f"{self.path.name}: prompt of {len(ids)} tokens + {max_tokens} does not fit n_ctx "
                            f"{self.llm.n_ctx()}")
        if self.self_extend.active:
            import llama_cpp

            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm._ctx.ctx), True)
            self.llm.n_tokens, self._group = 0, GroupState()
            self._decode_grouped(ids)
        else:
            self._feed(ids)
        out: list[int] = []
        vocab = self.llm._model.vocab
        for _ in range(max_tokens):
            tok = int(np.argmax(self._last_logits()))
            if llama_vocab_is_eog(vocab, tok) or tok in self._eog:
                break
            out.append(tok)
            if len(out) == max_tokens:
                break  # no logits needed after the last token
            if self.self_extend.active:
                self._decode_grouped([tok])
            else:
                self.llm.eval([tok])
                self.tokens_processed += 1
        return self.llm.detokenize(out).decode("utf-8", "replace")

    def close(self) -> None:
        self.llm.close()
