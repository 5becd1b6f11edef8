"""Importance matrices: llama.cpp's two file forms, collecting one, and the fold's weighted requantization."""

import struct

import numpy as np
import pytest

from sealgguf import _core, scales
from sealgguf.errors import SealError
from sealgguf.fold import fold_file, open_gguf, read_layout
from sealgguf.gguf_file import ATTN_OUTPUT
from sealgguf.imatrix import read_grams, read_imatrix, write_imatrix


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


def _channel_scales(model, tmp_path, seed: int):
    """Random SEAL-C scales for `model` (they vary inside every block), saved as tmp_path/s.safetensors; returns the
    opened model, its layout, the scales and the generator that drew them."""
    src = open_gguf(model)
    layout = read_layout(src, model)
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.6, 1.4, (layout.n_layer, layout.n_head, layout.head_dim)).astype(np.float32)
    scales.save(tmp_path / "s.safetensors", values, {"task": "test"})
    return src, layout, values, rng


def test_weighted_fold_is_never_worse_and_better_where_it_counts(smollm2, tmp_path):
    """SEAL-C scales that vary inside every block force requantization. With an importance matrix that puts the
    weight on a few columns, the fold's blocks are at least as close to the scaled weights under that weighting
    (block by block), closer in total, and some come from ggml's weighted quantizer; everything else is
    identical to the plain fold."""
    src, layout, values, rng = _channel_scales(smollm2, tmp_path, 1)
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
    _channel_scales(smollm2, tmp_path, 2)
    write_imatrix(tmp_path / "i.gguf", {"blk.0.attn_output.weight": np.ones(100, np.float32)}, {"blk.0.attn_output.weight": 1},
                  "test", 256, 1)
    with pytest.raises(SealError, match="imatrix entry blk.0.attn_output.weight has 100 values, but the tensor has 576"):
        fold_file(smollm2, tmp_path / "s.safetensors", tmp_path / "o.gguf", imatrix=tmp_path / "i.gguf")
    assert not (tmp_path / "o.gguf").exists()


def test_collect_measures_every_attn_output(smollm2, tmp_path):
    from sealgguf.imatrix import collect

    importance, tokens, grams = collect(smollm2, windows=1)
    assert grams is None
    assert tokens == 256 and len(importance) == 30
    for v in importance.values():
        assert v.shape == (576,) and np.isfinite(v).all() and (v >= 0).all() and v.max() > 0


def test_collect_in_bf16_measures_what_fp32_does(smollm2):
    """seal collects in its tuning run's dtype (no fp32 copy of a bf16 run's model): the same importance, to
    bf16's precision."""
    from sealgguf.imatrix import collect

    fp32, _, _ = collect(smollm2, windows=1)
    bf16, tokens, _ = collect(smollm2, windows=1, dtype="bf16")
    assert tokens == 256 and bf16.keys() == fp32.keys()
    for name in fp32:
        rel = np.linalg.norm(bf16[name] - fp32[name]) / np.linalg.norm(fp32[name])
        assert 0 < rel < 0.05, (name, rel)


def test_collect_places_the_model_under_max_memory(smollm2, tmp_path):
    """seal passes its tuning run's --max-memory to the imatrix pass: a CPU cap below the model sends layers to
    disk, which needs an offload folder (the one-line refusal proves the cap reached accelerate); the CLI wants
    --device-map with it."""
    from sealgguf.cli import main
    from sealgguf.imatrix import collect

    with pytest.raises(SealError, match="give an offload folder"):
        collect(smollm2, windows=1, device_map="auto", max_memory={"cpu": "150MiB"})
    out = tmp_path / "i.gguf"
    assert main(["-q", "imatrix", str(smollm2), "-o", str(out), "--max-memory", "cpu=1GiB"]) == 2
    assert not out.exists()


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


def _activations(n: int, seed: int = 0):
    """A source of activations with correlated columns of unequal size, as attention outputs have:
    draw(rng, tokens) -> [tokens, n]."""
    rng = np.random.default_rng(seed)
    mix = (np.eye(n) + rng.normal(0, 1.5 / np.sqrt(n), (n, n))) * rng.uniform(0.2, 3.0, n)
    return lambda r, tokens: r.normal(0, 1, (tokens, n)) @ mix


def _gram(x: np.ndarray) -> np.ndarray:
    return x.T @ x / len(x)


def test_grams_read_back_beside_the_importance(tmp_path):
    g = _gram(_activations(64)(np.random.default_rng(4), 500))
    name = "blk.0.attn_output.weight"
    write_imatrix(tmp_path / "m.gguf", {name: np.diag(g).astype(np.float32)}, {name: 40}, "essays", 256, 1, {name: g})
    np.testing.assert_allclose(read_grams(tmp_path / "m.gguf")[name] / 40, g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(read_imatrix(tmp_path / "m.gguf")[name], np.diag(g), rtol=1e-5)
    write_imatrix(tmp_path / "n.gguf", {name: np.diag(g).astype(np.float32)}, {name: 40}, "essays", 256, 1)
    assert read_grams(tmp_path / "n.gguf") == {}
    (tmp_path / "m.dat").write_bytes(_legacy({name: np.diag(g)}))
    assert read_grams(tmp_path / "m.dat") == {}


@pytest.mark.parametrize("gram,match", [
    (np.ones((8, 8)), "must be F32 \\[64, 64\\]"),
    (np.triu(np.ones((64, 64))), "not a finite symmetric matrix"),
    (np.full((64, 64), np.inf), "not a finite symmetric matrix"),
])
def test_a_bad_gram_is_one_line(tmp_path, gram, match):
    name = "blk.3.attn_output.weight"
    write_imatrix(tmp_path / "bad.gguf", {name: np.ones(64, np.float32)}, {name: 2}, "essays", 256, 1, {name: gram})
    with pytest.raises(SealError, match=match) as e:
        read_grams(tmp_path / "bad.gguf")
    assert "bad.gguf" in str(e.value) and name + ".in_gram" in str(e.value) and "\n" not in str(e.value)


def _scaled_layer(type_name: str, draw_cols):
    """A random [48, 512] layer quantized by the engine as `type_name`, scaled by draw_cols(rng, n) and folded by
    the engine, with the Gram matrix of correlated activations and a held-out draw of them. Returns (type_id,
    target, engine bytes, the engine's stats, gram, output_error), output_error(raw) being the layer's relative
    output error on the held-out activations against the exactly scaled layer."""
    import gguf

    rng = np.random.default_rng(5)
    rows, n = 48, 512
    type_id = int(gguf.GGMLQuantizationType[type_name])
    raw = _core.quantize(rng.normal(0, 0.05, (rows, n)).astype(np.float32), type_id)
    cols = draw_cols(rng, n).astype(np.float32)
    target = _core.dequantize(raw.reshape(-1), type_id, n) * cols[None, :]
    engine, stats = _core.fold(raw.reshape(-1), type_id, n, cols, 1, None)
    draw = _activations(n)
    gram = _gram(draw(rng, 4000))
    held_out = draw(np.random.default_rng(6), 4000)

    def output_error(out: np.ndarray) -> float:
        e = _core.dequantize(out.reshape(-1), type_id, n) - target
        return float(np.square(held_out @ e.T).sum() / np.square(held_out @ target.T).sum())

    return type_id, target, engine, stats, gram, output_error


# Measured here (column by column, blocks in importance order): 0.56-0.67x the weighted fold's error for every
# type but Q3_K 0.77x and Q2_K 0.87x (2-bit codes leave the least room to carry an error)
@pytest.mark.parametrize("type_name,bound", [("Q4_0", 0.75), ("Q4_1", 0.7), ("Q5_0", 0.7), ("Q5_1", 0.7),
                                             ("Q8_0", 0.7), ("Q2_K", 0.95), ("Q3_K", 0.85), ("Q4_K", 0.75),
                                             ("Q5_K", 0.75), ("Q6_K", 0.75)])
def test_error_feedback_lowers_the_layer_output_error(type_name, bound):
    """With the activations' Gram matrix, carrying each block's error into the next blocks makes the layer's
    output on held-out activations (new draws from the same source) closer to the exactly scaled layer's than
    the importance weighting alone does; both start from the same engine fold."""
    from sealgguf.fold.rewrite import REQUANTIZED
    from sealgguf.fold.weighted import feedback_candidate, weighted_candidate

    type_id, target, engine, stats, gram, output_error = _scaled_layer(type_name,
                                                                       lambda rng, n: rng.uniform(0.6, 1.4, n))
    importance = np.diag(gram).astype(np.float32)
    weighted, _ = weighted_candidate(engine, target, type_id, importance)
    requantized = stats["block_kinds"] >= REQUANTIZED
    feedback, take = feedback_candidate(engine, target, type_id, importance, gram, requantized)
    assert feedback.shape == weighted.shape and take.any()
    assert np.isfinite(_core.dequantize(feedback.reshape(-1), type_id, target.shape[1])).all()
    assert output_error(feedback) < bound * output_error(weighted) < output_error(engine)


def test_error_feedback_keeps_the_engines_refit_blocks():
    """Per-head scales on a K-quant layout (heads of 64 in 256-value super-blocks): the engine keeps almost every
    block's levels with refit scales, 4x below a fresh quantization in output error (measured here). The feedback
    fold weighs its own candidate against the engine's block by block, so it keeps them and stays at the engine's
    error instead of falling back to a fresh quantization's."""
    from sealgguf.fold.rewrite import REFIT, REQUANTIZED
    from sealgguf.fold.weighted import feedback_candidate

    head_dim = 64
    type_id, target, engine, stats, gram, output_error = _scaled_layer(
        "Q4_K", lambda rng, n: np.repeat(rng.uniform(0.5, 1.5, n // head_dim), head_dim))
    fresh = _core.quantize(target.astype(np.float32), type_id)
    feedback, take = feedback_candidate(engine, target, type_id, np.diag(gram).astype(np.float32), gram,
                                        stats["block_kinds"] >= REQUANTIZED)
    assert (stats["block_kinds"] == REFIT).mean() > 0.9 and take.mean() < 0.2
    assert output_error(feedback) < 1.02 * output_error(engine) < 0.5 * output_error(fresh)


def test_gptq_factor_is_the_cholesky_factor_of_the_inverse():
    """U from one Cholesky factorization in reversed order and a triangular inverse by halves (600 > the 256 of
    the plain inverse, so the recursion runs) is the upper Cholesky factor of the inverse Gram matrix."""
    from sealgguf.fold.weighted import _gptq_factor

    x = _activations(600)(np.random.default_rng(11), 900)
    h = x.T @ x + 0.1 * np.eye(600)
    u = _gptq_factor(h)
    assert np.array_equal(u, np.triu(u)) and (np.diag(u) > 0).all()
    want = np.linalg.cholesky(np.linalg.inv(h)).T
    assert np.abs(u - want).max() < 1e-9 * np.abs(want).max()


@pytest.mark.parametrize("type_name", ["Q4_1", "Q4_K"])
def test_error_feedback_batches_do_not_change_the_result(type_name, monkeypatch):
    """GPTQ's lazy batches only regroup the same updates: batches of 64 columns with 8 at a time (several batches
    over the 512 columns, several groups inside a Q4_K super-block) give the blocks that one batch of all 512
    columns gives, where every column's error moves every later column at once."""
    from sealgguf.fold import weighted
    from sealgguf.fold.rewrite import REQUANTIZED

    type_id, target, engine, stats, gram, output_error = _scaled_layer(type_name,
                                                                       lambda rng, n: rng.uniform(0.6, 1.4, n))
    runs = {}
    n = target.shape[1]
    for columns, batch in ((n, n), (8, 64)):
        monkeypatch.setattr(weighted, "COLUMNS", columns)
        monkeypatch.setattr(weighted, "BATCH", batch)
        runs[batch] = weighted.feedback_candidate(engine, target, type_id, np.diag(gram).astype(np.float32), gram,
                                                  stats["block_kinds"] >= REQUANTIZED)[0]
    assert not np.array_equal(runs[n], engine)
    nbytes = _core.block_info(type_id)[1]
    same = (runs[n].reshape(-1, nbytes) == runs[64].reshape(-1, nbytes)).all(1)
    assert same.mean() > 0.999  # a float tie may round the other way in another summation order
    assert output_error(runs[64]) == pytest.approx(output_error(runs[n]), rel=1e-3)


def test_fold_with_grams_carries_the_error_and_says_so(smollm2, tmp_path):
    """An imatrix with Gram matrices folds with error feedback: seal.fold.error_feedback says so, the layer outputs
    on new activations from the same source move less than with the importance alone, and the rest of the
    file is untouched."""
    src, layout, values, rng = _channel_scales(smollm2, tmp_path, 8)
    n = layout.n_head * layout.head_dim
    draw = _activations(n, seed=9)
    grams = {f"blk.{i}.attn_output.weight": _gram(draw(rng, 2000)) for i in range(layout.n_layer)}
    importance = {k: np.diag(g).astype(np.float32) for k, g in grams.items()}
    write_imatrix(tmp_path / "d.gguf", importance, {k: 2000 for k in grams}, "test", 256, 8)
    write_imatrix(tmp_path / "g.gguf", importance, {k: 2000 for k in grams}, "test", 256, 8, grams)
    fold_file(smollm2, tmp_path / "s.safetensors", tmp_path / "d.out.gguf", imatrix=tmp_path / "d.gguf")
    full = fold_file(smollm2, tmp_path / "s.safetensors", tmp_path / "g.out.gguf", imatrix=tmp_path / "g.gguf")
    a, b = open_gguf(tmp_path / "d.out.gguf"), open_gguf(tmp_path / "g.out.gguf")
    assert b.get("seal.fold.error_feedback") is True and a.get("seal.fold.error_feedback") is False
    assert full.blocks("blocks_imatrix") > 0
    x = draw(np.random.default_rng(10), 2000)
    errs = [0.0, 0.0]
    for ta, tb, t0 in zip(a.tensors, b.tensors, src.tensors):
        if not ATTN_OUTPUT.match(ta.name):
            assert np.array_equal(a.tensor_data(ta), b.tensor_data(tb))
            continue
        target = _core.dequantize(src.tensor_data(t0), t0.type_id, n) * values[int(ta.name.split(".")[1])].reshape(-1)
        for i, (f, t) in enumerate(((a, ta), (b, tb))):
            errs[i] += float(np.square(x @ (_core.dequantize(f.tensor_data(t), t.type_id, n) - target).T).sum())
    assert errs[1] < 0.8 * errs[0]


def test_imatrix_command_writes_the_gram_matrices_unless_told_not_to(smollm2, tmp_path, capsys):
    from sealgguf.cli import main

    assert main(["imatrix", str(smollm2), "-o", str(tmp_path / "g.gguf"), "--windows", "1"]) == 0
    assert "importance and Gram matrices over 256 tokens" in capsys.readouterr().out
    grams, importance = read_grams(tmp_path / "g.gguf"), read_imatrix(tmp_path / "g.gguf")
    assert grams.keys() == importance.keys() and len(grams) == 30
    for name, g in grams.items():  # the diagonal of x x^T summed is in_sum2 = importance x count
        np.testing.assert_allclose(np.diag(g) / 256, importance[name], rtol=1e-4, atol=1e-7)
    assert main(["imatrix", str(smollm2), "-o", str(tmp_path / "d.gguf"), "--windows", "1", "--gram", "no"]) == 0
    assert read_grams(tmp_path / "d.gguf") == {} and read_imatrix(tmp_path / "d.gguf").keys() == importance.keys()
