"""Passkey retrieval in the format of llama.cpp's examples/passkey."""

from __future__ import annotations

import random

from sealgguf.tasks.base import Sample, last_integer

PREFIX = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
          "I will quiz you about the important information there.\n\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


class PasskeyTask:
    name = "passkey"
    max_answer_tokens = 10

    def build(self, rng: random.Random, size: int, depth: float | None = None) -> Sample:
        passkey = rng.randint(1, 50000)
        at = rng.randint(0, size) if depth is None else round(depth * size)
        key_line = f"The pass key is {passkey}. Remember it. {passkey} is the pass key. "
        body = FILLER * at + key_line + FILLER * (size - at)
        return Sample(
            task=self.name, seed=0, prompt=PREFIX + body + "\n\nWhat is the pass key?",
            answer_prefix="The pass key is", answer=f" {passkey}.", expected=str(passkey),
            meta={"depth": at / max(size, 1), "n_filler": size},
        )

    def score(self, sample: Sample, output: str) -> bool:
        return last_integer(output.split(".", 1)[0]) == sample.expected
