"""llama.cpp importance matrices: reading both file forms, writing the GGUF form, and collecting one.

An importance matrix holds, for each weight tensor, one value per input column: the mean square of the
activations that column multiplies (llama-imatrix collects them over a text; `sealgguf imatrix` does the
same for attn_output in transformers). llama-quantize --imatrix weighs each value's rounding error by it.
Both of llama.cpp's file forms are read:

    GGUF     tensors "<weight>.in_sum2" [n_mat, n] and "<weight>.counts" [n_mat]; importance = in_sum2 / counts
             (1 where a count is 0); keys imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size
             sealgguf may add "<weight>.in_gram" [n, n]: the sum of x x^T over the same activations (the Gram
             matrix; its diagonal is in_sum2). llama.cpp ignores tensors with other suffixes, so the file
             stays an imatrix to llama-quantize. sealgguf.fold.weighted uses it to carry each requantized
             block's error into the columns not yet quantized (error feedback).
    legacy   int32 n_entries, then per entry: int32 name length, name, int32 ncall, int32 n, float32[n] values;
    (.dat)   then optionally int32 chunk count, int32 dataset-name length, dataset name

`collect` measures attn_output's importance in transformers on essay text (the tuner's anchor windows),
for models without a llama-imatrix file; sealgguf.fold.weighted uses either for the fold's requantization.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from sealgguf.errors import EnvironmentProblem, SealError

KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
SUM_SUFFIX, COUNT_SUFFIX, GRAM_SUFFIX = ".in_sum2", ".counts", ".in_gram"
MAX_ENTRIES, MAX_NAME, MAX_VALUES = 1 << 20, 1 << 12, 1 << 26


def read_imatrix(path: str | Path) -> dict[str, np.ndarray]:
    """{weight tensor name: importance [n] float32} from either file form; every defect is a one-line SealError."""
    p = Path(path)
    if not p.is_file():
        raise EnvironmentProblem(f"{p}: imatrix file not found")
    with open(p, "rb") as f:
        magic = f.read(4)
    data = _read_gguf(p) if magic == b"GGUF" else _read_legacy(p)
    if not data:
        raise SealError(f"{p}: imatrix file holds no entries")
    for name, v in data.items():
        if not np.isfinite(v).all() or (v < 0).any():
            raise SealError(f"{p}: imatrix entry {name!r} has values that are negative or not finite")
    return data


def read_grams(path: str | Path) -> dict[str, np.ndarray]:
    """{weight tensor name: sum of x x^T [n, n]} from a GGUF imatrix's "<weight>.in_gram" tensors, as stored:
    read-only views of the file (an 8B model's take 2 GiB), not copies; divide by the entry's count for the mean
    (the fold's error feedback does not depend on the scale). {} for a legacy file or a GGUF without them.
    Every defect is a one-line SealError."""
    import gguf

    p = Path(path)
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            return {}
    importance = read_imatrix(p)
    out = {}
    for t in _open_gguf(p).tensors:
        if not t.name.endswith(GRAM_SUFFIX):
            continue
        name = t.name[: -len(GRAM_SUFFIX)]
        if name not in importance:
            raise SealError(f"{p}: tensor {t.name} has no {name}{SUM_SUFFIX} beside it")
        n, g = importance[name].size, t.data
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or g.size != n * n:
            raise SealError(f"{p}: tensor {t.name} must be F32 [{n}, {n}] (its entry has {n} columns), got "
                            f"{t.tensor_type.name} with {g.size} values")
        g = g.reshape(n, n)
        scale = float(np.abs(g).max()) if g.size else 0.0
        if not np.isfinite(scale) or not np.allclose(g, g.T, rtol=1e-4, atol=1e-6 * scale):
            raise SealError(f"{p}: tensor {t.name} is not a finite symmetric matrix")
        out[name] = g
    return out


def _open_gguf(p: Path):
    import gguf

    try:
        reader = gguf.GGUFReader(p)
    except Exception as e:  # gguf-py raises ValueError, struct.error, IndexError on damaged files
        raise SealError(f"{p}: not a readable GGUF imatrix ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return reader


def _read_gguf(p: Path) -> dict[str, np.ndarray]:
    import gguf

    reader = _open_gguf(p)
    for key in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        if key not in reader.fields:
            raise SealError(f"{p}: metadata key {key} is missing (not an imatrix written by llama-imatrix?)")
    sums, counts = {}, {}
    for t in reader.tensors:
        for suffix, into in ((SUM_SUFFIX, sums), (COUNT_SUFFIX, counts)):
            if t.name.endswith(suffix):
                if t.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise SealError(f"{p}: tensor {t.name} is {t.tensor_type.name}, expected F32")
                into[t.name[: -len(suffix)]] = np.asarray(t.data, dtype=np.float32)
    out = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise SealError(f"{p}: tensor {name}{SUM_SUFFIX if name not in sums else COUNT_SUFFIX} is missing "
                            "(in_sum2 and counts come in pairs)")
        s, c = sums[name], counts[name].reshape(-1)
        s = s.reshape(c.size, -1) if c.size and s.size % c.size == 0 else None
        if s is None or s.shape[1] == 0:
            raise SealError(f"{p}: tensor {name}{SUM_SUFFIX} does not hold one row per count ({c.size} counts)")
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(c[:, None] > 0, s / np.where(c > 0, c, 1)[:, None], 1.0)
        out[name] = np.ascontiguousarray(v.reshape(-1), dtype=np.float32)
    return out


def _read_legacy(p: Path) -> dict[str, np.ndarray]:
    raw = p.read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(raw):
            raise SealError(f"{p}: legacy imatrix ends inside {what} (at byte {pos} of {len(raw)})")
        pos += n
        return raw[pos - n:pos]

    def int32(what: str, low: int, high: int) -> int:
        (v,) = struct.unpack("<i", take(4, what))
        if not low <= v <= high:
            raise SealError(f"{p}: legacy imatrix {what} is {v}, expected {low}..{high}")
        return v

    out = {}
    for i in range(int32("entry count", 1, MAX_ENTRIES)):
        name_bytes = take(int32(f"entry {i + 1} name length", 1, MAX_NAME), f"entry {i + 1} name")
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise SealError(f"{p}: legacy imatrix entry {i + 1} name is not UTF-8") from None
        int32(f"entry {name!r} call count", 1, 2**31 - 1)
        n = int32(f"entry {name!r} value count", 1, MAX_VALUES)
        out[name] = np.frombuffer(take(4 * n, f"entry {name!r} values"), dtype="<f4").astype(np.float32)
    return out  # the optional trailer (chunk count, dataset name) is not needed


def write_imatrix(path: str | Path, importance: dict[str, np.ndarray], counts: dict[str, int], dataset: str,
                  chunk_size: int, chunk_count: int, grams: dict[str, np.ndarray] | None = None) -> None:
    """Write a GGUF imatrix as llama-imatrix does: in_sum2 = importance x count (count: the tokens an entry saw),
    so llama-quantize and read_imatrix recover `importance`; chunk_count chunks of chunk_size tokens. `grams`
    (mean x x^T per entry) are written as in_gram = gram x count."""
    import gguf

    from sealgguf.fsutil import atomic_output

    with atomic_output(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch="imatrix")
        w.add_type("imatrix")
        w.add_array(KEY_DATASETS, [dataset])
        w.add_uint32(KEY_CHUNK_COUNT, chunk_count)
        w.add_uint32(KEY_CHUNK_SIZE, chunk_size)
        for name in sorted(importance):
            n = float(counts[name])
            w.add_tensor(name + SUM_SUFFIX, (importance[name].astype(np.float32) * n).reshape(1, -1))
            w.add_tensor(name + COUNT_SUFFIX, np.array([[n]], dtype=np.float32))
            if grams and name in grams:
                w.add_tensor(name + GRAM_SUFFIX, (grams[name] * n).astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


WINDOW = 256  # tokens per essay window collect() reads
# Windows collect() reads by default: error feedback with SmolLM2's Gram matrices (576 columns) from 16 windows
# left a held-out output error 8% above what 64 gave (tools/bench_feedback.py)
WINDOWS = 64
AUTO_GRAM_BYTES = 4 << 30  # gram=None collects the Gram matrices when all of them (float32 in the file) fit in this


def collect_to(path: str | Path, model_path: str | Path, windows: int = WINDOWS, progress: bool = False,
               gram: bool | None = None, device: str = "cpu", dtype: str = "fp32", device_map: str | None = None,
               max_memory: dict | None = None) -> tuple[int, bool]:
    """collect() and write the result as a GGUF imatrix at `path`; returns the token count and whether the Gram
    matrices were written."""
    importance, tokens, grams = collect(model_path, windows, progress, gram, device, dtype, device_map, max_memory)
    write_imatrix(path, importance, {k: tokens for k in importance}, "sealgguf essay windows", WINDOW, windows, grams)
    return tokens, grams is not None


def collect(model_path: str | Path, windows: int = WINDOWS, progress: bool = False, gram: bool | None = False,
            device: str = "cpu", dtype: str = "fp32", device_map: str | None = None, max_memory: dict | None = None
            ) -> tuple[dict[str, np.ndarray], int, dict[str, np.ndarray] | None]:
    """attn_output's importance (mean square of each input column) over `windows` x WINDOW tokens of essay text, in
    transformers on the dequantized model: {"blk.N.attn_output.weight": [n_head * head_dim]}, the token count, and
    with `gram` the mean x x^T of the same activations ({name: [n, n]}; else None). gram=None: collected when
    they take at most AUTO_GRAM_BYTES in the file (n_layer x n^2 x 4 bytes: 38 MiB for SmolLM2, 72 MiB for
    Gemma 3 270M, 2 GiB for an 8B model with 4096 columns, 3.9 GiB for a 13B one, 20 GiB for a 70B one).
    The model is loaded as the tuner loads it (`device`, `dtype`, `device_map`, `max_memory`: seal passes its
    tuning run's, so a bf16 run never makes an fp32 copy); the sums are kept on the CPU in float64.
    The text is the tuner's anchor windows (the start of the corpus); the knowledge check reads the end."""
    from sealgguf.tune.data import anchor_windows
    from sealgguf.tune.model import load

    lm = load(Path(model_path), device, dtype=dtype, device_map=device_map, max_memory=max_memory)
    return measure(lm.model, anchor_windows(lm.encoder, windows, WINDOW), progress, gram, device)


def measure(model, windows_ids: list, progress: bool = False, gram: bool | None = False, device: str = "cpu"
            ) -> tuple[dict[str, np.ndarray], int, dict[str, np.ndarray] | None]:
    """collect()'s measurement on a loaded transformers model over the given token windows (1-D tensors), fed to
    `device` (the first device of a device map)."""
    import torch
    from tqdm import tqdm

    from sealgguf.tune.model import decoder_layers

    layers = decoder_layers(model)
    n_in = [layer.self_attn.o_proj.in_features for layer in layers]
    sums = [torch.zeros(n, dtype=torch.float64) for n in n_in]
    if gram is None:
        gram = sum(4 * n * n for n in n_in) <= AUTO_GRAM_BYTES
    grams = [torch.zeros(n, n, dtype=torch.float64) for n in n_in] if gram else None
    tokens = 0

    def hook(i):
        def pre(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to("cpu", torch.float64)
            sums[i].add_(x.square().sum(0))
            if grams is not None:
                grams[i].addmm_(x.T, x)
        return pre

    handles = [layer.self_attn.o_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for ids in tqdm(windows_ids, desc="imatrix", unit="window", disable=not progress):
                model(input_ids=ids[None].to(device), use_cache=False)
                tokens += ids.numel()
    finally:
        for h in handles:
            h.remove()
    name = "blk.{}.attn_output.weight".format
    importance = {name(i): (s / tokens).float().numpy() for i, s in enumerate(sums)}
    return importance, tokens, None if grams is None else {name(i): (g / tokens).numpy() for i, g in enumerate(grams)}
