"""Importance matrices: llama.cpp's two file forms, collecting one, and the fold's weighted requantization."""

import struct

import numpy as np
import pytest

from sealgguf import _core, scales
from sealgguf.errors import SealError
from sealgguf.fold import fold_file, open_gguf, read_layout
from sealgguf.gguf_file import ATTN_OUTPUT
from sealgguf.imatrix import read_imatrix, write_imatrix


def _legacy(entries: dict[str, np.ndarray], trailer: bool = True) -> bytes:
    out = struct.pack("<i", len(entries))
    for name, v in entries.items():
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 7, v.size) + v.astype("<f4").tobytes()
    if trailer:
        out += struct.pack("<ii", 7, 5) + b"wiki2"
    return out


def test_gguf_and_legacy_forms_read_back(tmp_path):
    rng = np.random.default_rng(0)
    values = {"blk.0.attn_output.weight": rng.uniform(0, 2, 64).astype(np.float32),
              "blk.1.attn_output.weight": rng.uniform(0, 2, 64).astype(np.float32)}
    write_imatrix(tmp_path / "m.gguf", values, {k: 40 for k in values}, "essays", 256, 1)
    got = read_imatrix(tmp_path / "m.gguf")
    assert got.keys() == values.keys()
    for k in values:
        np.testing.assert_allclose(got[k], values[k], rtol=1e-6)
    reader = open_gguf(tmp_path / "m.gguf")
    assert reader.get("imatrix.chunk_size") == 256 and reader.get("general.type") == "imatrix"

    (tmp_path / "m.dat").write_bytes(_legacy(values))
    legacy = read_imatrix(tmp_path / "m.dat")
    assert all(np.array_equal(legacy[k], values[k]) for k in values)
    (tmp_path / "n.dat").write_bytes(_legacy(values, trailer=False))
    assert read_imatrix(tmp_path / "n.dat").keys() == values.keys()


@pytest.mark.parametrize("data,match", [
    (b"", "ends inside entry count"),
    (struct.pack("<i", 0), "entry count is 0"),
    (struct.pack("<ii", 1, 5) + b"blk.0", "ends inside entry 'blk.0' call count"),
    (struct.pack("<ii", 1, 1) + b"x" + struct.pack("<ii", 1, 1 << 30), "value count is 1073741824"),
    (struct.pack("<ii", 1, 1) + b"x" + struct.pack("<ii", 1, 4) + b"\0" * 8, "ends inside entry 'x' values"),
    (_legacy({"x": np.array([1.0, -1.0])}), "negative or not finite"),
    (_legacy({"x": np.array([1.0, np.nan])}), "negative or not finite"),
])
def test_a_broken_legacy_imatrix_is_one_line(tmp_path, data, match):
    (tmp_path / "bad.dat").write_bytes(data)
    with pytest.raises(SealError, match=match) as e:
        read_imatrix(tmp_path / "bad.dat")
    assert "bad.dat" in str(e.value) and "\n" not in str(e.value)


def test_a_gguf_without_imatrix_keys_is_refused(smollm2):
    with pytest.raises(SealError, match="imatrix.datasets is missing"):
        read_imatrix(smollm2)


def test_weighted_fold_is_never_worse_and_better_where_it_counts(smollm2, tmp_path):
    """SEAL-C scales that vary inside every block force requantization. With an importance matrix that puts the
    weight on a few columns, the fold's blocks are at least as close to the scaled weights under that weighting
    (block by block), closer in total, and some come from ggml's weighted quantizer; everything else is
    identical to the plain fold."""
    src = open_gguf(smollm2)
    layout = read_layout(src, smollm2)
    rng = np.random.default_rng(1)
    values = rng.uniform(0.6, 1.4, (layout.n_layer, layout.n_head, layout.head_dim)).astype(np.float32)
    scales.save(tmp_path / "s.safetensors", values, {"task": "test"})
    n = layout.n_head * layout.head_dim
    importance = {f"blk.{i}.attn_output.weight": np.where(rng.random(n) < 0.1, 50.0, 0.1).astype(np.float32)
                  for i in range(layout.n_layer)}
    write_imatrix(tmp_path / "i.gguf", importance, {k: 10 for k in importance}, "test", 256, 1)
    plain = fold_file(smollm2, tmp_path / "s.safetensors", tmp_path / "plain.gguf")
    weighted = fold_file(smollm2, tmp_path / "s.safetensors", tmp_path / "w.gguf", imatrix=tmp_path / "i.gguf")
    assert weighted.blocks("blocks_imatrix") > 0 and plain.blocks("blocks_imatrix") == 0
    a, b = open_gguf(tmp_path / "plain.gguf"), open_gguf(tmp_path / "w.gguf")
    assert b.get("seal.fold.imatrix") == "i.gguf" and b.get("seal.fold.blocks_imatrix") == weighted.blocks("blocks_imatrix")
    # refit blocks the weighted quantizer replaced are no longer counted as refit
    assert weighted.blocks("blocks_refit") + weighted.blocks("blocks_imatrix") <= weighted.blocks("blocks_requantized")
    assert weighted.blocks("blocks_refit") <= plain.blocks("blocks_refit") == a.get("seal.fold.blocks_refit")
    for ta, tb, t0 in zip(a.tensors, b.tensors, src.tensors):
        if not ATTN_OUTPUT.match(ta.name):
            assert np.array_equal(a.tensor_data(ta), b.tensor_data(tb))
            continue
        layer = int(ta.name.split(".")[1])
        w = importance[ta.name]
        target = _core.dequantize(src.tensor_data(t0), t0.type_id, n) * values[layer].reshape(-1)[None, :]
        errs = []
        for f, t in ((a, ta), (b, tb)):
            got = _core.dequantize(f.tensor_data(t), t.type_id, n)
            errs.append((np.square(got - target) * w).reshape(got.shape[0], -1, 32).sum(-1))
        assert (errs[1] <= errs[0] + 1e-12).all(), ta.name
        assert errs[1].sum() < 0.95 * errs[0].sum(), ta.name


def test_an_imatrix_of_another_shape_is_refused(smollm2, tmp_path):
    src = open_gguf(smollm2)
    layout = read_layout(src, smollm2)
    values = np.random.default_rng(2).uniform(0.6, 1.4, (layout.n_layer, layout.n_head, layout.head_dim))
    scales.save(tmp_path / "s.safetensors", values.astype(np.float32), {"task": "test"})
    write_imatrix(tmp_path / "i.gguf", {"blk.0.attn_output.weight": np.ones(100, np.float32)}, {"blk.0.attn_output.weight": 1},
                  "test", 256, 1)
    with pytest.raises(SealError, match="imatrix entry blk.0.attn_output.weight has 100 values, but the tensor has 576"):
        fold_file(smollm2, tmp_path / "s.safetensors", tmp_path / "o.gguf", imatrix=tmp_path / "i.gguf")
    assert not (tmp_path / "o.gguf").exists()


def test_collect_measures_every_attn_output(smollm2, tmp_path):
    from sealgguf.imatrix import collect

    importance, tokens = collect(smollm2, windows=1)
    assert tokens == 256 and len(importance) == 30
    for v in importance.values():
        assert v.shape == (576,) and np.isfinite(v).all() and (v >= 0).all() and v.max() > 0


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_requantizes_predicts_the_engine(model, request, tmp_path):
    """seal collects an imatrix only when requantizes() says the fold will requantize: it must agree with the
    engine's own block count for per-channel scales, per-head scales, and per-head scales tied over 256 values."""
    from sealgguf.fold import requantizes

    path = request.getfixturevalue(model)
    layout = read_layout(open_gguf(path), path)
    rng = np.random.default_rng(3)
    L, H, D = layout.n_layer, layout.n_head, layout.head_dim
    per_head = rng.uniform(0.6, 1.4, (L, H))
    tied = np.repeat(per_head[:, :: max(1, 256 // D)], max(1, 256 // D), axis=1)[:, :H]  # one scale per 256 columns
    for name, values in (("channel", rng.uniform(0.6, 1.4, (L, H, D))), ("head", per_head), ("tied", tied)):
        s = tmp_path / f"{name}.safetensors"
        scales.save(s, values.astype(np.float32), {"task": "test"})
        folded = fold_file(path, s, tmp_path / f"{name}.gguf")
        assert requantizes(path, s) == (folded.blocks("blocks_requantized") > 0), (model, name)
