"""`sealgguf fold` on the two bundled models: folded tensors are right, everything else is kept."""

import numpy as np
import pytest

from sealgguf import _core, scales
from sealgguf.fold import fold_file, open_gguf, read_layout
from sealgguf.gguf_file import ATTN_OUTPUT


def _random_scales(path, layout, granularity, seed=0):
    rng = np.random.default_rng(seed)
    shape = (layout.n_layer, layout.n_head) + ((layout.head_dim,) if granularity == "channel" else ())
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)


@pytest.mark.parametrize("granularity", ["head", "channel"])
def test_fold_random_scales(bundled_gguf, granularity, tmp_path):
    path, src, layout = bundled_gguf
    values = _random_scales(path, layout, granularity)
    scales.save(tmp_path / "s.safetensors", values, {"task": "test"})
    res = fold_file(path, tmp_path / "s.safetensors", tmp_path / "out.gguf")
    out = open_gguf(tmp_path / "out.gguf")
    s_obj = scales.load(tmp_path / "s.safetensors")

    assert [t.name for t in out.tensors] == [t.name for t in src.tensors]
    for a, b in zip(src.tensors, out.tensors):
        assert (a.shape, a.type_id, a.offset) == (b.shape, b.type_id, b.offset)
        if not ATTN_OUTPUT.match(a.name):
            assert np.array_equal(src.tensor_data(a), out.tensor_data(b)), a.name  # byte-identical
            continue
        layer = int(ATTN_OUTPUT.match(a.name).group(1))
        col = s_obj.column_scales(layer, layout.head_dim)
        before = _core.dequantize(src.tensor_data(a), a.type_id, a.shape[0])
        after = _core.dequantize(out.tensor_data(b), b.type_id, b.shape[0])
        target = before * col
        rel = np.sqrt(((after - target) ** 2).sum() / (target ** 2).sum())
        if granularity == "head":  # exact path: fp16 rounding of block scales only
            assert res.tensors[a.name]["blocks_requantized"] == 0
            assert rel < 1e-3, (a.name, rel)
        else:  # requantized: the error of quantizing the scaled weights, as ggml would
            import ggml_ref

            ref = ggml_ref.dequantize(ggml_ref.quantize(target, a.type_id).reshape(-1), a.type_id, target.size)
            ggml_err = np.sqrt(((ref.reshape(target.shape) - target) ** 2).sum() / (target ** 2).sum())
            assert rel <= ggml_err * (1 + 1e-5), (a.name, rel, ggml_err)

    # every metadata key of the input, with the same bytes, plus seal.* keys
    for name, f in src.fields.items():
        g = out.fields[name]
        assert bytes(src.raw(f.start, f.end)) == bytes(out.raw(g.start, g.end)), name
    added = set(out.fields) - set(src.fields)
    assert {"seal.granularity", "seal.version", "seal.scales_sha256", "seal.source_sha256"} <= added
    assert out.value("seal.granularity") == granularity
    import hashlib

    assert out.value("seal.source_sha256") == hashlib.sha256(path.read_bytes()).hexdigest()  # patched in at the end


def test_read_back_refuses_a_tensor_written_wrong(smollm2, tmp_path, monkeypatch):
    # the written file is read back before the rename: a folded tensor whose bytes differ from the checked ones
    # (here one flipped byte on the way out) leaves no output and no temporary file
    from sealgguf.errors import SealError
    from sealgguf.fold import rewrite

    write = rewrite._pwrite_all

    def corrupt(fd, data, at):
        data = data.copy()
        data[5] ^= 0xFF
        write(fd, data, at)

    layout = read_layout(open_gguf(smollm2), smollm2)
    scales.save(tmp_path / "s.safetensors", _random_scales(smollm2, layout, "head"), {})
    monkeypatch.setattr(rewrite, "_pwrite_all", corrupt)
    with pytest.raises(SealError, match="attn_output.weight was not written as folded"):
        fold_file(smollm2, tmp_path / "s.safetensors", tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_metadata_kept_per_gguf_py(smollm2, tmp_path):
    """The independent check: gguf-py's own reader sees the same keys and values."""
    import gguf

    src = open_gguf(smollm2)
    layout = read_layout(src, smollm2)
    scales.save(tmp_path / "s.safetensors", _random_scales(smollm2, layout, "head"), {})
    fold_file(smollm2, tmp_path / "s.safetensors", tmp_path / "out.gguf")
    a, b = gguf.GGUFReader(smollm2), gguf.GGUFReader(tmp_path / "out.gguf")
    for name, f in a.fields.items():
        if name.startswith("GGUF."):
            continue
        assert b.fields[name].contents() == f.contents(), name
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]


def test_folded_files_load_and_generate(bundled_gguf, tmp_path):
    """The sealed file loads and generates in llama.cpp; one head at 0.9 moves the logits a little."""
    from llama_cpp import Llama

    path, src, layout = bundled_gguf
    values = np.ones((layout.n_layer, layout.n_head), np.float32)
    values[1, 0] = 0.9
    scales.save(tmp_path / "s.safetensors", values, {})
    fold_file(path, tmp_path / "s.safetensors", tmp_path / "out.gguf")
    logits = []
    for f in (path, tmp_path / "out.gguf"):
        llm = Llama(model_path=str(f), n_ctx=128, logits_all=True, verbose=False)
        ids = llm.tokenize(b"The capital of France is", add_bos=True)
        llm.eval(ids)
        logits.append(np.array(llm.scores[len(ids) - 1]))
        text = llm.create_completion("The capital of France is", max_tokens=6, temperature=0)["choices"][0]["text"]
        assert text.strip()
        llm.close()
    assert not np.array_equal(logits[0], logits[1])
    assert np.corrcoef(logits[0], logits[1])[0, 1] > 0.99


def test_zeroed_head_matches_transformers(smollm2, hf_smollm2, tmp_path):
    """Zero head 4 of layer 3 in the GGUF; transformers with that head's o_proj columns zeroed must
    predict the same next token as llama.cpp, and differently from the unmodified model's logits."""
    import torch
    from llama_cpp import Llama

    lm = hf_smollm2
    L, H, d = lm.layout.n_layer, lm.layout.n_head, lm.layout.head_dim
    values = np.ones((L, H), np.float32)
    values[3, 4] = 0.0
    values[10, 1] = 0.0
    scales.save(tmp_path / "z.safetensors", values, {})
    fold_file(smollm2, tmp_path / "z.safetensors", tmp_path / "z.gguf")

    prompt = "Paris is the capital of France. Berlin is the capital of"
    llm = Llama(model_path=str(tmp_path / "z.gguf"), n_ctx=128, logits_all=True, verbose=False)
    ids = llm.tokenize(prompt.encode(), add_bos=lm.encoder.bos_id is not None)
    llm.eval(ids)
    llama_logits = np.array(llm.scores[len(ids) - 1])

    o_proj = [lm.model.model.layers[i].self_attn.o_proj for i in (3, 10)]
    saved = [p.weight.detach().clone() for p in o_proj]
    try:
        with torch.no_grad():
            o_proj[0].weight[:, 4 * d:5 * d] = 0
            o_proj[1].weight[:, 1 * d:2 * d] = 0
            hf_logits = lm.model(torch.tensor([ids])).logits[0, -1].numpy()
    finally:
        with torch.no_grad():
            for p, w in zip(o_proj, saved):
                p.weight.copy_(w)
    assert int(np.argmax(hf_logits)) == int(np.argmax(llama_logits))
    top = np.argsort(-hf_logits)[:5]
    assert np.corrcoef(hf_logits[top], llama_logits[top])[0, 1] > 0.9


@pytest.mark.parametrize("kind", ["linear", "yarn", "ntk"])
def test_rope_scaling_from_tuning_goes_into_metadata(smollm2, tmp_path, kind):
    import json

    from llama_cpp import Llama

    spec = {"type": kind, "factor": 2.0, "original_context_length": 8192, "head_dim": 64}
    scales.save(tmp_path / "s.safetensors", np.ones((30, 9), np.float32), {"rope_scaling": json.dumps(spec)})
    fold_file(smollm2, tmp_path / "s.safetensors", tmp_path / "r.gguf")
    f = open_gguf(tmp_path / "r.gguf")
    assert f.value("llama.context_length") == 16384
    if kind == "ntk":
        assert f.value("llama.rope.freq_base") == pytest.approx(100000.0 * 2.0 ** (64 / 62), rel=1e-5)
    else:
        assert f.value("llama.rope.scaling.type") == kind
        assert f.value("llama.rope.scaling.factor") == 2.0
        assert f.value("llama.rope.scaling.original_context_length") == 8192
    from sealgguf.eval.runner import rope_to_apply
    from sealgguf.rope import RopeScaling

    # eval with the same --rope-scaling must not apply it a second time on top of the file's metadata
    assert not rope_to_apply(f, RopeScaling.from_cli(kind, 2.0)).active
    assert rope_to_apply(f, RopeScaling.from_cli(kind, 4.0)).factor == 4.0
    llm = Llama(model_path=str(tmp_path / "r.gguf"), n_ctx=64, verbose=False)
    assert llm.create_completion("Hi", max_tokens=4, temperature=0)["choices"][0]["text"].strip()
