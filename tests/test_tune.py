"""The SEAL tuner on the real SmolLM2 (dequantized from its bundled Q4_1 GGUF)."""

import argparse
import json
import math
import os

import numpy as np
import pytest
import torch

from sealgguf.errors import SealError
from sealgguf.tune.data import anchor_windows, make_examples
from sealgguf.tune.model import SealScales, decoder_layers, disable_checkpointing, enable_checkpointing
from sealgguf.tune.trainer import anchor_kl, answer_loss, validate


@pytest.fixture
def ids(hf_smollm2):
    return torch.tensor([hf_smollm2.encoder.encode("The quick brown fox jumps over the lazy dog. " * 4)])


def test_unit_scales_leave_logits_unchanged(hf_smollm2, ids):
    model = hf_smollm2.model
    with torch.no_grad():
        ref = model(ids).logits
    seal = SealScales(hf_smollm2.layout, "channel").attach(model)
    try:
        with torch.no_grad():
            out = model(ids).logits
    finally:
        seal.detach_hooks()
    assert torch.equal(ref, out)


def test_head_scale_equals_scaled_o_proj_columns(hf_smollm2, ids):
    model, d = hf_smollm2.model, hf_smollm2.layout.head_dim
    seal = SealScales(hf_smollm2.layout, "head")
    with torch.no_grad():
        seal.scales[5, 2] = 0.3
        seal.scales[20, 7] = 1.7
    seal.attach(model)
    try:
        with torch.no_grad():
            hooked = model(ids).logits
    finally:
        seal.detach_hooks()
    layers = decoder_layers(model)
    saved = {i: layers[i].self_attn.o_proj.weight.detach().clone() for i in (5, 20)}
    try:
        with torch.no_grad():
            layers[5].self_attn.o_proj.weight[:, 2 * d:3 * d] *= 0.3
            layers[20].self_attn.o_proj.weight[:, 7 * d:8 * d] *= 1.7
            folded = model(ids).logits
    finally:
        with torch.no_grad():
            for i, w in saved.items():
                layers[i].self_attn.o_proj.weight.copy_(w)
    torch.testing.assert_close(hooked, folded, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, hooked, atol=1e-3)  # the scale did something


def test_knowledge_term_is_kl_to_the_unscaled_model(hf_smollm2):
    """KL(baseline || sealed) on essay text: zero at unit scales, positive and differentiable otherwise."""
    model = hf_smollm2.model
    window = anchor_windows(hf_smollm2.encoder, 2, window=64)[1]
    assert window.numel() == 64
    seal = SealScales(hf_smollm2.layout, "head").attach(model)
    try:
        assert anchor_kl(model, seal, window, "cpu").item() == pytest.approx(0.0, abs=1e-6)
        with torch.no_grad():
            seal.scales[3] = 0.5
        kl = anchor_kl(model, seal, window, "cpu")
        kl.backward()
        with torch.no_grad(), seal.bypassed():
            bypassed = model(window[None]).logits
        with torch.no_grad():
            plain = model(window[None]).logits
    finally:
        seal.detach_hooks()
    assert kl.item() > 1e-4 and seal.scales.grad[3].abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(bypassed, model(window[None]).logits)  # bypassed == no hooks at all
    assert not torch.allclose(plain, bypassed, atol=1e-3)


def test_only_scales_get_gradients(hf_smollm2):
    model = hf_smollm2.model
    ex = make_examples(["passkey"], 1, 200, hf_smollm2.encoder, "train")[0]
    seal = SealScales(hf_smollm2.layout, "head").attach(model)
    enable_checkpointing(model)
    model.train()
    try:
        loss, _ = answer_loss(model, ex, "cpu")
        loss.backward()
    finally:
        model.eval()
        disable_checkpointing(model)
        seal.detach_hooks()
    assert seal.scales.grad is not None and seal.scales.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_loss_only_on_answer_tokens(hf_smollm2):
    ex = make_examples(["lines"], 1, 300, hf_smollm2.encoder, "train")[0]
    assert ex.n_answer == len(hf_smollm2.encoder.answer_ids(ex.sample))
    assert ex.ids[-ex.n_answer:].tolist() == hf_smollm2.encoder.answer_ids(ex.sample)
    loss, hit = answer_loss(hf_smollm2.model, ex, "cpu")
    assert torch.isfinite(loss)
    em, mean_loss = validate(hf_smollm2.model, [ex, ex], "cpu")
    assert em == float(hit) and mean_loss == pytest.approx(loss.item(), rel=1e-5)


def test_short_real_tuning_run(smollm2, tmp_path):
    """A few hundred tokens, a handful of steps: the loss falls and fold accepts the file."""
    from sealgguf import scales
    from sealgguf.fold import fold_file
    from sealgguf.tune import TuneOptions, run_tune

    out = tmp_path / "scales.safetensors"
    info = run_tune(TuneOptions(model=str(smollm2), out=out, tasks=["passkey"], granularity="head", length=256, samples=8,
                                val_samples=2, lr=5e-2, epochs=2, keep=0.0, progress=False))
    losses = info["losses"]
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    s = scales.load(out)
    assert s.values.shape == (30, 9) and s.granularity == "head"
    assert not np.all(s.values == 1.0)
    assert np.isfinite(info["val_loss_before"]) and np.isfinite(info["val_loss_after"]) and info["kl_last10"] is None
    for k in ("task", "length", "samples", "lr", "epochs", "seed", "arch", "source_sha256", "rope_scaling",
              "val_loss_after", "dtype", "checkpointing", "peak_mib", "plan_peak_mib"):
        assert k in s.metadata
    assert info["peak_mib"] > info["plan_peak_mib"] > 0  # on CPU the peak is the process's, loading included
    assert info["checkpointing"] is False  # --checkpointing auto: 256 tokens fit without recompute
    res = fold_file(smollm2, out, tmp_path / "sealed.gguf")
    assert res.blocks("blocks_requantized") == 0


def test_length_beyond_context_needs_rope(smollm2, tmp_path):
    from sealgguf.tune import TuneOptions, run_tune

    with pytest.raises(SealError, match="exceeds the model's context of 8192"):
        run_tune(TuneOptions(model=str(smollm2), out=tmp_path / "x.safetensors", length=9000, samples=1,
                             progress=False))


def test_bad_options(tmp_path):
    from sealgguf.tune import TuneOptions, run_tune

    with pytest.raises(SealError, match="unknown task"):
        run_tune(TuneOptions(model="smollm2", out=tmp_path / "x", tasks=["nope"]))
    with pytest.raises(SealError, match="granularity"):
        run_tune(TuneOptions(model="smollm2", out=tmp_path / "x", granularity="layer"))
    with pytest.raises(SealError, match="--keep"):
        run_tune(TuneOptions(model="smollm2", out=tmp_path / "x", keep=float("nan")))
    assert not (tmp_path / "x").exists()


def test_rope_scaling_needs_a_factor(hf_smollm2):
    from sealgguf.rope import RopeScaling

    with pytest.raises(SealError, match="rope-factor"):
        RopeScaling.from_cli("yarn", 0.0)
    with pytest.raises(SealError, match=r"rope factor must be a number in \(1"):
        RopeScaling.from_cli("yarn", 1.0)
    bound = RopeScaling.from_cli("linear", 2.0).bind(8192, hf_smollm2.layout.head_dim)
    assert bound.factor == 2.0 and bound.context(8192) == 16384
    assert RopeScaling.from_json(bound.to_json(), "x") == bound


def test_linear_rope_divides_frequencies(smollm2, hf_smollm2):
    from sealgguf.tune.model import load

    from sealgguf.rope import RopeScaling

    scaled = load(smollm2, "cpu", RopeScaling.from_cli("linear", 2.0)).model.model.rotary_emb.inv_freq
    base = hf_smollm2.model.model.rotary_emb.inv_freq
    torch.testing.assert_close(scaled, base / 2.0)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gemma3_text"])
def test_gqa_families_tiny_random(family):
    """Families without a bundled model: tiny random-weight configs (nothing downloaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from sealgguf.tune.model import head_layout

    cfg = AutoConfig.for_model(family, vocab_size=128, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               max_position_embeddings=256)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    layout = head_layout(model.config)
    assert (layout.n_layer, layout.n_head, layout.n_head_kv, layout.head_dim) == (2, 4, 2, 16)
    x = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        ref = model(x).logits
    seal = SealScales(layout, "channel").attach(model)
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref)
        seal.scales[1, 3] = 0.0
        hooked = model(x).logits
    seal.detach_hooks()
    o = decoder_layers(model)[1].self_attn.o_proj
    with torch.no_grad():
        o.weight[:, 3 * 16:4 * 16] = 0
        torch.testing.assert_close(model(x).logits, hooked)


def test_unsupported_architecture():
    from transformers import AutoConfig

    from sealgguf.tune.model import head_layout

    with pytest.raises(SealError, match="architecture 'gpt2' is not supported"):
        head_layout(AutoConfig.for_model("gpt2"))


def _tiny_tune(smollm2, out, **kw):
    from sealgguf.tune import TuneOptions, run_tune

    opts = dict(model=str(smollm2), out=out, tasks=["passkey"], granularity="head", length=128, samples=4,
                val_samples=0, lr=5e-2, keep=0.0, progress=False, checkpointing=False)
    opts.update(kw)
    return run_tune(TuneOptions(**opts))


@pytest.mark.slow
def test_resume_after_interrupt_gives_the_same_scales(smollm2, tmp_path, monkeypatch):
    """Interrupt a tune after its checkpoint at step 2, resume it: the scales equal an uninterrupted run's."""
    from sealgguf import scales
    from sealgguf.tune import trainer

    _tiny_tune(smollm2, tmp_path / "full.safetensors")
    calls = {"n": 0}
    original = trainer.answer_loss

    def interrupting(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(trainer, "answer_loss", interrupting)
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _tiny_tune(smollm2, out, checkpoint_every=2)
    ckpt = tmp_path / "resumed.safetensors.ckpt.pt"
    assert ckpt.exists() and not out.exists()
    monkeypatch.setattr(trainer, "answer_loss", original)
    info = _tiny_tune(smollm2, out, checkpoint_every=2, resume=True)
    assert len(info["losses"]) == 4 and not ckpt.exists()
    np.testing.assert_allclose(scales.load(out).values, scales.load(tmp_path / "full.safetensors").values,
                               rtol=0, atol=1e-6)


@pytest.mark.slow
def test_grad_accum_takes_one_optimizer_step_per_group(smollm2, tmp_path):
    """With --grad-accum equal to the sample count there is one AdamW step, and AdamW's first step
    moves every scale with a gradient by exactly lr; one step per sample moves them further."""
    from sealgguf import scales

    _tiny_tune(smollm2, tmp_path / "a.safetensors", grad_accum=4)
    delta = np.abs(scales.load(tmp_path / "a.safetensors").values - 1.0)
    moved = delta[delta > 1e-4]
    assert moved.size > 0.9 * delta.size
    np.testing.assert_allclose(moved, 5e-2, rtol=2e-2)
    _tiny_tune(smollm2, tmp_path / "b.safetensors", grad_accum=1)
    assert np.abs(scales.load(tmp_path / "b.safetensors").values - 1.0).max() > 0.06


@pytest.mark.slow
def test_tune_cli_success(smollm2, tmp_path):
    from sealgguf.cli import main

    out = tmp_path / "s.safetensors"
    assert main(["-q", "tune", str(smollm2), "-o", str(out), "--task", "passkey", "--length", "128",
                 "--samples", "2", "--val-samples", "1", "--keep", "0", "--granularity", "head"]) == 0
    from sealgguf import scales

    assert scales.load(out).values.shape == (30, 9)


def test_auto_dtype_follows_the_hardware(monkeypatch):
    from sealgguf import hardware
    from sealgguf.tune import pick_dtype

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f"}))
    assert pick_dtype("auto", "cpu") == "fp32"  # no bf16 units: torch would emulate bf16, slower than fp32
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16", "amx_tile"}))
    assert pick_dtype("auto", "cpu") == "bf16"
    assert pick_dtype("fp16", "cpu") == "fp16"
    with pytest.raises(SealError, match="--dtype must be one of"):
        pick_dtype("int8", "cpu")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="resident memory is read from Linux's /proc")
def test_process_memory_follows_what_the_process_touches():
    from sealgguf.hardware import process_mib

    import mmap

    before = process_mib("VmRSS")
    # a fresh anonymous mapping, each page written: resident pages the process did not hold before (a bytes object
    # could land in heap memory an earlier test freed and the process still holds, and add nothing)
    held = mmap.mmap(-1, 64 << 20)
    for page in range(0, 64 << 20, mmap.PAGESIZE):
        held[page] = 1
    assert process_mib("VmRSS") - before > 48 and process_mib("VmHWM") >= process_mib("VmRSS") > 0
    held.close()
    assert math.isnan(process_mib("NoSuchField"))


def test_bf16_weights_fp32_scales_and_the_same_gradient(smollm2, hf_smollm2):
    """bf16 frozen weights: no fp32 weight left in the model, the scales and their gradient stay fp32, and the
    gradient points where fp32's does on a real sample."""
    from sealgguf.tune.model import load

    lm16 = load(smollm2, "cpu", dtype="bf16")
    assert {p.dtype for p in lm16.model.parameters()} == {torch.bfloat16}
    ex = make_examples(["lines"], 1, 512, hf_smollm2.encoder, "train", seed=3)[0]
    grads = []
    for lm in (hf_smollm2, lm16):
        seal = SealScales(lm.layout, "channel").attach(lm.model)
        try:
            loss, _ = answer_loss(lm.model, ex, "cpu")
            loss.backward()
        finally:
            seal.detach_hooks()
        assert seal.scales.dtype == seal.scales.grad.dtype == torch.float32
        grads.append(seal.scales.grad.ravel().double())
    cos = float(grads[0] @ grads[1] / (grads[0].norm() * grads[1].norm()))
    assert cos > 0.95, cos


@pytest.mark.slow
def test_lr_auto_picks_the_best_candidate_from_fresh_scales(smollm2, tmp_path, monkeypatch):
    """--lr auto: every candidate starts from scales at 1.0 (the tiny lr's validation loss is the untouched
    model's, though it runs after a big one), the pick is the lowest score, the full run uses it, and the sweep
    is in the scales file."""
    import json

    import sealgguf.tune as tune
    from sealgguf import scales

    monkeypatch.setattr(tune, "LR_CANDIDATES", {"head": (1e-1, 1e-7), "channel": (1e-1, 1e-7)})
    monkeypatch.setattr(tune, "LR_SWEEP_SAMPLES", 3)
    out = tmp_path / "auto.safetensors"
    info = _tiny_tune(smollm2, out, lr="auto", val_samples=3, samples=4, tasks=["lines"], length=256)
    sweep = {row["lr"]: row for row in info["lr_sweep"]}
    assert set(sweep) == {1e-1, 1e-7}
    assert sweep[1e-7]["val_loss"] == pytest.approx(info["val_loss_before"], abs=1e-3)
    assert sweep[1e-1]["val_loss"] != pytest.approx(info["val_loss_before"], abs=1e-3)  # the big lr moved it
    best = min(info["lr_sweep"], key=lambda r: r["score"])["lr"]
    assert info["lr"] == best
    meta = scales.load(out).metadata
    assert json.loads(meta["lr"]) == best and len(json.loads(meta["lr_sweep"])) == 2


def test_lr_auto_needs_validation_samples(smollm2, tmp_path):
    with pytest.raises(SealError, match="--val-samples >= 1"):
        _tiny_tune(smollm2, tmp_path / "x.safetensors", lr="auto", val_samples=0)
    with pytest.raises(SealError, match="--lr must be 'auto' or"):
        _tiny_tune(smollm2, tmp_path / "x.safetensors", lr="fast")


SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
         **{f"model.layers.{i}": "cpu" if i < 15 else "disk" for i in range(30)}}


@pytest.mark.parametrize("device_map, max_memory", [(SPLIT, None), ("auto", {"cpu": "150MiB"})],
                         ids=["explicit", "auto-max-memory"])
def test_a_split_model_gives_the_same_gradients(smollm2, hf_smollm2, tmp_path, device_map, max_memory):
    """--device-map: accelerate places half the layers on disk (weights loaded by its hooks when the layer runs),
    by an explicit map or by `auto` under a --max-memory cap; with activation checkpointing on, the scales' loss
    and gradient equal the unsplit model's."""
    from sealgguf.tune.model import load

    split = load(smollm2, "cpu", device_map=device_map, offload_folder=str(tmp_path), max_memory=max_memory)
    placed = split.model.hf_device_map
    assert set(placed.values()) == {"cpu", "disk"} and placed["model.layers.0"] == "cpu", placed
    assert hasattr(split.model.model.layers[20].self_attn.q_proj, "_hf_hook")  # accelerate's hooks are in
    assert split.model.model.layers[20].self_attn.q_proj.weight.device.type == "meta"  # weights on disk
    ex = make_examples(["lines"], 1, 300, hf_smollm2.encoder, "train")[0]
    results = []
    for lm in (hf_smollm2, split):
        enable_checkpointing(lm.model)
        lm.model.train()
        seal = SealScales(lm.layout, "channel").attach(lm.model)
        with torch.no_grad():
            seal.scales.copy_(torch.linspace(0.5, 1.5, seal.scales.numel()).reshape(seal.scales.shape))
        try:
            loss, _ = answer_loss(lm.model, ex, "cpu")
            loss.backward()
            results.append((loss.item(), seal.scales.grad.clone()))
        finally:
            seal.detach_hooks()
            lm.model.eval()
            disable_checkpointing(lm.model)
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6) and grad_a.abs().max() > 0
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-5, atol=1e-7)


def test_two_gloo_processes_match_one(smollm2, tmp_path):
    """Data parallel over samples: `torchrun --nproc-per-node 2 -m sealgguf tune ... --grad-accum 2` on CPU (gloo)
    learns the scales one process learns with --grad-accum 2 (each process takes one sample of every step);
    so does the same run with --fsdp, where each process holds half of every layer's weights (FSDP2)."""
    import os
    import socket
    import subprocess
    import sys

    from sealgguf import scales
    from sealgguf.tune import TuneOptions, run_tune

    args = dict(tasks=["passkey"], granularity="head", length=256, samples=4, val_samples=1, lr=5e-2, keep=1.0,
                grad_accum=2)
    # one thread, as each torchrun process below: with bf16 weights on an AMX CPU (dtype auto) the [256 x vocab]
    # logits of the --keep term round differently with 1 and 2 threads (KL gradient 5.6% apart, measured), which
    # AdamW then carries into the scales; fp32 gives the same scales either way
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        info = run_tune(TuneOptions(model=str(smollm2), out=tmp_path / "one.safetensors", progress=False, **args))
    finally:
        torch.set_num_threads(threads)
    one = scales.load(tmp_path / "one.safetensors")
    assert not np.allclose(one.values, 1.0) and "processes" not in one.metadata
    for extra in ([], ["--fsdp"]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = tmp_path / f"two{''.join(extra)}.safetensors"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
               "-m", "sealgguf", "-q", "tune", str(smollm2), "-o", str(out), "--task", "passkey",
               "--granularity", "head", "--length", "256", "--samples", "4", "--val-samples", "1", "--lr", "5e-2",
               "--keep", "1", "--grad-accum", "2", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        two = scales.load(out)
        assert two.metadata["processes"] == "2" and (two.metadata.get("fsdp") == "true") == bool(extra)
        np.testing.assert_allclose(two.values, one.values, rtol=0, atol=2e-5)
        assert json.loads(two.metadata["loss_first"]) == pytest.approx(info["loss_first"], rel=1e-4)


def test_max_memory_option():
    """--max-memory is accelerate's max_memory: GPU indices as ints, sizes as given; it needs --device-map."""
    from sealgguf.cli import _max_memory, main

    assert _max_memory("0=20GiB,1=30GiB,cpu=64GiB") == {0: "20GiB", 1: "30GiB", "cpu": "64GiB"}
    for bad in ("20GiB", "gpu=1GiB", "0=", "0=1GiB,,cpu=2GiB"):
        with pytest.raises(argparse.ArgumentTypeError, match="DEVICE=SIZE"):
            _max_memory(bad)
    with pytest.raises(SystemExit) as e:
        main(["tune", "smollm2", "-o", "x.safetensors", "--max-memory", "0"])
    assert e.value.code == 2


def test_max_memory_needs_a_device_map(smollm2, tmp_path):
    with pytest.raises(SealError, match="add --device-map auto"):
        _tiny_tune(smollm2, tmp_path / "x.safetensors", max_memory={"cpu": "1GiB"})
    assert not (tmp_path / "x.safetensors").exists()


def test_fsdp_needs_processes_and_even_steps(smollm2, tmp_path, monkeypatch):
    from sealgguf.tune import TuneOptions, check_fsdp

    opt = TuneOptions(model=str(smollm2), out=tmp_path / "s.safetensors", fsdp=True, samples=4, grad_accum=2, lr=1e-2)
    with pytest.raises(SealError, match="one process"):
        check_fsdp(opt)
    monkeypatch.setattr("sealgguf.tune.trainer.world", lambda: (2, 0))
    check_fsdp(opt)
    for change, match in ((dict(grad_accum=3), "multiple"), (dict(samples=5), "multiple"), (dict(lr="auto"), "fixed"),
                          (dict(device_map="auto"), "one of them")):
        with pytest.raises(SealError, match=match):
            check_fsdp(TuneOptions(**{**opt.__dict__, **change}))

