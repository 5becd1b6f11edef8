"""tools/reproduce.py's bookkeeping: learning-rate choice, paired tables, README rewriting (no models run)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import reproduce  # noqa: E402
import results_report  # noqa: E402


def _eval(work: Path, model: str, task: str, correct: list[bool], length: int = 1024,
          rope: tuple[str, float] = ("none", 1.0)) -> None:
    recs = [{"seed": 900_000 + i, "n_tokens": 1000, "expected": "x", "output": "y", "correct": c}
            for i, c in enumerate(correct)]
    e = {"model": model, "task": task, "length": length, "n": len(recs), "rope": list(rope), "records": recs,
         "accuracy": sum(correct) / len(correct), "mean_tokens": 1000, "seconds_total": 10.0}
    suffix = f"-{rope[0]}{rope[1]:g}" if rope[0] != "none" else ""
    (work / "eval" / f"{model}__{task}-{length}-n{len(recs)}{suffix}.json").write_text(json.dumps(e))


def _tune(work: Path, name: str, lr: float, val_loss_after: float) -> dict:
    t = {"name": name, "model": "smollm2", "tasks": ["lines"], "granularity": "head", "length": 1024,
         "samples": 50, "lr": lr, "rope": ["none", 0.0], "losses": [1.0],
         "tune": {"seconds": 300.0, "val_loss_before": 2.0, "val_loss_after": val_loss_after,
                  "val_exact_match_before": 0.1, "val_exact_match_after": 0.5, "scale_min": 0.5, "scale_max": 1.5},
         "knowledge": {"tokens": 511, "perplexity": {"base": 20.0, "sealed": 21.0}, "mean_kl": 0.01},
         "seconds_total": 320.0}
    (work / "tune" / f"{name}.json").write_text(json.dumps(t))
    return t


@pytest.fixture
def work(tmp_path):
    for sub in ("eval", "tune"):
        (tmp_path / sub).mkdir()
    return tmp_path


def test_lr_is_chosen_by_validation_loss_not_test_accuracy(work):
    runs = [_tune(work, "a", 1e-2, 0.9), _tune(work, "b", 2e-2, 0.4), _tune(work, "c", 5e-2, 0.6)]
    assert reproduce.best_lr(runs) == 2e-2


def test_tables_pair_by_seed_and_rewrite_readme(work, tmp_path):
    _tune(work, "run", 1e-2, 0.5)
    _eval(work, "smollm2", "lines", [True, False, False, False])
    _eval(work, "run", "lines", [True, True, True, False])
    _eval(work, "smollm2", "passkey", [True, True, True, True])
    _eval(work, "run", "passkey", [True, True, True, False])
    _eval(work, "smollm2", "lines", [False, False, False, False], length=8000)  # same task, longer: transfer
    _eval(work, "run", "lines", [True, True, False, False], length=8000)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results_report.BEGIN}\nold\n{results_report.END}\noutro\n")
    text = results_report.write_report(work, None, tmp_path / "docs", readme, "python tools/reproduce.py")

    tuned_row = next(line for line in text.splitlines() if line.startswith("| smollm2 | lines @1024"))
    assert "0.25 → 0.75 | +0.50" in tuned_row and "(+5.0%)" in tuned_row
    ood_row = next(line for line in text.splitlines() if line.startswith("| run | passkey @1024"))
    assert "1.00 → 0.75 | -0.25" in ood_row
    assert "| lines | 0.25 (4) |" in text  # baseline sweep cell
    ood, transfer = text.split("### Length transfer")
    assert "passkey @1024" in ood and "lines @8000" not in ood.split("### Out of domain")[1]
    assert "| run | lines @8000 | 4 | 0.00 → 0.50 | +0.50" in transfer
    assert "smollm2 lines @8000: 0.00 → 0.50 (n 4, McNemar p 0.5, run, tuned at 1024) | yes (any gain is 2× a zero " \
        "baseline) |" in text  # the longest in-domain cell
    assert "worst cell per set of scales: run -0.25 (passkey @1024, 1 cells) | no: 0 of 1 sets |" in text
    assert "| short-context perplexity within +2% | 0 of 1 runs | no |" in text
    body = readme.read_text()
    assert body.startswith("intro\n") and body.endswith("outro\n") and "old" not in body and tuned_row in body
    assert (tmp_path / "docs" / "baseline_sweep.png").stat().st_size > 0


def test_readme_without_markers_is_refused(work, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="markers"):
        results_report.write_report(work, None, tmp_path / "docs", readme, "cmd")
    assert readme.read_text() == "no markers here\n"


def test_a_cached_eval_with_more_samples_serves_fewer(work):
    _eval(work, "smollm2", "lines", [True, False, True], length=2048)
    r = reproduce.Runner(work, reproduce.QUICK, threads=None)
    assert r.eval("smollm2", "lines", 2048, 2)["n"] == 3  # no model is run: the n=3 file holds the first 2 seeds


def test_extension_cells_are_scored_against_the_native_length(work, tmp_path):
    _tune(work, "run", 1e-2, 0.5)
    yarn = ("yarn", 2.0)
    _eval(work, "smollm2", "niah", [True, True, True, True, True], length=8000)  # native reference: 1.00
    _eval(work, "smollm2", "niah", [True, False, False, False, True], length=16000, rope=yarn)
    _eval(work, "run", "niah", [True, True, True, True, False], length=16000, rope=yarn)
    _eval(work, "smollm2", "lines", [True, False], length=1024, rope=yarn)  # within the window: not extension
    text = results_report.write_report(work, None, tmp_path / "docs", None, "cmd")

    assert "lines @1024 | yarn" not in text and "niah @16000" not in text.split("### Out of domain")[1].split("### Context extension")[0]
    assert "Native reference (no scaling, longest length within the window): smollm2 niah @8000 1.00 (n 5)." in text
    assert "| none (baseline) | niah @16000 | yarn×2 | 5 | 0.40 | — | 40% |" in text
    assert "| run (tuned without scaling at 1024) | niah @16000 | yarn×2 | 5 | 0.80 | +0.40" in text
    assert ("| 2× extension: SEAL recovers ≥ 80% of native accuracy | niah @16000 yarn×2: 0.80 (n 5, run) against "
            "1.00 @8000 unscaled = 80%; without SEAL 0.40 = 40% | yes |") in text


def test_a_run_whose_gguf_is_missing_is_folded_again_from_its_scales(tmp_path):
    """A cache rebuilt from docs/results/raw has each run's scales and record but not its GGUF."""
    import numpy as np

    from sealgguf import scales
    from sealgguf.gguf_file import open_gguf

    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "run.json").write_text(json.dumps({"name": "run", "model": "smollm2"}))
    scales.save(tmp_path / "tune" / "run.scales.safetensors", np.full((30, 9), 1.1, np.float32), {})
    r = reproduce.Runner(tmp_path, reproduce.QUICK, threads=None)
    path = r.model_path("run")
    assert path == tmp_path / "tune" / "run.gguf" and path.is_file()
    assert open_gguf(path).get("seal.fold.exact") is not None
    assert r.model_path("other") == tmp_path / "tune" / "other.gguf" and not (tmp_path / "tune" / "other.gguf").exists()


def test_a_run_scored_at_another_length_is_paired_there(work, tmp_path):
    """A run tuned elsewhere at one length and scored at another (the cuda step: tuned at 8192 on a GPU, scored
    at 8000) takes its row from the cell it was scored on, and says where it was tuned."""
    t = _tune(work, "gpu-run", 2e-2, 0.2)
    t.update(length=8192, eval_length=8000, dtype="bf16", tuned_on="cuda")
    (work / "tune" / "gpu-run.json").write_text(json.dumps(t))
    _eval(work, "smollm2", "lines", [False, False, False, True], length=8000)
    _eval(work, "gpu-run", "lines", [True, True, False, True], length=8000)
    text = results_report.write_report(work, None, tmp_path / "docs", None, "python tools/reproduce.py")
    row = next(line for line in text.splitlines() if line.startswith("| smollm2 | lines @8192 (scored @8000)"))
    assert "| H bf16 cuda |" in row and "0.25 → 0.75 | +0.50" in row
