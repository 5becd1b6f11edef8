"""The fast GGUF loader gives transformers exactly what its own GGUF path gives it."""

import numpy as np
import pytest
import torch


def test_fast_load_is_transformers_load(smollm2, hf_smollm2):
    from sealgguf.tune.model import load

    slow = load(smollm2, "cpu", fast=False)
    fast_sd, slow_sd = hf_smollm2.model.state_dict(), slow.model.state_dict()
    assert fast_sd.keys() == slow_sd.keys()
    for name, t in slow_sd.items():
        assert torch.equal(fast_sd[name], t), name
    assert hf_smollm2.model.config.to_dict() == slow.model.config.to_dict()
    text = "The pass key is 71432. Remember it.\nline right-tiger: REGISTER_CONTENT is <4021>"
    assert hf_smollm2.encoder.encode(text) == slow.encoder.encode(text)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_engine_dequantize_matches_gguf_py(model, request):
    """Every quantized tensor of the bundled models: the C++ engine's dequantization, as the loader calls it,
    is bit-identical to gguf-py's (which is what transformers would have used)."""
    import gguf

    from sealgguf.tune.gguf_loader import fast_gguf

    path = request.getfixturevalue(model)
    reader = gguf.GGUFReader(path)
    original = gguf.dequantize
    seen = set()
    with fast_gguf():
        for t in reader.tensors:
            if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) \
                    or t.tensor_type in seen:
                continue
            seen.add(t.tensor_type)
            data = t.data[:64]  # a few rows of each type
            np.testing.assert_array_equal(gguf.dequantize(data, t.tensor_type), original(data, t.tensor_type))
    assert gguf.dequantize is original  # the patch is undone on exit
    assert seen, "no quantized tensor"


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_cached_tokenizer_is_the_converted_one(model, request, tmp_path, monkeypatch):
    """The first load converts the GGUF vocabulary and caches it; the second reads the cache and tokenizes the
    same (special tokens, non-Latin text and the chat template included); a damaged entry is converted again."""
    from transformers import AutoTokenizer

    from sealgguf.tune import gguf_loader

    path = request.getfixturevalue(model)
    monkeypatch.setenv("SEALGGUF_CACHE", str(tmp_path))
    converted = gguf_loader.load_tokenizer(path)
    entry = tmp_path / "tokenizers" / gguf_loader.tokenizer_key(path)
    assert entry.is_dir() and list(tmp_path.glob("tokenizers/.*")) == []  # no temporary folder left behind
    conversions = []
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: conversions.append(k) or real(*a, **k))
    cached = gguf_loader.load_tokenizer(path)
    assert [k for k in conversions if "gguf_file" in k] == []  # read from the cache, not converted
    text = ("The pass key is 71432. Remember it. héllo wörld 日本語 🙂\n\n" + converted.bos_token
            + " <|im_start|> <start_of_turn>user\n")
    assert cached(text, add_special_tokens=False)["input_ids"] == converted(text, add_special_tokens=False)["input_ids"]
    assert (cached.bos_token_id, cached.eos_token_id, cached.chat_template) == \
        (converted.bos_token_id, converted.eos_token_id, converted.chat_template)

    (entry / "tokenizer.json").write_text("{ damaged")
    again = gguf_loader.load_tokenizer(path)
    assert again(text, add_special_tokens=False)["input_ids"] == converted(text, add_special_tokens=False)["input_ids"]
    assert [k for k in conversions if "gguf_file" in k]  # converted again and the entry replaced
    assert AutoTokenizer.from_pretrained(entry)(text)["input_ids"]
