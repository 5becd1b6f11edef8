"""Bad input: non-zero exit, a one-line message naming the problem, no output, inputs unchanged."""

import hashlib
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from sealgguf import scales


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _run(*args):
    return subprocess.run([sys.executable, "-m", "sealgguf", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def good(smollm2, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    model = d / "model.gguf"
    shutil.copyfile(smollm2, model)
    scales.save(d / "ok.safetensors", np.ones((30, 9), np.float32), {})
    return d, model


def _expect_error(args, out, inputs, pattern):
    before = {p: _sha(p) for p in inputs}
    r = _run(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("sealgguf: error:") and pattern in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temporary left behind
    assert {p: _sha(p) for p in inputs} == before


def _forge(good, name, data):
    d, _ = good
    p = d / name
    p.write_bytes(data)
    return p


def test_truncated_gguf(good):
    d, model = good
    bad = _forge(good, "trunc.gguf", model.read_bytes()[: 5_000_000])
    _expect_error(["fold", bad, d / "ok.safetensors", "-o", d / "o1.gguf"], d / "o1.gguf", [bad], "trunc.gguf")
    bad2 = _forge(good, "trunc2.gguf", model.read_bytes()[: 300])
    _expect_error(["fold", bad2, d / "ok.safetensors", "-o", d / "o1.gguf"], d / "o1.gguf", [bad2], "truncated")


def test_vocabulary_cut_inside_one_of_its_strings(good):
    # the token array is walked in C++ (_core.string_array_end): a file that ends inside it is truncated
    from sealgguf.gguf_file import GGUFFile

    d, model = good
    tokens = GGUFFile(model).fields["tokenizer.ggml.tokens"]
    middle = (tokens.value_start + tokens.end) // 2
    bad = _forge(good, "trunc3.gguf", model.read_bytes()[:middle])
    _expect_error(["fold", bad, d / "ok.safetensors", "-o", d / "o1.gguf"], d / "o1.gguf", [bad], "truncated")


def test_string_array_end_stops_at_the_buffer():
    from sealgguf import _core

    data = b"".join(struct.pack("<Q", len(w)) + w for w in (b"ab", b"", b"xyz"))
    assert _core.string_array_end(data, 0, 3) == len(data)
    assert _core.string_array_end(data, 0, 2) == 8 + 2 + 8
    assert _core.string_array_end(data, 0, 0) == 0
    assert _core.string_array_end(data[:-1], 0, 3) == -1          # the last string's bytes run past the end
    assert _core.string_array_end(data[:20], 0, 3) == -1          # its length runs past the end
    assert _core.string_array_end(struct.pack("<Q", 2**64 - 1) + b"x", 0, 1) == -1  # a length that would wrap


def test_wrong_magic(good):
    d, model = good
    bad = _forge(good, "magic.gguf", b"GGML" + model.read_bytes()[4:4096])
    _expect_error(["fold", bad, d / "ok.safetensors", "-o", d / "o2.gguf"], d / "o2.gguf", [bad], "not a GGUF file")


@pytest.mark.parametrize("field,offset", [("tensors", 8), ("metadata keys", 16)])
def test_absurd_counts(good, field, offset):
    d, model = good
    data = bytearray(model.read_bytes()[:65536])
    struct.pack_into("<Q", data, offset, 1 << 60)
    bad = _forge(good, f"absurd{offset}.gguf", bytes(data))
    _expect_error(["inspect", bad], d / "none.gguf", [bad], field)


def test_scales_shape_mismatch(good):
    d, model = good
    scales.save(d / "shape.safetensors", np.ones((30, 8), np.float32), {})
    _expect_error(["fold", model, d / "shape.safetensors", "-o", d / "o3.gguf"], d / "o3.gguf",
                  [model, d / "shape.safetensors"], "[30, 9]")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scales(good, bad):
    d, model = good
    from safetensors.numpy import save_file

    v = np.ones((30, 9), np.float32)
    v[2, 3] = bad
    save_file({"scales": v}, str(d / "nan.safetensors"), metadata={"granularity": "head"})
    _expect_error(["fold", model, d / "nan.safetensors", "-o", d / "o4.gguf"], d / "o4.gguf",
                  [model, d / "nan.safetensors"], "[2, 3]")


def test_missing_scales_file(good):
    d, model = good
    _expect_error(["fold", model, d / "nope.safetensors", "-o", d / "o5.gguf"], d / "o5.gguf", [model], "not found")


def test_not_safetensors(good):
    d, model = good
    junk = _forge(good, "junk.safetensors", b"this is not a safetensors file at all")
    _expect_error(["fold", model, junk, "-o", d / "o6.gguf"], d / "o6.gguf", [model, junk], "not a safetensors")


def test_output_over_input_refused(good):
    d, model = good
    before = _sha(model)
    r = _run("fold", model, d / "ok.safetensors", "-o", model)
    assert r.returncode != 0 and "overwrite the input" in r.stderr
    assert _sha(model) == before
