"""Needle in a haystack over Paul Graham essays.

Evaluation uses the classic needle (the San Francisco sandwich). Training (train=True) uses
generated needles of the same shape about other places and activities, so the scales learn the
format, not the answer.
"""

from __future__ import annotations

import random

from sealgguf.tasks.base import Sample
from sealgguf.tasks.words import essay_sentences, word_list

CLASSIC = ("San Francisco", "eat a sandwich and sit in Dolores Park on a sunny day", ("sandwich", "dolores park"))
PLACES = ("Lisbon", "Osaka", "Nairobi", "Montreal", "Reykjavik", "Valparaiso", "Tbilisi", "Hanoi", "Krakow",
          "Cusco", "Marrakesh", "Tallinn", "Hobart", "Seville", "Zanzibar", "Bergen", "Oaxaca", "Kyoto")


class NiahTask:
    name = "niah"
    max_answer_tokens = 32

    def __init__(self, train: bool = False):
        self.train = train

    def build(self, rng: random.Random, size: int, depth: float | None = None) -> Sample:
        if self.train:
            place = rng.choice(PLACES)
            noun, adj = rng.choice(word_list("noun")), rng.choice(word_list("adjective"))
            what, keywords = f"find a {adj} {noun} near the old harbour", (adj, noun)
        else:
            place, what, keywords = CLASSIC
        needle = f"The best thing to do in {place} is {what}."
        sentences = essay_sentences()
        start = rng.randrange(len(sentences))
        hay = [sentences[(start + i) % len(sentences)] for i in range(size)]
        depth = rng.random() if depth is None else depth
        at = round(depth * size)
        text = " ".join(hay[:at] + [needle] + hay[at:])
        return Sample(
            task=self.name, seed=0,
            prompt=f"{text}\n\nBased on the text above, what is the best thing to do in {place}? "
                   "Answer in one sentence.",
            answer_prefix=f"The best thing to do in {place} is", answer=f" {what}.",
            expected="|".join(keywords), meta={"depth": depth, "n_sentences": size, "needle": needle},
        )

    def score(self, sample: Sample, output: str) -> bool:
        text = output.lower()
        return all(k in text for k in sample.expected.split("|"))
