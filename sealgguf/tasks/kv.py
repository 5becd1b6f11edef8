"""Key-value retrieval over random UUID pairs, as in "Lost in the Middle" (Liu et al., 2023)."""

from __future__ import annotations

import json
import random
import uuid

from sealgguf.tasks.base import Sample


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class KvTask:
    name = "kv"
    max_answer_tokens = 40

    def build(self, rng: random.Random, size: int, depth: float | None = None) -> Sample:
        pairs = [(_uuid(rng), _uuid(rng)) for _ in range(size)]
        pick = rng.randrange(size) if depth is None else min(size - 1, int(depth * size))
        key, value = pairs[pick]
        data = json.dumps(dict(pairs), indent=1)
        return Sample(
            task=self.name, seed=0,
            prompt=("Extract the value corresponding to the specified key in the JSON object below.\n\n"
                    f"JSON data:\n{data}\n\nKey: \"{key}\"\nCorresponding value:"),
            answer_prefix=f"The value of key \"{key}\" is \"", answer=f"{value}\".", expected=value,
            meta={"n_pairs": size, "depth": pick / size},
        )

    def score(self, sample: Sample, output: str) -> bool:
        return output.strip().startswith(sample.expected)
