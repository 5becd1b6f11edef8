"""Hostile inputs, one test per class: wrong key types, nesting, forged tensor tables, scales that
would break the fold, malformed rope metadata, impossible eval options, outputs over inputs. Each
ends in one line `sealgguf: error: ...` naming the problem, exit status 2 (3 for the environment),
inputs unchanged, no output and no temporary file left behind."""

import hashlib
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import fuzz_inputs as fz  # noqa: E402

from sealgguf.errors import EXIT_INPUT  # noqa: E402


@pytest.fixture()
def tiny(tmp_path):
    fz.write_base(tmp_path / "base.gguf")
    return tmp_path, fz.Model(tmp_path / "base.gguf")


def _scales(d: Path, values=None, **meta) -> Path:
    from safetensors.numpy import save_file

    v = np.ones((fz.N_LAYER, fz.N_HEAD), np.float32) if values is None else values
    p = d / "s.safetensors"
    save_file({"scales": v}, str(p), metadata={"granularity": "head" if v.ndim == 2 else "channel", **meta})
    return p


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def expect_error(argv, pattern, inputs=(), out=None, code=EXIT_INPUT):
    before = {p: _sha(p) for p in inputs}
    listing = set(os.listdir(out.parent)) if out else set()
    rc, err = fz.run_cli([str(a) for a in argv], timeout=60)
    lines = err.strip().splitlines()
    assert rc == code, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("sealgguf: error:"), err
    assert pattern in lines[0], lines[0]
    assert {p: _sha(p) for p in inputs} == before
    if out:
        assert set(os.listdir(out.parent)) == listing, "an output or temporary file was left behind"


def _fold(d, model_bytes, pattern, scales=None):
    model = d / "m.gguf"
    model.write_bytes(model_bytes)
    s = scales or _scales(d)
    expect_error(["fold", model, s, "-o", d / "o.gguf"], pattern, [model, s], d / "o.gguf")


@pytest.mark.parametrize("key", ["llama.context_length", "llama.attention.key_length",
                                 "llama.attention.head_count_kv", "general.alignment"])
@pytest.mark.parametrize("value", [(8, fz._str("abc")), (6, fz._scalar(6, float("inf"))),
                                   (6, fz._scalar(6, float("nan"))), (9, struct.pack("<IQ", 8, 1) + fz._str("x"))])
def test_metadata_of_the_wrong_type(tiny, key, value):
    d, m = tiny
    rec = next((r for r in m.kvs if r[0] == key), None)
    if rec is None:
        m.kvs.append([key, *value])
    else:
        rec[1], rec[2] = value
    _fold(d, m.to_bytes(), f"'{key}' has type")


def test_nested_arrays_are_refused_like_llama_cpp(tiny):
    d, m = tiny
    m.kvs.append(["x.nested", 9, fz._nested_array(100_000)])
    _fold(d, m.to_bytes(), "'x.nested' is an array of arrays")


def test_tensor_of_a_layer_that_does_not_exist(tiny):
    d, m = tiny
    m.tensors[1][0] = f"blk.{fz.N_LAYER}.attn_norm.weight"
    _fold(d, m.to_bytes(), f"names layer {fz.N_LAYER}, but llama.block_count is {fz.N_LAYER}")


@pytest.mark.parametrize("forge,pattern", [
    (lambda m: m.tensors[1].__setitem__(3, m.tensors[0][3]), "has data offset"),          # shared offset
    (lambda m: m.tensors[1].__setitem__(3, m.tensors[0][3] + 32), "has data offset"),     # overlap
    (lambda m: m.tensors[1].__setitem__(3, m.tensors[1][3] + 1), "has data offset"),      # misaligned
    (lambda m: m.tensors[2][1].__setitem__(-1, (1 << 64) - 1), "has a dimension of"),    # wraps the count
    (lambda m: m.tensors[2][1].__setitem__(0, 0), "has a dimension of 0"),
    (lambda m: m.tensors[3].__setitem__(0, m.tensors[0][0]), "duplicate tensor name"),
    (lambda m: m.kvs.append(list(m.kvs[3])), "duplicate metadata key"),
])
def test_forged_tensor_tables(tiny, forge, pattern):
    d, m = tiny
    forge(m)
    _fold(d, m.to_bytes(relayout=False), pattern)


@pytest.mark.parametrize("value,what", [(1e30, "overflows"), (3.4e38, "overflows"),
                                        (1e-40, "underflows"), (1e-30, "underflows")])
@pytest.mark.parametrize("granularity", ["head", "channel"])
def test_scales_that_break_fp16_block_scales(tiny, value, what, granularity):
    d, m = tiny
    shape = (fz.N_LAYER, fz.N_HEAD) + ((fz.HEAD_DIM,) if granularity == "channel" else ())
    v = np.ones(shape, np.float32)
    v[1, 2] = value
    _fold(d, m.to_bytes(), f"on layer 1 head 2 (Q8_0 blk.1.attn_output.weight) {what}", _scales(d, v))


def test_scale_of_1e7_overflows_smollm2_q4_1(smollm2, tmp_path):
    """The case from the issue: on the shipped Q4_1 file a scale of 1e7 overflowed every block scale."""
    v = np.ones((30, 9), np.float32)
    v[3, 4] = 1e7
    s = tmp_path / "s.safetensors"
    from safetensors.numpy import save_file

    save_file({"scales": v}, str(s), metadata={"granularity": "head"})
    expect_error(["fold", smollm2, s, "-o", tmp_path / "o.gguf"], "on layer 3 head 4 (Q4_1 blk.3.attn_output.weight) "
                 "overflows", [smollm2, s], tmp_path / "o.gguf")


@pytest.mark.parametrize("rope,pattern", [
    ("{bad", "is not valid JSON"), ("[1, 2]", "must be a JSON object"), ('{"type": "yarn"}', "'factor' is missing"),
    ('{"type": "yarn", "factor": "abc"}', "'factor' must be a number"),
    ('{"type": "yarn", "factor": 1e300}', "rope factor must be"), ('{"type": "yarn", "factor": -2}', "rope factor"),
    ('{"type": "linear", "factor": 0}', "rope factor"), ('{"type": "bogus", "factor": 2}', "unknown rope scaling"),
    ('{"type": "ntk", "factor": 2}', "needs field 'head_dim'"),
])
def test_malformed_rope_metadata_in_scales(tiny, rope, pattern):
    d, m = tiny
    _fold(d, m.to_bytes(), pattern, _scales(d, rope_scaling=rope))


def test_output_equal_to_an_input_through_links(tiny):
    d, m = tiny
    model = d / "m.gguf"
    model.write_bytes(m.to_bytes())
    s = _scales(d)
    (d / "link.gguf").symlink_to(model)
    for out, what in ((s, "scales file"), (model, "model"), (d / "link.gguf", "model")):
        expect_error(["fold", model, s, "-o", out], f"overwrite the input {what}", [model, s])


def test_sealed_file_gets_the_umask_mode(tiny):
    d, m = tiny
    model = d / "m.gguf"
    model.write_bytes(m.to_bytes())
    old = os.umask(0o022)
    try:
        rc, err = fz.run_cli(["fold", str(model), str(_scales(d)), "-o", str(d / "o.gguf")], 60)
    finally:
        os.umask(old)
    assert rc == 0, err
    assert (d / "o.gguf").stat().st_mode & 0o777 == 0o644


def test_refold_replaces_stale_seal_keys(tiny):
    """Folding an already sealed file: the new seal.* keys describe the new scales only."""
    from sealgguf.gguf_file import open_gguf

    d, m = tiny
    model = d / "m.gguf"
    model.write_bytes(m.to_bytes())
    assert fz.run_cli(["fold", str(model), str(_scales(d, rope_scaling='{"type": "yarn", "factor": 2}')),
                       "-o", str(d / "a.gguf")], 60)[0] == 0
    a = open_gguf(d / "a.gguf")
    assert "seal.tune.rope_scaling" in a.fields and a.get("llama.rope.scaling.factor") == 2.0
    v = np.ones((fz.N_LAYER, fz.N_HEAD, fz.HEAD_DIM), np.float32)
    assert fz.run_cli(["fold", str(d / "a.gguf"), str(_scales(d, v)), "-o", str(d / "b.gguf")], 60)[0] == 0
    b = open_gguf(d / "b.gguf")
    assert b.get("seal.granularity") == "channel" and b.get("seal.source_sha256") == _sha(d / "a.gguf")
    assert "seal.tune.rope_scaling" not in b.fields  # stale: the new scales were not tuned under a rope
    assert fz.output_is_valid(d / "b.gguf") is None


@pytest.mark.parametrize("args,pattern", [
    (["--lengths", "0"], "--lengths must be positive"), (["--lengths", "-5"], "--lengths must be positive"),
    (["--lengths", "abc"], "comma-separated list of integers"), (["--lengths", ","], "comma-separated list"),
    (["--depths", "abc"], "comma-separated list of numbers"), (["--depths", "2"], "--depths must be fractions"),
    (["--samples", "0"], "--samples must be >= 1"), (["--samples", "-3"], "--samples must be >= 1"),
    (["--ppl-windows", "-1"], "--ppl-windows must be >= 0"), (["--lengths", "100000"], "--rope-scaling"),
    (["--lengths", "20000", "--rope-scaling", "yarn", "--rope-factor", "2"], "with yarn x2 it reaches 16384"),
    (["--rope-scaling", "yarn", "--rope-factor", "0.5"], "rope factor must be"),
    (["--min-accuracy", "1.5"], "--min-accuracy must be a fraction"), (["--max-drop", "0.1"], "--compare"),
    (["--gpu-layers", "-2"], "--gpu-layers"), (["--task", "nope"], "unknown task"),
])
def test_eval_refuses_bad_options_before_loading(smollm2, args, pattern, tmp_path):
    expect_error(["eval", smollm2, *args, "--json", tmp_path / "r.json"], pattern, [smollm2], tmp_path / "r.json")


def test_eval_of_an_architecture_llama_cpp_cannot_load(tmp_path):
    fz.write_base(tmp_path / "bogus.gguf", arch="bogusarch")
    text = (tmp_path / "bogus.gguf").read_bytes()
    expect_error(["eval", tmp_path / "bogus.gguf", "--lengths", "64", "--samples", "1", "--task", "passkey"],
                 "llama.cpp cannot load this model", [tmp_path / "bogus.gguf"])
    assert (tmp_path / "bogus.gguf").read_bytes() == text


def test_unsupported_quant_type(tmp_path):
    fz.write_base(tmp_path / "iq.gguf", attn_types=("IQ4_NL",))
    expect_error(["fold", tmp_path / "iq.gguf", _scales(tmp_path), "-o", tmp_path / "o.gguf"],
                 "blk.0.attn_output.weight: cannot fold type IQ4_NL (supported: F32, F16, Q4_0",
                 [tmp_path / "iq.gguf"], tmp_path / "o.gguf")


def test_missing_files_are_environment_errors(tmp_path):
    expect_error(["inspect", tmp_path / "nope.gguf"], "no such file", code=3)
    fz.write_base(tmp_path / "m.gguf")
    expect_error(["fold", tmp_path / "m.gguf", tmp_path / "nope.safetensors", "-o", tmp_path / "o.gguf"],
                 "scales file not found", [tmp_path / "m.gguf"], tmp_path / "o.gguf", code=3)


def test_debug_shows_the_traceback(tmp_path):
    from sealgguf.cli import main
    from sealgguf.errors import SealError

    with pytest.raises(SealError):
        main(["--debug", "inspect", str(shutil.which("python3") or "/bin/sh")])


def test_input_with_non_finite_weights_is_named(tiny):
    d, m = tiny
    data = bytearray(m.tensors[0][4])
    data[0:2] = struct.pack("<e", float("nan"))  # the first Q4_0 block's fp16 scale
    m.tensors[0][4] = bytes(data)
    _fold(d, m.to_bytes(), "blk.0.attn_output.weight already holds values that are not finite")


def test_control_characters_in_names_stay_on_one_line(tiny):
    d, m = tiny
    m.kvs[0][0] = "bad\nkey"
    m.kvs.append(["bad\nkey", 4, fz._scalar(4, 1)])
    _fold(d, m.to_bytes(), "duplicate metadata key 'bad\\x0akey'")
