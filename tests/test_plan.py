"""The memory and time plan: read from the header, checked against the loaded model, and refusing with a fix."""

import pytest

from sealgguf.errors import SealError
from sealgguf.tune.plan import GIB, Rates, check, make_plan, shape_from_gguf

RATES = Rates(matmul=1e11, attention=1e10)  # fixed: no measurement in these tests


def test_shape_from_the_header_matches_the_loaded_model(smollm2, hf_smollm2):
    s = shape_from_gguf(smollm2)
    cfg = hf_smollm2.model.config
    assert (s.n_layer, s.hidden, s.ffn, s.vocab) == (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
                                                     cfg.vocab_size)
    assert s.n_params == sum(p.numel() for p in hf_smollm2.model.parameters())
    plan = make_plan(s, 1024, "fp32", "cpu", checkpointing=True, keep=False, rates=RATES)
    assert plan.parts["weights"] == 4 * s.n_params and plan.parts["logits"] == 0


def test_gemma_sliding_window_and_keep_logits(gemma3):
    s = shape_from_gguf(gemma3)
    assert s.sliding_window and s.vocab > 200_000
    short = make_plan(s, 256, "bf16", "cpu", True, keep=True, rates=RATES)
    long = make_plan(s, 32768, "bf16", "cpu", True, keep=True, rates=RATES)
    assert long.parts["attention masks"] == 2 * 32768**2  # two masks once the window is shorter than the prompt
    assert short.parts["logits"] == long.parts["logits"] > 0.9 * GIB  # 4 x 256 x 262k fp32 on the anchor window
    assert long.seconds_per_step > 100 * short.seconds_per_step  # attention grows with the square


@pytest.mark.parametrize("free,dtype,ckpt,fix", [(0.3, "fp32", True, "--dtype bf16"),
                                                 (1.0, "fp32", False, "activation checkpointing"),
                                                 (1.0, "fp32", True, "a shorter --length")])
def test_refuses_with_the_fix(smollm2, monkeypatch, free, dtype, ckpt, fix):
    import sealgguf.tune.plan as plan_mod

    monkeypatch.setattr(plan_mod, "available_bytes", lambda device: int(free * GIB))
    plan = make_plan(shape_from_gguf(smollm2), 16384, dtype, "cpu", ckpt, keep=True, rates=RATES)
    with pytest.raises(SealError, match=fix):
        check(plan, "smollm2")


def test_dry_run_prints_the_plan_and_loads_nothing(capsys, monkeypatch):
    import sealgguf.tune.model as model
    from sealgguf.cli import main

    monkeypatch.setattr(model, "load", lambda *a, **k: pytest.fail("--dry-run loaded the model"))
    assert main(["-q", "tune", "smollm2", "-o", "/nonexistent/x.safetensors", "--length", "4096", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4096 tokens" in out and "weights" in out and "peak" in out and "time per step" in out


@pytest.mark.parametrize("free_gib,expect", [(64.0, False), (1.0, True)])
def test_checkpointing_auto_is_off_only_where_the_plan_fits_without_it(smollm2, monkeypatch, free_gib, expect):
    import sealgguf.tune.plan as plan_mod

    monkeypatch.setattr(plan_mod, "available_bytes", lambda device: int(free_gib * GIB))
    s = shape_from_gguf(smollm2)
    off = make_plan(s, 4096, "bf16", "cpu", False, keep=True, rates=RATES)
    assert off.peak * plan_mod.NO_CHECKPOINT_HEADROOM < 64 * GIB and off.peak > 1 * GIB  # the two cases straddle it
    auto = plan_mod.plan_checkpointing(s, 4096, "bf16", "cpu", None, keep=True, rates=RATES)
    assert auto.checkpointing is expect
    forced = plan_mod.plan_checkpointing(s, 4096, "bf16", "cpu", False, keep=True, rates=RATES)
    assert forced.checkpointing is False  # an explicit choice is kept (and checked by check())


def test_dry_run_says_which_checkpointing_auto_chose(capsys):
    from sealgguf.cli import main

    for flag in ("on", "off"):
        assert main(["-q", "tune", "smollm2", "-o", "/nonexistent/x.safetensors", "--length", "1024",
                     "--checkpointing", flag, "--dry-run"]) == 0
        assert f"activation checkpointing {flag}" in capsys.readouterr().out


def test_time_counts_attention_at_its_own_rate(smollm2):
    from sealgguf.tune.plan import step_flops

    s = shape_from_gguf(smollm2)
    short, long = (make_plan(s, n, "bf16", "cpu", False, keep=False, rates=RATES) for n in (1024, 8192))
    for plan in (short, long):
        f = step_flops(s, plan.length, False)
        assert plan.seconds_per_step == pytest.approx(f["linear"] / 1e11 + f["attention"] / 1e10)
    share = [p.flops["attention"] / p.rates.attention / p.seconds_per_step for p in (short, long)]
    assert share[1] > share[0] and share[1] > 0.5  # attention's share grows with the length


def test_measured_rates_are_rates(smollm2):
    from sealgguf.tune.plan import measure_rates

    r = measure_rates("cpu", "fp32", shape_from_gguf(smollm2), n=256, tokens=256)
    assert 1e8 < r.matmul < 1e15 and 1e8 < r.attention < 1e15
