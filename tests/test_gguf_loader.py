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


@pytest.mark.slow
def test_bf16_fast_load_is_transformers_bf16_load(smollm2):
    # the fast path dequantizes the quantized tensors straight to bfloat16 bits; transformers casts float32
    from sealgguf.tune.model import load

    fast, slow = load(smollm2, "cpu", dtype="bf16", fast=True), load(smollm2, "cpu", dtype="bf16", fast=False)
    fast_sd, slow_sd = fast.model.state_dict(), slow.model.state_dict()
    assert fast_sd.keys() == slow_sd.keys()
    for name, t in slow_sd.items():
        assert fast_sd[name].dtype == t.dtype == torch.bfloat16 and torch.equal(fast_sd[name], t), name


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_engine_dequantize_bf16_is_torch_cast(model, request):
    from sealgguf import _core
    from sealgguf.fold import open_gguf

    src = open_gguf(request.getfixturevalue(model))
    seen = set()
    for t in src.tensors:
        if t.type_id in (0, 1) or t.type_id in seen or not _core.supported(t.type_id):
            continue
        seen.add(t.type_id)
        n = int(t.shape[0])
        data = src.tensor_data(t)[: 64 * (t.n_bytes // (int(np.prod(t.shape)) // n))]  # 64 rows
        want = torch.from_numpy(_core.dequantize(data, t.type_id, n)).to(torch.bfloat16)
        got = torch.from_numpy(_core.dequantize_bf16(data, t.type_id, n).view(np.int16)).view(torch.bfloat16)
        assert torch.equal(got, want), src.type_name(t)
    assert seen


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
def test_fast_reader_reads_what_gguf_py_reads(model, request):
    """The bulk array reader gives transformers the same fields (types, element count, every value as
    transformers parses it, gguf-py's own contents()) and the same tensors as gguf-py's GGUFReader."""
    import gguf
    from transformers.integrations.ggml import _gguf_parse_value

    from sealgguf.tune.gguf_loader import fast_reader_class

    path = request.getfixturevalue(model)
    slow, fast = gguf.GGUFReader(path), fast_reader_class()(path)
    assert list(slow.fields) == list(fast.fields)
    arrays = 0
    for key, a in slow.fields.items():
        b = fast.fields[key]
        assert a.types == b.types and len(a.data) == len(b.data), key
        assert [_gguf_parse_value(a.parts[i], a.types) for i in a.data] == \
            [_gguf_parse_value(b.parts[i], b.types) for i in b.data], key
        assert a.contents() == b.contents(), key
        arrays += a.types[0] == gguf.GGUFValueType.ARRAY
    assert arrays >= 3  # the vocabulary arrays (tokens, scores / merges, token types) took the bulk path
    assert [(t.name, t.tensor_type, list(t.shape), t.data_offset) for t in slow.tensors] == \
        [(t.name, t.tensor_type, list(t.shape), t.data_offset) for t in fast.tensors]
    assert slow.data_offset == fast.data_offset
    np.testing.assert_array_equal(slow.tensors[-1].data, fast.tensors[-1].data)


def test_fast_reader_refuses_a_string_array_past_the_end(tmp_path, smollm2):
    """A vocabulary whose last string claims more bytes than the file holds is an error, as in gguf-py."""
    import gguf

    from sealgguf.tune.gguf_loader import fast_reader_class

    w = gguf.GGUFWriter(tmp_path / "t.gguf", "llama")
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    data = bytearray((tmp_path / "t.gguf").read_bytes())
    at = data.rindex(b"ccc") - 8
    data[at:at + 8] = (1 << 20).to_bytes(8, "little")
    (tmp_path / "bad.gguf").write_bytes(data)
    with pytest.raises(ValueError):
        fast_reader_class()(tmp_path / "bad.gguf")


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_skimming_reader_steps_over_the_vocabulary_only(model, request):
    """The reader of a load whose metadata is saved: every field is there, the vocabulary-sized arrays are
    empty, everything else (small fields, every tensor) is what the full reader gives."""
    from transformers.integrations.ggml import _gguf_parse_value

    from sealgguf.tune.gguf_loader import SKIM_MIN_LENGTH, fast_reader_class

    path = request.getfixturevalue(model)
    full, skim = fast_reader_class()(path), fast_reader_class(skim=True)(path)
    assert list(full.fields) == list(skim.fields)
    skimmed = 0
    for key, a in full.fields.items():
        b = skim.fields[key]
        assert a.types == b.types, key
        if len(a.data) >= SKIM_MIN_LENGTH:
            assert b.data == [], key
            skimmed += 1
        else:
            assert [_gguf_parse_value(a.parts[i], a.types) for i in a.data] == \
                [_gguf_parse_value(b.parts[i], b.types) for i in b.data], key
    assert skimmed >= 2  # tokens, and token types / scores / merges
    assert [(t.name, t.tensor_type, list(t.shape), t.data_offset) for t in full.tensors] == \
        [(t.name, t.tensor_type, list(t.shape), t.data_offset) for t in skim.tensors]
    np.testing.assert_array_equal(full.tensors[-1].data, skim.tensors[-1].data)


def _prompts(encoder) -> list[str]:
    from sealgguf.tasks import TASKS, get_task, make_sample
    from sealgguf.tasks.chat import render

    texts = []
    for i, name in enumerate(TASKS):
        sample = make_sample(get_task(name), 1000 + i, 300, lambda s: len(encoder.prompt_ids(s)))
        texts += [render(sample, encoder.chat_template, encoder.bos_text), sample.answer]
    return texts + ["  two  spaces\tand a tab\n\n<|im_start|><start_of_turn>é 中文 🙂"]


@pytest.mark.parametrize("model", ["smollm2", pytest.param("gemma3", marks=pytest.mark.slow)])
def test_saved_conversion_loads_the_same_model(model, request, tmp_path, monkeypatch):
    """The first load saves transformers' conversion; the second, from it, has the same weights, config and
    prompt encoder (token ids of every task's prompts and answers, special tokens, BOS, chat template)."""
    from sealgguf.gguf_file import open_gguf
    from sealgguf.tune.gguf_loader import load_conversion
    from sealgguf.tune.model import load

    path = request.getfixturevalue(model)
    monkeypatch.setenv("SEALGGUF_CACHE", str(tmp_path))
    assert load_conversion(open_gguf(path)) is None
    first = load(path, "cpu", dtype="bf16")
    assert load_conversion(open_gguf(path)) is not None
    again = load(path, "cpu", dtype="bf16")
    a, b = first.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.model.config.to_dict() == again.model.config.to_dict()
    e1, e2 = first.encoder, again.encoder
    assert (e1.bos_id, e1.chat_template, e1.bos_text) == (e2.bos_id, e2.chat_template, e2.bos_text)
    for text in _prompts(e1):
        assert e1.encode(text) == e2.encode(text), text[:80]


def test_damaged_conversion_is_converted_again(smollm2, tmp_path, monkeypatch):
    from sealgguf.gguf_file import open_gguf
    from sealgguf.tune.gguf_loader import load_conversion
    from sealgguf.tune.model import load

    monkeypatch.setenv("SEALGGUF_CACHE", str(tmp_path))
    src = open_gguf(smollm2)
    load(smollm2, "cpu")
    (saved,) = tmp_path.glob("conversions/*.tokenizer.json")
    saved.write_text('{"version": "1.0", "model": ')  # cut short
    assert load_conversion(src) is None
    reloaded = load(smollm2, "cpu")
    assert load_conversion(src) is not None  # rewritten
    text = "line right-tiger: <4021>"
    assert reloaded.encoder.encode(text) == load_conversion(src).encode(text)


def test_conversion_key_is_the_header(smollm2, tmp_path):
    """Same header bytes, same key, wherever the file lies; one byte of metadata changed, another key."""
    import shutil

    from sealgguf.gguf_file import open_gguf
    from sealgguf.tune.gguf_loader import conversion_key

    copy = tmp_path / "copy.gguf"
    shutil.copyfile(smollm2, copy)
    assert conversion_key(open_gguf(copy)) == conversion_key(open_gguf(smollm2))
    data = bytearray(copy.read_bytes())
    at = data.index(b"general.name") + len(b"general.name") + 4 + 8  # key, value type, string length
    data[at] ^= 0x20  # the name's first letter changes case
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(bytes(data))
    assert conversion_key(open_gguf(changed)) != conversion_key(open_gguf(smollm2))


def test_conversion_that_json_would_change_is_not_saved(smollm2, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from sealgguf.gguf_file import open_gguf
    from sealgguf.tune.gguf_loader import save_conversion

    monkeypatch.setenv("SEALGGUF_CACHE", str(tmp_path))
    tok = SimpleNamespace(bos_token="<s>", bos_token_id=1, chat_template=None, backend_tokenizer=None)
    save_conversion(open_gguf(smollm2), {"config": {"window": (1, 2)}}, tok)  # a tuple comes back a list
    assert not any(tmp_path.rglob("*.json"))
