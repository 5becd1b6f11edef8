"""LongEval line retrieval (the task SEAL was tuned and measured on)."""

from __future__ import annotations

import random

from sealgguf.tasks.base import Sample, last_integer
from sealgguf.tasks.words import unique_keys

HEADER = (
    "Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
    "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
    "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to retrieve "
    "the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:\n\n"
)


class LinesTask:
    name = "lines"
    max_answer_tokens = 12

    def build(self, rng: random.Random, size: int, depth: float | None = None) -> Sample:
        keys = unique_keys(rng, size)
        values = [rng.randint(1, 50000) for _ in keys]
        pick = rng.randrange(size) if depth is None else min(size - 1, int(depth * size))
        record = "".join(f"line {k}: REGISTER_CONTENT is <{v}>\n" for k, v in zip(keys, values))
        key, value = keys[pick], values[pick]
        question = f"\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line {key}? I need the number."
        return Sample(
            task=self.name, seed=0, prompt=HEADER + record + question,
            answer_prefix=f"The <REGISTER_CONTENT> in line {key} is", answer=f" {value}.",
            expected=str(value), meta={"key": key, "n_lines": size, "depth": pick / size},
        )

    def score(self, sample: Sample, output: str) -> bool:
        return last_integer(output.split("\n", 1)[0]) == sample.expected
