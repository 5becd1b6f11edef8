"""Turn a Sample into token ids the same way for transformers (tuning) and llama.cpp (eval):
[BOS if the model adds one] + tokens(chat template + answer prefix), then tokens(answer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sealgguf.tasks.base import Sample
from sealgguf.tasks.chat import render


@dataclass
class PromptEncoder:
    encode: Callable[[str], list[int]]  # text -> ids, special-token text parsed, nothing added
    bos_id: int | None                  # prepended when not None
    chat_template: str | None
    bos_text: str = ""

    def prompt_ids(self, sample: Sample) -> list[int]:
        ids = self.encode(render(sample, self.chat_template, self.bos_text))
        return ([self.bos_id] if self.bos_id is not None else []) + ids

    def answer_ids(self, sample: Sample) -> list[int]:
        return self.encode(sample.answer)

    def count(self, sample: Sample) -> int:
        return len(self.prompt_ids(sample))


def gguf_adds_bos(reader) -> bool:
    """Whether llama.cpp prepends BOS for this GGUF (explicit key, else the vocab type's default)."""
    from sealgguf.gguf_file import field_value

    explicit = field_value(reader, "tokenizer.ggml.add_bos_token")
    if explicit is not None:
        return bool(explicit)
    return field_value(reader, "tokenizer.ggml.model") in ("llama", "t5")  # SentencePiece vocabularies
