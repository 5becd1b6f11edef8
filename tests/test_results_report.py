"""tools/reproduce.py's bookkeeping: learning-rate choice, paired tables, README rewriting (no models run)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import reproduce  # noqa: E402
import results_report  # noqa: E402


def _eval(work: Path, model: str, task: str, correct: list[bool]) -> None:
    recs = [{"seed": 900_000 + i, "n_tokens": 1000, "expected": "x", "output": "y", "correct": c}
            for i, c in enumerate(correct)]
    e = {"model": model, "task": task, "length": 1024, "n": len(recs), "rope": ["none", 1.0], "records": recs,
         "accuracy": sum(correct) / len(correct), "mean_tokens": 1000, "seconds_total": 10.0}
    (work / "eval" / f"{model}__{task}.json").write_text(json.dumps(e))


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
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results_report.BEGIN}\nold\n{results_report.END}\noutro\n")
    text = results_report.write_report(work, None, tmp_path / "docs", readme, "python tools/reproduce.py")

    tuned_row = next(line for line in text.splitlines() if line.startswith("| smollm2 | lines @1024"))
    assert "0.25 → 0.75 | +0.50" in tuned_row and "(+5.0%)" in tuned_row
    ood_row = next(line for line in text.splitlines() if line.startswith("| run | passkey @1024"))
    assert "1.00 → 0.75 | -0.25" in ood_row
    assert "| lines | 0.25 (4) |" in text  # baseline sweep cell
    assert "0.25 → 0.75 (run) | yes, not at the native length |" in text
    assert "worst of 1 cells: -0.25 (run on passkey @1024) | no |" in text
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
