"""llama.cpp importance matrices: reading both file forms, writing the GGUF form, and collecting one.

An importance matrix holds, for each weight tensor, one value per input column: the mean square of the
activations that column multiplies (llama-imatrix collects them over a text; `sealgguf imatrix` does the
same for attn_output in transformers). llama-quantize --imatrix weighs each value's rounding error by it.
Both of llama.cpp's file forms are read:

    GGUF     tensors "<weight>.in_sum2" [n_mat, n] and "<weight>.counts" [n_mat]; importance = in_sum2 / counts
             (1 where a count is 0); keys imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size
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
SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"
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


def _read_gguf(p: Path) -> dict[str, np.ndarray]:
    import gguf

    try:
        reader = gguf.GGUFReader(p)
    except Exception as e:  # gguf-py raises ValueError, struct.error, IndexError on damaged files
        raise SealError(f"{p}: not a readable GGUF imatrix ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
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
                  chunk_size: int, chunk_count: int) -> None:
    """Write a GGUF imatrix as llama-imatrix does: in_sum2 = importance x count (count: the tokens an entry saw),
    so llama-quantize and read_imatrix recover `importance`; chunk_count chunks of chunk_size tokens."""
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
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


WINDOW = 256  # tokens per essay window collect() reads


def collect_to(path: str | Path, model_path: str | Path, windows: int = 16, progress: bool = False) -> int:
    """collect() and write the result as a GGUF imatrix at `path`; returns the token count."""
    importance, tokens = collect(model_path, windows, progress)
    write_imatrix(path, importance, {k: tokens for k in importance}, "sealgguf essay windows", WINDOW, windows)
    return tokens


def collect(model_path: str | Path, windows: int = 16, progress: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """attn_output's importance (mean square of each input column) over `windows` x WINDOW tokens of essay text, in
    transformers on the dequantized model: {"blk.N.attn_output.weight": [n_head * head_dim]}, and the token count.
    The text is the tuner's anchor windows (the start of the corpus); the knowledge check reads the end."""
    import torch
    from tqdm import tqdm

    from sealgguf.tune.data import anchor_windows
    from sealgguf.tune.model import decoder_layers, load

    lm = load(Path(model_path), "cpu")
    layers = decoder_layers(lm.model)
    sums = [torch.zeros(layer.self_attn.o_proj.in_features, dtype=torch.float64) for layer in layers]
    tokens = 0

    def hook(i):
        def pre(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[i].add_(x.square().sum(0))
        return pre

    handles = [layer.self_attn.o_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            windows_ids = anchor_windows(lm.encoder, windows, WINDOW)
            for ids in tqdm(windows_ids, desc="imatrix", unit="window", disable=not progress):
                lm.model(input_ids=ids[None], use_cache=False)
                tokens += ids.numel()
    finally:
        for h in handles:
            h.remove()
    return {f"blk.{i}.attn_output.weight": (s / tokens).float().numpy() for i, s in enumerate(sums)}, tokens
