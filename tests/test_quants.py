"""The C++ block formats against ggml itself (llama-cpp-python's libggml-base, through ctypes)."""

import numpy as np
import pytest

import ggml_ref
from sealgguf import _core
from sealgguf.gguf_file import open_gguf


def _data(rows=16, cols=1024, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(1e-3, 0.2, (rows, 1)).astype(np.float32)
    x[1, :256] = 0.0                     # an all-zero block
    x[2, :256] = 0.5                     # a constant block
    x[3, 5] = 40.0                       # an outlier
    x[4] = np.abs(x[4])                  # one-signed rows (min > 0 paths)
    return x


@pytest.mark.parametrize("type_id", sorted(ggml_ref.TYPES))
def test_dequantize_bit_identical_to_ggml(type_id):
    name, bs, _ = ggml_ref.TYPES[type_id]
    x = _data()
    raw = ggml_ref.quantize(x, type_id)
    ours = _core.dequantize(raw, type_id, x.shape[1])
    theirs = ggml_ref.dequantize(raw.reshape(-1), type_id, x.size).reshape(x.shape)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), name


@pytest.mark.parametrize("type_id", sorted(ggml_ref.TYPES))
def test_quantize_bytes_identical_to_ggml(type_id):
    """The engine's quantizers follow ggml's reference algorithms operation for operation (the K-quant searches
    run several sub-blocks in vector lanes, each through the scalar sequence): the same bytes as
    ggml_quantize_chunk (no imatrix), on data with zero, constant, one-signed and outlier blocks, heavy tails
    and tiny values."""
    name = ggml_ref.TYPES[type_id][0]
    rng = np.random.default_rng(7)
    heavy = (rng.standard_t(1.5, (16, 1024)) * 0.02).astype(np.float32)  # heavy tails: outliers in most blocks
    tiny = (rng.standard_normal((16, 1024)) * 1e-6).astype(np.float32)
    for i, x in enumerate([_data(seed=seed) for seed in range(3)] + [heavy, tiny]):
        ours, theirs = _core.quantize(x, type_id).reshape(-1), ggml_ref.quantize(x, type_id).reshape(-1)
        assert np.array_equal(ours, theirs), (name, i, int((ours != theirs).sum()))


@pytest.mark.parametrize("type_id", sorted(ggml_ref.TYPES))
def test_quantize_error_no_worse_than_ggml(type_id):
    name = ggml_ref.TYPES[type_id][0]
    for seed in range(3):
        x = _data(seed=seed)
        ours = _core.dequantize(_core.quantize(x, type_id), type_id, x.shape[1])
        theirs = ggml_ref.dequantize(ggml_ref.quantize(x, type_id).reshape(-1), type_id, x.size).reshape(x.shape)
        err_ours = float(((ours - x) ** 2).sum())
        err_ggml = float(((theirs - x) ** 2).sum())
        assert err_ours <= err_ggml * (1 + 1e-6) + 1e-30, (name, seed, err_ours, err_ggml)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_dequantize_real_tensors_bit_identical(model, request):
    """Every tensor type present in the bundled models, on their real blocks."""
    path = request.getfixturevalue(model)
    f = open_gguf(path)
    seen = set()
    for t in f.tensors:
        if t.type_id in seen or t.type_id not in ggml_ref.TYPES:
            continue
        seen.add(t.type_id)
        rows = min(8, int(np.prod(t.shape[1:])))
        bs, ts = ggml_ref.TYPES[t.type_id][1:]
        raw = f.tensor_data(t)[: rows * t.shape[0] // bs * ts]
        ours = _core.dequantize(raw, t.type_id, t.shape[0])
        theirs = ggml_ref.dequantize(np.array(raw), t.type_id, rows * t.shape[0]).reshape(ours.shape)
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), (t.name, f.type_name(t))
    assert len(seen) >= 3  # Q4_1/Q8_0/F32 in SmolLM2; Q4_K/Q5_0/Q6_K/Q8_0/F32 in Gemma 3


def test_unsupported_type_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported ggml type"):
        _core.dequantize(np.zeros(64, np.uint8), 16, 256)  # IQ2_XXS
    with pytest.raises(ValueError, match="not a multiple"):
        _core.quantize(np.zeros((1, 40), np.float32), 2)


@pytest.mark.parametrize("type_id", sorted(t for t in ggml_ref.TYPES if ggml_ref.TYPES[t][1] > 1))
def test_codes_round_trip_through_their_grid(type_id):
    """A block's codes, read off its values and the grid of its scale fields (value = a * code + b), pack back
    into the same bytes; and every code in range lands on that grid."""
    from sealgguf.fold.weighted import code_grid

    name = ggml_ref.TYPES[type_id][0]
    x = _data()
    n = x.shape[1]
    raw = ggml_ref.quantize(x, type_id)
    values = _core.dequantize(raw, type_id, n)
    a, b = code_grid(raw, type_id, n)
    lo, hi = _core.code_range(type_id)
    steps = a != 0  # a zero step (an all-zero block) gives b for every code
    codes = np.where(steps, np.rint((values - b) / np.where(steps, a, 1)), 0).clip(lo, hi).astype(np.int32)
    again = _core.pack_codes(raw, type_id, n, codes)
    assert np.array_equal(_core.dequantize(again, type_id, n), values), name  # (an all-zero block may flip -0.0)
    full = np.logical_and.reduce(steps.reshape(x.shape[0], -1, ggml_ref.TYPES[type_id][1]), axis=2)  # [rows, blocks]
    ts = ggml_ref.TYPES[type_id][2]
    assert np.array_equal(again.reshape(full.shape + (ts,))[full], raw.reshape(full.shape + (ts,))[full]), name
    rng = np.random.default_rng(1)
    other = rng.integers(lo, hi + 1, codes.shape, dtype=np.int32)
    got = _core.dequantize(_core.pack_codes(raw, type_id, n, other), type_id, n)
    assert np.allclose(got, a * other + b, rtol=1e-5, atol=1e-6 * float(np.abs(values).max())), name
    with pytest.raises(ValueError, match="outside"):
        _core.pack_codes(raw, type_id, n, np.full(codes.shape, hi + 1, dtype=np.int32))
