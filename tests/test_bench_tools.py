"""The benchmark helpers under tools/ that the README's GPU figures rest on: random weights in a model's own
header (tools/random_weights.py) and the plan against a model built from its config (tools/bench_plan_shape.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import random_weights  # noqa: E402


def test_random_weights_keep_the_header_and_every_tensor(smollm2, tmp_path):
    """Same header bytes, size, tensor table and types; new, finite values of the intended spread; llama.cpp
    loads the file. The source can be its header alone, extended to its size (sparse, zeros)."""
    from llama_cpp import Llama

    from sealgguf import _core
    from sealgguf.gguf_file import open_gguf

    src = open_gguf(smollm2)
    header_only = tmp_path / "header.gguf"
    with open(header_only, "wb") as f:
        f.write(src.raw(0, src.data_offset))
        f.truncate(src.size)
    out = tmp_path / "random.gguf"
    random_weights.write_random(header_only, out, seed=1)
    new = open_gguf(out)
    assert new.size == src.size and bytes(new.raw(0, new.data_offset)) == bytes(src.raw(0, src.data_offset))
    assert [(t.name, t.shape, t.type_id) for t in new.tensors] == [(t.name, t.shape, t.type_id) for t in src.tensors]
    t = next(t for t in new.tensors if t.name == "blk.3.attn_output.weight")
    values = _core.dequantize(new.tensor_data(t), t.type_id, t.shape[0])
    old = _core.dequantize(src.tensor_data(t), t.type_id, t.shape[0])
    assert np.isfinite(values).all() and abs(values.std() * np.sqrt(t.shape[0]) - 1) < 0.1
    assert np.corrcoef(values.ravel(), old.ravel())[0, 1] < 0.05  # not the shipped weights
    norm = next(t for t in new.tensors if len(t.shape) == 1)
    assert (_core.dequantize(new.tensor_data(norm), norm.type_id, norm.shape[0]) == 1).all()  # identity norms
    Llama(str(out), n_ctx=64, verbose=False).tokenize(b"hello")


def test_plan_shape_bench_runs_a_config_on_cpu(tmp_path):
    """The tool builds the model from a config with random weights and prints plan and measured rows."""
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "head_dim": 32, "vocab_size": 1000, "max_position_embeddings": 2048}))
    r = subprocess.run([sys.executable, str(TOOLS / "bench_plan_shape.py"), "--config", str(cfg), "--device", "cpu",
                        "--lengths", "256", "--ckpt", "on,off", "--repeat", "1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.split()[:1] == ["256"]]
    assert [row[1] for row in rows] == ["on", "off"]
    assert all(float(row[2]) > 0 and float(row[5]) > 0 and float(row[7]) > 0 for row in rows)  # plan GiB, s; tok/s
