"""What every task shares: a Sample, the Task interface, and hitting a target length in tokens.

A task builds a prompt from a seed and an integer size (lines, filler sentences, pairs, ...).
`make_sample` searches the size so the prompt, rendered through the model's chat template and
tokenized by the model's own tokenizer, is as long as possible without exceeding the target.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Protocol

from sealgguf.errors import SealError


@dataclass
class Sample:
    task: str
    seed: int
    prompt: str          # the user message
    answer_prefix: str   # the start of the reply, given to the model ("The pass key is")
    answer: str          # the continuation trained on and expected (" 12345.")
    expected: str        # what the scorer looks for in the output
    meta: dict = field(default_factory=dict)
    n_tokens: int = 0    # length of the full rendered prompt, in the model's tokens


class Task(Protocol):
    name: str
    max_answer_tokens: int  # how many tokens eval lets the model generate

    def build(self, rng: random.Random, size: int, **kwargs) -> Sample: ...
    def score(self, sample: Sample, output: str) -> bool: ...


# Counts the tokens of a complete rendered prompt (chat template + answer prefix).
TokenCounter = Callable[[Sample], int]


def make_sample(task: Task, seed: int, length: int, count_tokens: TokenCounter, **kwargs) -> Sample:
    """The longest sample of `task` from `seed` whose prompt fits in `length` tokens."""

    def build(size: int) -> Sample:
        s = task.build(random.Random(f"{task.name}:{seed}"), size, **kwargs)
        s.seed = seed
        s.n_tokens = count_tokens(s)
        return s

    lo, hi = 1, 2
    best = build(lo)
    if best.n_tokens > length:
        raise SealError(f"--length {length}: too short for task {task.name}, whose smallest prompt has "
                        f"{best.n_tokens} tokens")
    while True:  # grow until too long, then bisect
        s = build(hi)
        if s.n_tokens > length:
            break
        best, lo, hi = s, hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        s = build(mid)
        if s.n_tokens <= length:
            best, lo = s, mid
        else:
            hi = mid
    return best


_INT = re.compile(r"-?\d+")


def last_integer(text: str) -> str | None:
    found = _INT.findall(text.replace(",", ""))
    return found[-1] if found else None


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0]
