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
