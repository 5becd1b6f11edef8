"""`sealgguf heads`: single-head ablation (exact, batched per layer) and its gradient estimate."""

import json

import numpy as np
import pytest
import torch

from sealgguf.tune.data import make_examples
from sealgguf.tune.model import SealScales, decoder_layers
from sealgguf.tune.trainer import answer_loss


def test_batched_ablation_equals_one_head_at_a_time(hf_smollm2):
    """The batched ablation (layers below replayed from the unablated run) gives, for each head, the loss of the
    model with that head's SEAL-H scale set to 0 (one full unbatched forward per head)."""
    from sealgguf.heads import ablate

    lm = hf_smollm2
    ex = make_examples(["lines"], 1, 256, lm.encoder, "train", seed=1)[0]
    got = ablate(lm.model, lm.layout, [ex], "cpu")["delta_loss"]
    assert got.shape == (lm.layout.n_layer, lm.layout.n_head)
    with torch.no_grad():
        base = answer_loss(lm.model, ex, "cpu")[0].item()
        seal = SealScales(lm.layout, "head").attach(lm.model)
        try:
            for layer, h in ((0, 2), (3, 0), (3, 8), (lm.layout.n_layer - 1, 4)):
                seal.scales.fill_(1.0)
                seal.scales[layer, h] = 0.0
                want = answer_loss(lm.model, ex, "cpu")[0].item() - base
                assert got[layer, h] == pytest.approx(want, abs=2e-4), (layer, h)
        finally:
            seal.detach_hooks()
    assert np.abs(got).max() > 1e-3  # removing heads changes something
    assert all("forward" not in vars(layer) for layer in decoder_layers(lm.model))  # replays are undone


def test_gradient_estimate_is_minus_the_scale_gradient(hf_smollm2):
    from sealgguf.heads import gradient

    lm = hf_smollm2
    ex = make_examples(["lines"], 1, 256, lm.encoder, "train", seed=1)[0]
    est = gradient(lm.model, lm.layout, [ex], "cpu")["delta_loss"]
    seal = SealScales(lm.layout, "head").attach(lm.model)
    try:
        answer_loss(lm.model, ex, "cpu")[0].backward()
        np.testing.assert_allclose(est, -seal.scales.grad.double().numpy(), rtol=1e-5, atol=1e-8)
    finally:
        seal.detach_hooks()
    assert all(p.grad is None for p in lm.model.parameters())


def test_spearman():
    from sealgguf.eval.stats import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [5, 5, 6, 9]) == pytest.approx(1.0)  # ties
    assert spearman([1, 2, 3], [7, 7, 7]) != spearman([1, 2, 3], [7, 7, 7])  # nan: no ranking to compare


@pytest.mark.slow
def test_heads_cli_json_plot_and_scales(smollm2, tmp_path):
    """The command line end to end on a tiny run, with learned scales beside the map."""
    from sealgguf.cli import main
    from sealgguf.scales import save

    s = np.ones((30, 9), dtype=np.float32)
    s[16, 0] = 0.5
    save(tmp_path / "s.safetensors", s, {})
    out, png = tmp_path / "h.json", tmp_path / "h.png"
    assert main(["-q", "heads", "smollm2", "--length", "256", "--samples", "1", "--method", "grad",
                 "--scales", str(tmp_path / "s.safetensors"), "-o", str(out), "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    assert np.asarray(r["delta_loss"]).shape == (30, 9) and r["learned_scales"][16][0] == 0.5
    assert -1 <= r["spearman_scales_vs_delta_loss"] <= 1
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["-q", "heads", "smollm2", "--apply-scales", "-o", str(out)]) == 2  # needs --scales
    assert main(["-q", "heads", "smollm2"]) == 2  # nothing to write


def test_too_short_a_length_is_a_usage_error(capsys):
    from sealgguf.cli import main

    assert main(["-q", "heads", "smollm2", "--length", "64", "-o", "/tmp/never.json"]) == 2
    assert "--length 64: too short for task lines" in capsys.readouterr().err
