"""Token tensors for tuning: prompt + answer ids, and where the answer starts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sealgguf.tasks import get_task, make_sample
from sealgguf.tasks.base import Sample
from sealgguf.tasks.seeds import split_seeds
from sealgguf.tokens import PromptEncoder


@dataclass
class Example:
    ids: torch.Tensor  # int64 [T]: prompt then answer
    n_answer: int
    sample: Sample


def make_examples(tasks: list[str], n: int, length: int, encoder: PromptEncoder, split: str,
                  seed: int = 0) -> list[Example]:
    """n samples of `length` tokens (answer included), cycling through `tasks`."""
    examples = []
    for i, s in enumerate(split_seeds(split, n, seed)):
        task = get_task(tasks[i % len(tasks)], train=(split != "eval"))
        sample = make_sample(task, s, length, lambda x: encoder.count(x) + len(encoder.answer_ids(x)))
        prompt, answer = encoder.prompt_ids(sample), encoder.answer_ids(sample)
        examples.append(Example(torch.tensor(prompt + answer, dtype=torch.long), len(answer), sample))
    return examples


def anchor_windows(encoder: PromptEncoder, n: int, window: int = 256) -> list[torch.Tensor]:
    """n windows of plain essay text for the knowledge-keeping term. They come from the start of the
    corpus; the knowledge check reads its text from the end (sealgguf.tasks.words)."""
    from sealgguf.tasks.words import anchor_sentences

    sentences = anchor_sentences()
    bos = [encoder.bos_id] if encoder.bos_id is not None else []
    ids = encoder.encode(" ".join(sentences[: 40 * n]))
    width = window - len(bos)
    if len(ids) < n * width:
        raise ValueError(f"essay text too short for {n} windows of {window} tokens")
    return [torch.tensor(bos + ids[i * width:(i + 1) * width], dtype=torch.long) for i in range(n)]
