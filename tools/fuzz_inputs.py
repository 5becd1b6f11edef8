"""Fuzz `sealgguf inspect` and `sealgguf fold` with mutated GGUF headers and scales files.

A small valid llama-architecture GGUF is written with gguf-py (Q4_0, Q8_0 and F16 attn_output), with a
matching scales file. Each mutant changes one thing (a byte, a key's type, a dimension, an offset, a
tensor name, a scale, the scales metadata, the output path...) and runs the command line in-process.
Every mutant must end in one of two ways:

    error   exit status 2 or 3 and exactly one line on stderr, starting "sealgguf: error:"
    valid   exit status 0 and, for fold, an output that gguf-py and sealgguf both read back, with
            finite attn_output weights

and in both cases leave every input byte-identical and no partial file behind. Anything else is
counted as a traceback (exit 4 or an escaped exception), a hang (over --timeout seconds), a corrupt
output, a modified input, or a partial file.

    .venv/bin/python tools/fuzz_inputs.py --mutants 2000 --seed 1      # prints the counts by outcome
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

N_LAYER, N_HEAD, N_HEAD_KV, HEAD_DIM = 2, 4, 2, 32
N_EMBD = N_HEAD * HEAD_DIM
ARRAY, STRING = 9, 8


# -- a GGUF as editable records ------------------------------------------------------------------
def write_base(path: Path, arch: str = "llama", attn_types: tuple[str, ...] = ("Q4_0", "Q8_0")) -> None:
    """A tiny valid GGUF of `arch` (llama's key set), written by gguf-py. attn_output types it cannot
    quantize get random bytes of the right size."""
    import gguf

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(N_LAYER)
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(2 * N_EMBD)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_string("general.name", "fuzz")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    for i in range(N_LAYER):
        qt = gguf.GGMLQuantizationType[attn_types[i % len(attn_types)]]
        x = rng.normal(0, 0.05, (N_EMBD, N_EMBD)).astype(np.float32)
        try:
            data = gguf.quants.quantize(x, qt)
        except NotImplementedError:
            block, size = gguf.GGML_QUANT_SIZES[qt]
            data = rng.integers(0, 256, (N_EMBD, N_EMBD // block * size), dtype=np.uint8)
        w.add_tensor(f"blk.{i}.attn_output.weight", data, raw_dtype=qt)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class Model:
    """Key-value records and tensors of a GGUF, re-serializable after edits."""

    def __init__(self, path: Path):
        from sealgguf.gguf_file import GGUFFile

        f = GGUFFile(path)
        self.version = f.version
        self.kvs = [[k, fd.vtype, bytes(f.buf[fd.value_start:fd.end])] for k, fd in f.fields.items()]
        self.tensors = [[t.name, list(t.shape), t.type_id, t.offset, bytes(f.tensor_data(t))] for t in f.tensors]
        self.alignment = f.alignment
        self.n_kv = self.n_tensors = None  # overrides of the header counts

    def to_bytes(self, relayout: bool = True) -> bytes:
        kv = b"".join(_str(k) + struct.pack("<I", t) + v for k, t, v in self.kvs)
        ti = b""
        pos = 0
        for t in self.tensors:
            if relayout:
                t[3] = pos
                pos += -(-len(t[4]) // self.alignment) * self.alignment
            ti += _str(t[0]) + struct.pack("<I", len(t[1])) + b"".join(struct.pack("<Q", d % (1 << 64)) for d in t[1])
            ti += struct.pack("<IQ", t[2] % (1 << 32), t[3] % (1 << 64))
        head = b"GGUF" + struct.pack("<IQQ", self.version % (1 << 32),
                                     len(self.tensors) if self.n_tensors is None else self.n_tensors,
                                     len(self.kvs) if self.n_kv is None else self.n_kv)
        out = bytearray(head + kv + ti)
        out += b"\0" * (-len(out) % self.alignment)
        base = len(out)
        for t in sorted(self.tensors, key=lambda t: t[3] % (1 << 64)):
            start = base + t[3] % (1 << 64)
            if start > base + (1 << 24):
                continue  # a forged offset far past the end: leave the file short
            if len(out) < start:
                out += b"\0" * (start - len(out))
            out[start:start + len(t[4])] = t[4]
        return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _scalar(t: int, v) -> bytes:
    return struct.pack({0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
                        11: "<q", 12: "<d"}[t], v)


def _nested_array(depth: int) -> bytes:
    inner = struct.pack("<IQ", 4, 1) + struct.pack("<I", 7)
    for _ in range(depth):
        inner = struct.pack("<IQ", ARRAY, 1) + inner
    return inner


WRONG_VALUES = [
    (STRING, _str("abc")), (6, _scalar(6, float("inf"))), (6, _scalar(6, float("nan"))), (6, _scalar(6, 2.5)),
    (12, _scalar(12, -1e300)), (5, _scalar(5, -7)), (4, _scalar(4, 0)), (10, _scalar(10, (1 << 64) - 1)),
    (7, _scalar(7, True)), (ARRAY, struct.pack("<IQ", 4, 2) + _scalar(4, 3) + _scalar(4, 3)),
    (ARRAY, struct.pack("<IQ", 4, 0)), (ARRAY, struct.pack("<IQ", STRING, 1) + _str("x")),
    (ARRAY, _nested_array(1)), (ARRAY, _nested_array(5000)), (ARRAY, struct.pack("<IQ", 4, 1 << 40)),
    (13, b""), (0xFFFFFFFF, b""),
]
KEYS = ["llama.context_length", "llama.attention.key_length", "llama.attention.head_count_kv",
        "llama.attention.head_count", "llama.block_count", "llama.embedding_length", "general.alignment",
        "general.architecture", "llama.rope.freq_base", "tokenizer.ggml.tokens", "llama.attention.value_length"]


# -- mutations: each edits the Model, the scales, or the command, and names itself ----------------
def mutate(rng: random.Random, m: Model, case: dict) -> str:
    kind = rng.choice(["byte", "byte", "truncate", "key_type", "key_type", "key_dup", "key_empty", "dims",
                       "offset", "tensor_name", "tensor_type", "counts", "version", "arch", "layout",
                       "scale_value", "scale_value", "scale_shape", "scale_meta", "scale_meta", "scale_bytes",
                       "out_path", "valid"])
    case["relayout"] = True
    if kind == "byte":
        case["flip"] = [(rng.randrange(0, rng.choice([700, 12000])), rng.randrange(256))
                        for _ in range(rng.randint(1, 4))]
        return f"byte x{len(case['flip'])}"
    if kind == "truncate":
        case["truncate"] = rng.choice([rng.randrange(0, 700), -rng.randrange(1, 3000)])
        return f"truncate {case['truncate']}"
    if kind == "key_type":
        key = rng.choice(KEYS)
        t, v = rng.choice(WRONG_VALUES)
        rec = next((r for r in m.kvs if r[0] == key), None)
        if rec is None:
            m.kvs.append([key, t, v])
        else:
            rec[1], rec[2] = t, v
        return f"key_type {key} -> {t}"
    if kind == "key_dup":
        m.kvs.insert(rng.randrange(len(m.kvs)), list(rng.choice(m.kvs)))
        return "key_dup"
    if kind == "key_empty":
        rng.choice(m.kvs)[0] = rng.choice(["", "\udcff"[:0] + "x" * 70000])
        return "key_empty"
    if kind == "dims":
        t = rng.choice(m.tensors)
        choice = rng.choice(["zero", "max", "int64max", "overflow", "ndims0", "ndims5", "grow", "shrink"])
        if choice == "zero":
            t[1][rng.randrange(len(t[1]))] = 0
        elif choice == "max":
            t[1][-1] = (1 << 64) - 1
        elif choice == "int64max":
            t[1][-1] = (1 << 63) - 1
        elif choice == "overflow":
            t[1] = [32, 1 << 40, 1 << 40]
        elif choice == "ndims0":
            t[1] = []
        elif choice == "ndims5":
            t[1] = t[1] + [1, 1, 1, 1]
        elif choice == "grow":
            t[1][-1] += 1
        else:
            t[1][0] = max(32, t[1][0] - 32)
        return f"dims {choice}"
    if kind == "offset":
        case["relayout"] = False
        i = rng.randrange(len(m.tensors))
        choice = rng.choice(["misalign", "share", "overlap", "past_end", "swap"])
        if choice == "misalign":
            m.tensors[i][3] += rng.randint(1, 31)
        elif choice == "share" and i:
            m.tensors[i][3] = m.tensors[i - 1][3]
        elif choice == "overlap" and i:
            m.tensors[i][3] = m.tensors[i - 1][3] + 32
        elif choice == "past_end":
            m.tensors[i][3] += 1 << 30
        else:
            j = rng.randrange(len(m.tensors))
            m.tensors[i][3], m.tensors[j][3] = m.tensors[j][3], m.tensors[i][3]
        return f"offset {choice}"
    if kind == "tensor_name":
        t = rng.choice(m.tensors)
        t[0] = rng.choice([m.tensors[0][0], "", "x" * 80, f"blk.{N_LAYER}.attn_output.weight",
                           "blk.30.attn_q.weight", "blk.99999999999999999999.attn_norm.weight", "blk.-1.x"])
        return f"tensor_name {t[0][:40]!r}"
    if kind == "tensor_type":
        t = rng.choice(m.tensors)
        t[2] = rng.choice([4, 5, 99, 1 << 31, 0, 1, 8, 12, 30])
        return f"tensor_type {t[2]}"
    if kind == "counts":
        which = rng.choice(["n_kv", "n_tensors"])
        setattr(m, which, rng.choice([0, 1, 2 ** 40, 2 ** 64 - 1, len(m.kvs) + 1, len(m.tensors) + 1]))
        return f"counts {which}"
    if kind == "version":
        m.version = rng.choice([0, 1, 4, 2 ** 31])
        return f"version {m.version}"
    if kind == "arch":
        rec = next(r for r in m.kvs if r[0] == "general.architecture")
        rec[2] = _str(rng.choice(["bogus", "", "gemma3", "llama\0x"]))
        return "arch"
    if kind == "layout":
        key, val = rng.choice([("llama.attention.head_count", 3), ("llama.attention.head_count_kv", 3),
                               ("llama.attention.key_length", 16), ("llama.attention.value_length", 64),
                               ("llama.block_count", 3), ("llama.block_count", 1), ("llama.embedding_length", 2)])
        rec = next((r for r in m.kvs if r[0] == key), None)
        if rec is None:
            m.kvs.append([key, 4, _scalar(4, val)])
        else:
            rec[1], rec[2] = 4, _scalar(4, val)
        return f"layout {key}={val}"
    if kind == "scale_value":
        v = rng.choice([1e7, 1e30, 3.4e38, 1e-40, 1e-30, 0.0, -1.0, -1e30, 70000.0])
        case["scales"] = ("value", v, rng.random() < 0.5)
        return f"scale_value {v:g}"
    if kind == "scale_shape":
        case["scales"] = ("shape", rng.choice([(N_LAYER,), (N_LAYER + 1, N_HEAD), (N_LAYER, N_HEAD, 7),
                                                (N_LAYER, N_HEAD, HEAD_DIM, 1), (N_LAYER, N_HEAD_KV)]),
                          rng.choice(["float32", "float16", "float64", "int32"]))
        return f"scale_shape {case['scales'][1]} {case['scales'][2]}"
    if kind == "scale_meta":
        key, val = rng.choice([
            ("rope_scaling", "{bad json"), ("rope_scaling", "[1, 2]"), ("rope_scaling", '{"type": "yarn"}'),
            ("rope_scaling", '{"type": "yarn", "factor": "abc"}'), ("rope_scaling", '{"type": "yarn", "factor": 1e300}'),
            ("rope_scaling", '{"type": "linear", "factor": -2}'), ("rope_scaling", '{"type": "linear", "factor": 0}'),
            ("rope_scaling", '{"type": "bogus", "factor": 2}'), ("rope_scaling", '{"type": "ntk", "factor": 2}'),
            ("rope_scaling", '{"type": "yarn", "factor": 2, "original_context_length": -5}'),
            ("rope_scaling", '{"type": "yarn", "factor": 2, "original_context_length": 1e20}'),
            ("rope_scaling", "[" * 100000 + "]" * 100000), ("rope_scaling", '{"type": "yarn", "factor": 2}'),
            ("rope_scaling", '{"type": "ntk", "factor": 4, "head_dim": 32}'), ("granularity", "layer"),
            ("granularity", "channel"), ("task", "\x00" * 10)])
        case["scales"] = ("meta", key, val)
        return f"scale_meta {key}={val[:30]!r}"
    if kind == "scale_bytes":
        case["scales"] = ("bytes", rng.choice(["flip", "truncate", "huge_header"]), rng.randrange(1 << 30))
        return f"scale_bytes {case['scales'][1]}"
    if kind == "out_path":
        case["out"] = rng.choice(["model", "scales", "link_model", "dir"])
        return f"out_path {case['out']}"
    return "valid"


def write_scales(path: Path, case: dict) -> None:
    from safetensors.numpy import save_file

    spec = case.get("scales")
    values = np.ones((N_LAYER, N_HEAD), np.float32)
    values[0, 1] = 1.3
    meta = {"granularity": "head"}
    if spec and spec[0] == "value":
        if spec[2]:
            values = np.ones((N_LAYER, N_HEAD, HEAD_DIM), np.float32)
            meta["granularity"] = "channel"
        values[-1, 1] = spec[1]
    elif spec and spec[0] == "shape":
        values = np.ones(spec[1], spec[2])
        meta["granularity"] = "head" if len(spec[1]) == 2 else "channel"
    elif spec and spec[0] == "meta":
        meta[spec[1]] = spec[2]
    save_file({"scales": values}, str(path), metadata=meta)
    if spec and spec[0] == "bytes":
        data = bytearray(path.read_bytes())
        if spec[1] == "flip":
            data[spec[2] % len(data)] ^= 0xFF
        elif spec[1] == "truncate":
            data = data[: spec[2] % len(data)]
        else:
            data[:8] = struct.pack("<Q", (1 << 63) + spec[2])
        path.write_bytes(bytes(data))


# -- running one mutant ---------------------------------------------------------------------------
class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def run_cli(argv: list[str], timeout: float) -> tuple[int | str, str]:
    """Run the command line in this process: (exit status or 'hang'/'traceback', stderr)."""
    from sealgguf import cli

    err = io.StringIO()
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
    except Hang:
        return "hang", err.getvalue()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # noqa: BLE001 - anything escaping main() is a traceback for the user
        return "traceback", f"{type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return code, err.getvalue()


def output_is_valid(out: Path) -> str | None:
    """None if the fold output reads back in gguf-py and sealgguf with finite attn_output; else why not."""
    import gguf

    from sealgguf.gguf_file import GGUFFile

    try:
        reader = gguf.GGUFReader(str(out))
        GGUFFile(out)
        for t in reader.tensors:
            if t.name.endswith("attn_output.weight"):
                vals = gguf.quants.dequantize(t.data, t.tensor_type)
                if not np.isfinite(vals).all():
                    return f"{t.name} not finite"
    except Exception as e:  # noqa: BLE001
        return f"unreadable: {type(e).__name__}: {e}"
    return None


def run_mutant(work: Path, base: bytes, seed: int, timeout: float) -> tuple[str, str]:
    """One mutant in its own folder: (outcome, description)."""
    rng = random.Random(seed)
    d = work / f"m{seed}"
    d.mkdir()
    base_path = d / "base.gguf"
    base_path.write_bytes(base)
    m = Model(base_path)
    base_path.unlink()
    case: dict = {}
    what = mutate(rng, m, case)
    data = bytearray(m.to_bytes(case.get("relayout", True)))
    for pos, val in case.get("flip", []):
        if pos < len(data):
            data[pos] = val
    if "truncate" in case:
        data = data[: case["truncate"]] if case["truncate"] >= 0 else data[: len(data) + case["truncate"]]
    model, scales = d / "model.gguf", d / "scales.safetensors"
    model.write_bytes(bytes(data))
    write_scales(scales, case)
    out = {"model": model, "scales": scales, "link_model": d / "link.gguf", "dir": d}.get(case.get("out"), d / "out.gguf")
    if case.get("out") == "link_model":
        out.symlink_to(model)
    inputs = {p: _sha(p) for p in (model, scales)}
    before = set(os.listdir(d))
    verb = rng.choice(["fold", "fold", "inspect"]) if not case.get("scales") and not case.get("out") else "fold"
    argv = ["inspect", str(model)] if verb == "inspect" else ["fold", str(model), str(scales), "-o", str(out), "--threads", "1"]
    code, err = run_cli(argv, timeout)
    what = f"{verb} {what}"
    if code in ("hang", "traceback"):
        return code, f"{what}: {err.strip()[-300:]}"
    if any(_sha(p) != h for p, h in inputs.items()):
        return "modified_input", what
    extra = set(os.listdir(d)) - before - ({out.name} if code == 0 else set())
    if extra:
        return "partial_file", f"{what}: {sorted(extra)}"
    if code == 0:
        if verb == "fold":
            why = output_is_valid(out)
            if why:
                return "corrupt_output", f"{what}: {why}"
        return "valid", what
    lines = err.strip().splitlines()
    if code in (2, 3) and len(lines) == 1 and lines[0].startswith("sealgguf: error:"):
        return "error", what
    return "traceback", f"{what}: exit {code}: {err.strip()[-300:]}"


def fuzz(n: int, seed: int, timeout: float = 20.0, verbose: bool = False) -> tuple[Counter, list[str]]:
    counts: Counter = Counter()
    bad: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sealgguf-fuzz-") as tmp:
        work = Path(tmp)
        write_base(work / "base.gguf")
        base = (work / "base.gguf").read_bytes()
        for i in range(n):
            outcome, what = run_mutant(work, base, seed * 1_000_003 + i, timeout)
            counts[outcome] += 1
            if outcome not in ("valid", "error"):
                bad.append(f"{outcome}: {what}")
                if verbose:
                    print(f"  {outcome}: {what}", flush=True)
    return counts, bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mutants", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds before a mutant counts as a hang")
    args = ap.parse_args()
    os.environ["TQDM_DISABLE"] = "1"
    t0 = time.time()
    counts, bad = fuzz(args.mutants, args.seed, args.timeout, verbose=True)
    print(json.dumps({"mutants": args.mutants, "seed": args.seed, "seconds": round(time.time() - t0, 1),
                      **{k: counts.get(k, 0) for k in ("valid", "error", "traceback", "hang", "corrupt_output",
                                                       "modified_input", "partial_file")}}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
