"""Several needles of one shape in an essay haystack, one of them asked for (RULER's multi-key NIAH)."""

from __future__ import annotations

import random

from sealgguf.tasks.base import Sample, last_integer
from sealgguf.tasks.words import essay_sentences, unique_keys

N_KEYS = 4


class MultikeyTask:
    name = "multikey"
    max_answer_tokens = 16

    def build(self, rng: random.Random, size: int, depth: float | None = None) -> Sample:
        keys = unique_keys(rng, N_KEYS)
        values = [rng.randint(1_000_000, 9_999_999) for _ in keys]
        sentences = essay_sentences()
        start = rng.randrange(len(sentences))
        hay = [sentences[(start + i) % len(sentences)] for i in range(size)]
        spots = sorted(rng.randint(0, size) for _ in keys)
        ask = rng.randrange(N_KEYS)
        if depth is not None:
            spots[ask] = round(depth * size)
        for j in sorted(range(N_KEYS), key=lambda j: -spots[j]):  # insert from the back
            hay.insert(spots[j], f"One of the special magic numbers for {keys[j]} is: {values[j]}.")
        key, value = keys[ask], values[ask]
        return Sample(
            task=self.name, seed=0,
            prompt=(" ".join(hay) + f"\n\nWhat is the special magic number for {key} mentioned in the "
                    "provided text?"),
            answer_prefix=f"The special magic number for {key} mentioned in the provided text is",
            answer=f" {value}.", expected=str(value),
            meta={"n_sentences": size, "depth": spots[ask] / max(size, 1), "keys": keys},
        )

    def score(self, sample: Sample, output: str) -> bool:
        return last_integer(output.split("\n", 1)[0]) == sample.expected
