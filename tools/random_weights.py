"""Write a GGUF with another GGUF's header and random weights: the same metadata, tokenizer, tensor names,
shapes and ggml types, so the same model in every respect that speed and memory depend on.

For benchmarks where a model's shape must travel but its weights cannot (the device machine takes 64 MiB a
call; Gemma 3 270M is 253 MB): carry the first bytes of the file up to its tensor data, extend them there to
the file's size (a sparse file: the data reads as zeros), and fill it here. Never for accuracy figures.

    python tools/random_weights.py SRC.gguf OUT.gguf [--seed 0]

Each matrix gets N(0, 1/row length) values quantized to its own type by sealgguf's engine; 1-D tensors (the
norms) are ones: identity for every architecture, since GGUF stores Gemma's (1 + w) norm weights with the 1 added.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from sealgguf import _core
from sealgguf.gguf_file import open_gguf


def write_random(src: Path, out: Path, seed: int = 0) -> None:
    reader = open_gguf(src)
    rng = np.random.default_rng(seed)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(reader.raw(0, reader.data_offset))
        for t in reader.tensors:
            n_per_row = t.shape[0]
            rows = int(np.prod(t.shape[1:], dtype=np.int64))
            if len(t.shape) == 1:
                values = np.ones((1, n_per_row), np.float32)
            else:
                values = rng.standard_normal((rows, n_per_row), dtype=np.float32) / np.float32(np.sqrt(n_per_row))
            raw = _core.quantize(values, t.type_id)
            assert raw.nbytes == t.n_bytes, (t.name, raw.nbytes, t.n_bytes)
            f.seek(reader.data_offset + t.offset)
            f.write(raw.tobytes())
        f.truncate(reader.size)
    os.replace(tmp, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    write_random(args.src, args.out, args.seed)
    print(f"{args.out}: {args.src.name}'s header, random weights")


if __name__ == "__main__":
    main()
