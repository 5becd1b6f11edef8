"""Factorized scales (`tune --exact-fold`): a vector per KV group folded into attn_v's rows times a scalar
per query head folded into attn_output. Nothing is requantized, so the sealed file is the tuned model."""

import numpy as np
import pytest

import ggml_ref
from sealgguf import _core, scales
from sealgguf.fold import fold_file, open_gguf, read_layout
from sealgguf.gguf_file import ATTN_OUTPUT, ATTN_V
from sealgguf.layout import AttentionLayout

# byte ranges of the float scale fields in each block (d, and m / dmin): the same table as test_fold_engine
SCALE_FIELDS = {2: [(0, 2)], 3: [(0, 4)], 6: [(0, 2)], 7: [(0, 4)], 8: [(0, 2)], 10: [(80, 84)],
                11: [(108, 110)], 12: [(0, 4)], 13: [(0, 4)], 14: [(208, 210)]}


@pytest.mark.parametrize("type_id", sorted(SCALE_FIELDS))
def test_row_scales_rewrite_only_scale_fields(type_id):
    _, bs, ts = ggml_ref.TYPES[type_id]
    x = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32)  # fp16 d stays normal
    raw = ggml_ref.quantize(x, type_id)
    rows = np.array([1.0, 0.5, 1.7, 1.0, 0.9, 2.5], np.float32)
    new, st = _core.fold(raw, type_id, 512, None, 0, rows)
    assert st["blocks_requantized"] == 0 and st["blocks_unchanged"] == 2 * 512 // bs
    a, b = raw.reshape(6, -1, ts), new.reshape(6, -1, ts)
    mask = np.ones(ts, bool)
    for lo, hi in SCALE_FIELDS[type_id]:
        mask[lo:hi] = False
    assert np.array_equal(a[..., mask], b[..., mask])                  # quantized integers untouched
    assert np.array_equal(a[rows == 1.0], b[rows == 1.0])               # rows at 1.0 byte-identical
    before, after = _core.dequantize(raw, type_id, 512), _core.dequantize(new, type_id, 512)
    want = before * rows[:, None]
    rel = np.sqrt(((after - want) ** 2).sum(1) / (want ** 2).sum(1))
    assert rel.max() < 1e-3, rel  # fp16 rounding of d (and m) only
    assert st["rel_rmse"] < 1e-3


def test_row_and_column_scales_multiply():
    x = (np.random.default_rng(1).standard_normal((4, 256)) * 0.05).astype(np.float32)
    raw = ggml_ref.quantize(x, 8)
    rows = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
    cols = np.repeat(np.array([1.0, 0.8, 1.2, 1.0, 0.7, 1.1, 1.3, 0.9], np.float32), 32)  # one scale per block
    new, st = _core.fold(raw, 8, 256, cols, 0, rows)
    assert st["blocks_requantized"] == 0
    want = _core.dequantize(raw, 8, 256) * rows[:, None] * cols[None, :]
    got = _core.dequantize(new, 8, 256)
    assert np.sqrt(((got - want) ** 2).sum() / (want ** 2).sum()) < 1e-3
    with pytest.raises(ValueError, match="row_scales must have 4"):
        _core.fold(raw, 8, 256, None, 0, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="row 2 is not finite"):
        _core.fold(raw, 8, 256, None, 0, np.array([1, 1, np.nan, 1], np.float32))


@pytest.mark.parametrize("n_head,head_dim,blocks,tie", [
    (9, 64, [32], 1),          # SmolLM2 Q4_1: a head is two whole blocks
    (4, 256, [256, 32], 1),    # Gemma 3: a head is one K-quant super-block
    (32, 128, [256], 2),       # Llama-3 8B Q4_K: two heads per super-block
    (28, 64, [256, 32], 4),    # Qwen2.5 Q4_K: four heads per super-block
    (6, 64, [256], 6),         # four does not divide six: one scalar for the whole row
    (8, 96, [32], 1),
])
def test_attn_output_tie(n_head, head_dim, blocks, tie):
    assert scales.attn_output_tie(n_head, head_dim, blocks) == tie


def _factors(layout: AttentionLayout, granularity: str, tie: int, seed=0):
    rng = np.random.default_rng(seed)
    L, H, Hkv, D = layout.n_layer, layout.n_head, layout.n_head_kv, layout.head_dim
    v = rng.uniform(0.6, 1.4, (L, Hkv, D if granularity == "channel" else 1)).astype(np.float32)
    o = np.repeat(rng.uniform(0.6, 1.4, (L, H // tie)), tie, axis=1).astype(np.float32)
    return {"attn_v": np.ascontiguousarray(np.broadcast_to(v, (L, Hkv, D))), "attn_output": o}


def test_scales_file_round_trip_and_validation(tmp_path):
    layout = AttentionLayout("llama", 2, 6, 2, 8, 0)
    f = _factors(layout, "channel", 1)
    values = scales.compose(f["attn_v"], f["attn_output"], "channel")
    assert values[1, 4, 3] == np.float32(f["attn_v"][1, 1, 3] * f["attn_output"][1, 4])  # head 4 is in KV group 1
    scales.save(tmp_path / "f.safetensors", values, {"task": "t"}, f)
    s = scales.load(tmp_path / "f.safetensors")
    assert s.form == "factorized" and s.granularity == "channel" and np.array_equal(s.values, values)
    s.check_layout(layout, "here")
    with pytest.raises(Exception, match="factor 'attn_v' has shape"):
        s.check_layout(AttentionLayout("llama", 2, 6, 3, 8, 0), "here")
    with pytest.raises(Exception, match="not the composition"):
        scales.save(tmp_path / "bad.safetensors", values * 1.01, {}, f)
    # head granularity: attn_v constant over head_dim, or the file is refused
    from safetensors.numpy import save_file

    fh = _factors(layout, "channel", 1, seed=1)
    save_file(fh, str(tmp_path / "h.safetensors"), metadata={"granularity": "head", "form": "factorized"})
    with pytest.raises(Exception, match="varies over head_dim"):
        scales.load(tmp_path / "h.safetensors")
    save_file({"attn_v": fh["attn_v"]}, str(tmp_path / "m.safetensors"),
              metadata={"granularity": "channel", "form": "factorized"})
    with pytest.raises(Exception, match="no tensor named 'attn_output'"):
        scales.load(tmp_path / "m.safetensors")
    save_file({"scales": values}, str(tmp_path / "old.safetensors"), metadata={"granularity": "channel"})
    assert scales.load(tmp_path / "old.safetensors").form == "columns"  # files written before the form existed


def test_seal_scales_factorized_form_matches_the_file():
    import torch

    from sealgguf.tune.model import SealScales

    layout = AttentionLayout("llama", 2, 8, 2, 4, 0)
    for granularity, tie in (("channel", 2), ("head", 1), ("channel", 4)):
        seal = SealScales(layout, granularity, "factorized", tie)
        with torch.no_grad():
            for p in seal.parameters():
                p.uniform_(0.5, 1.5)
        assert (seal.attn_output is None) == (tie >= 4)  # a scalar per KV group adds nothing to attn_v
        f = seal.factors()
        np.testing.assert_array_equal(seal.values(), scales.compose(f["attn_v"], f["attn_output"], granularity))
        cols = seal.column_scales(1).detach().numpy().reshape(8, 4)
        want = seal.values()[1]
        np.testing.assert_allclose(cols, want if want.ndim == 2 else np.repeat(want[:, None], 4, 1), rtol=1e-6)


@pytest.mark.parametrize("granularity", ["head", "channel"])
def test_factorized_fold_is_exact(bundled_gguf, granularity, tmp_path):
    path, src, layout = bundled_gguf
    f = _factors(layout, granularity, 1)
    scales.save(tmp_path / "s.safetensors", scales.compose(f["attn_v"], f["attn_output"], granularity), {}, f)
    res = fold_file(path, tmp_path / "s.safetensors", tmp_path / "out.gguf")
    assert res.blocks("blocks_requantized") == 0 and res.form == "factorized"
    out = open_gguf(tmp_path / "out.gguf")
    assert out.get("seal.form") == "factorized" and out.get("seal.fold.exact") is True
    changed = set()
    for a, b in zip(src.tensors, out.tensors):
        if ATTN_OUTPUT.match(a.name) or ATTN_V.match(a.name):
            before = _core.dequantize(src.tensor_data(a), a.type_id, a.shape[0])
        if ATTN_OUTPUT.match(a.name):
            layer = int(ATTN_OUTPUT.match(a.name).group(1))
            want = before * np.repeat(f["attn_output"][layer], layout.head_dim)[None, :]
        elif ATTN_V.match(a.name):
            layer = int(ATTN_V.match(a.name).group(1))
            want = before * f["attn_v"][layer].reshape(-1)[:, None]
        else:
            assert np.array_equal(src.tensor_data(a), out.tensor_data(b)), a.name
            continue
        changed.add(a.name)
        after = _core.dequantize(out.tensor_data(b), b.type_id, b.shape[0])
        rel = np.sqrt(((after - want) ** 2).sum() / (want ** 2).sum())
        assert rel < 1e-3, (a.name, rel)  # fp16 rounding of block scales only
    assert len(changed) == 2 * layout.n_layer


def _logprobs_llama(path, ids):
    from sealgguf.eval.backend import load_llama

    llm = load_llama(path, 0, n_ctx=len(ids), n_batch=len(ids), logits_all=True, n_threads=2)
    llm.eval(ids)
    lp = np.array(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    return lp - np.logaddexp.reduce(lp, axis=-1, keepdims=True)


def _kl(p_log, q_log):
    return float((np.exp(p_log) * (p_log - q_log)).sum(-1).mean())


def test_factorized_sealed_gguf_is_the_exact_scale_model(smollm2, hf_smollm2, tmp_path):
    """KL between the exact-scale model (transformers, hooks) and the sealed GGUF (llama.cpp) on essay text:
    factorized scales add nothing to the gap between the two engines that the unsealed model already has,
    while the same-size per-channel scales, which must be requantized, do."""
    import torch

    from sealgguf.eval.knowledge import knowledge_text
    from sealgguf.tune.model import SealScales

    lm, layout = hf_smollm2, hf_smollm2.layout
    ids = lm.encoder.encode(knowledge_text())[:256]
    rng = np.random.default_rng(7)
    f = _factors(layout, "channel", 1, seed=3)
    fact = scales.compose(f["attn_v"], f["attn_output"], "channel")
    cols = rng.uniform(0.6, 1.4, fact.shape).astype(np.float32)
    scales.save(tmp_path / "fact.safetensors", fact, {}, f)
    scales.save(tmp_path / "cols.safetensors", cols, {})
    kls = {}
    for name, values in (("base", None), ("fact", fact), ("cols", cols)):
        gguf = smollm2
        seal = SealScales(layout, "channel").attach(lm.model)
        if values is not None:
            gguf = tmp_path / f"{name}.gguf"
            fold_file(smollm2, tmp_path / f"{name}.safetensors", gguf)
            with torch.no_grad():
                seal.scales.copy_(torch.from_numpy(values))
        with torch.no_grad():
            hf = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0].double(), -1).numpy()
        seal.detach_hooks()
        kls[name] = _kl(hf, _logprobs_llama(gguf, ids))
    assert kls["fact"] < 1.5 * kls["base"] + 1e-3, kls
    assert kls["cols"] > 2 * kls["fact"], kls


@pytest.mark.parametrize("fused", [False, True])
def test_value_bias_and_fused_qkv_take_the_row_scales(tmp_path, fused):
    """attn_v.bias (qwen2) and the V part of a fused attn_qkv (phi3), weight and bias, are scaled with the
    rows of attn_v; Q and K rows are left as they were."""
    import gguf

    L, H, Hkv, D = 2, 4, 2, 32
    E, n_qkv = H * D, (H + 2 * Hkv) * D
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "phi3" if fused else "qwen2")
    for add, v in ((w.add_block_count, L), (w.add_context_length, 256), (w.add_embedding_length, E),
                   (w.add_feed_forward_length, 2 * E), (w.add_head_count, H), (w.add_head_count_kv, Hkv)):
        add(v)
    tensors = {}
    for i in range(L):
        tensors[f"blk.{i}.attn_output.weight"] = gguf.quants.quantize(rng.normal(0, 1, (E, E)).astype(np.float32),
                                                                      gguf.GGMLQuantizationType.Q8_0)
        if fused:
            tensors[f"blk.{i}.attn_qkv.weight"] = rng.normal(0, 1, (n_qkv, E)).astype(np.float16)
            tensors[f"blk.{i}.attn_qkv.bias"] = rng.normal(0, 1, n_qkv).astype(np.float32)
        else:
            tensors[f"blk.{i}.attn_v.weight"] = gguf.quants.quantize(rng.normal(0, 1, (Hkv * D, E)).astype(np.float32),
                                                                     gguf.GGMLQuantizationType.Q8_0)
            tensors[f"blk.{i}.attn_v.bias"] = rng.normal(0, 1, Hkv * D).astype(np.float32)
    for name, data in tensors.items():
        w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0 if data.dtype == np.uint8 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    f = _factors(AttentionLayout("x", L, H, Hkv, D, 0), "channel", 1)
    scales.save(tmp_path / "s.safetensors", scales.compose(f["attn_v"], f["attn_output"], "channel"), {}, f)
    res = fold_file(tmp_path / "m.gguf", tmp_path / "s.safetensors", tmp_path / "out.gguf")
    assert res.blocks("blocks_requantized") == 0
    src, out = open_gguf(tmp_path / "m.gguf"), open_gguf(tmp_path / "out.gguf")
    skip = (H + Hkv) * D if fused else 0
    for a, b in zip(src.tensors, out.tensors):
        if "attn_output" in a.name:
            continue
        layer = int(a.name.split(".")[1])
        row = np.concatenate([np.ones(skip, np.float32), f["attn_v"][layer].reshape(-1)])
        before = _core.dequantize(src.tensor_data(a), a.type_id, a.shape[0])
        after = _core.dequantize(out.tensor_data(b), b.type_id, b.shape[0])
        want = before * (row[None, :] if a.name.endswith("bias") else row[:, None])
        if a.name.endswith("bias"):  # F32: exact
            assert np.array_equal(after, want.astype(np.float32)), a.name
        else:
            np.testing.assert_allclose(after, want, rtol=1e-3, atol=1e-6, err_msg=a.name)
        if skip:  # Q and K untouched
            q_k = (slice(None), slice(None, skip)) if a.name.endswith("bias") else (slice(None, skip),)
            assert np.array_equal(after[q_k], before[q_k]), a.name


def test_fold_measures_kl_against_the_exact_model(smollm2, tmp_path):
    """`fold --kl-windows`: KL(exact || sealed) and llama.cpp's floor in seal.* metadata. Factorized scales sit at
    the floor; per-channel scales, requantized, sit well above it."""
    from sealgguf.cli import main
    from sealgguf.fold.reference import write_exact

    layout = read_layout(open_gguf(smollm2), smollm2)
    f = _factors(layout, "channel", 1, seed=4)
    scales.save(tmp_path / "fact.safetensors", scales.compose(f["attn_v"], f["attn_output"], "channel"), {}, f)
    scales.save(tmp_path / "cols.safetensors",
                np.random.default_rng(4).uniform(0.6, 1.4, (30, 9, 64)).astype(np.float32), {})
    kl = {}
    for name in ("fact", "cols"):
        assert main(["-q", "fold", str(smollm2), str(tmp_path / f"{name}.safetensors"), "-o",
                     str(tmp_path / f"{name}.gguf"), "--kl-windows", "1"]) == 0
        out = open_gguf(tmp_path / f"{name}.gguf")
        kl[name] = (out.get("seal.fold.kl_exact"), out.get("seal.fold.kl_floor"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cols.gguf", "cols.safetensors", "fact.gguf",
                                                           "fact.safetensors"]  # temporary models removed
    assert 0 < kl["fact"][1] and kl["fact"][0] < 2 * kl["fact"][1], kl
    assert kl["cols"][0] > 3 * kl["cols"][1], kl
    # the exact model: F32 tensors equal to the original values times the scales
    names = write_exact(smollm2, tmp_path / "fact.safetensors", tmp_path / "exact.gguf")
    src, ref = open_gguf(smollm2), open_gguf(tmp_path / "exact.gguf")
    assert len(names) == 60 and [t.name for t in ref.tensors] == [t.name for t in src.tensors]
    t, r = src.tensors[[t.name for t in src.tensors].index("blk.3.attn_v.weight")], \
        ref.tensors[[t.name for t in ref.tensors].index("blk.3.attn_v.weight")]
    want = _core.dequantize(src.tensor_data(t), t.type_id, t.shape[0]) * f["attn_v"][3].reshape(-1)[:, None]
    assert r.type_id == 0 and np.array_equal(np.frombuffer(ref.tensor_data(r), np.float32).reshape(want.shape), want)
