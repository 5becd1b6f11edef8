"""The CI gate: thresholds per cell, exit status 1 with one line per failing cell, the versioned JSON
report and JUnit XML."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from sealgguf.errors import SealError
from sealgguf.report import SCHEMA, cells, json_document
from sealgguf.report.gate import Gate, gate_record, junit_xml, run_gate


def _report(acc_a, acc_b):
    """A two-model report with one cell per entry: (task, length) -> per-sample correctness."""
    records = []
    for (task, length), (a, b) in {("lines", 1024): (acc_a, acc_b), ("niah", 2048): ([True] * 4, [True] * 4)}.items():
        for i, (x, y) in enumerate(zip(a, b)):
            records.append({"task": task, "length": length, "depth": None, "seed": i, "n_tokens": length,
                            "expected": "1", "output": {"base": "1", "new": "1"}, "correct": {"base": x, "new": y}})
    return {"models": ["base", "new"], "paths": ["b.gguf", "n.gguf"], "tasks": ["lines", "niah"],
            "lengths": [1024, 2048], "depths": None, "samples": 4, "seed": 0, "rope": {"kind": "none", "factor": 1.0},
            "records": records, "timing": {}}


def test_min_accuracy_names_each_failing_cell_and_model():
    rep = _report([True, True, False, False], [True, False, False, False])
    checks = run_gate(Gate(min_accuracy=0.5), cells(rep), rep["models"])
    failed = [c.reason for c in checks if not c.passed]
    assert failed == ["lines @1024: new accuracy 0.25 < --min-accuracy 0.50"]
    assert len(checks) == 4  # 2 cells x 2 models


def test_max_drop_compares_per_cell():
    rep = _report([True, True, True, False], [True, False, False, False])
    checks = run_gate(Gate(max_drop=0.25), cells(rep), rep["models"])
    assert [c.reason for c in checks if not c.passed] == ["lines @1024: new drops 0.50 > --max-drop 0.25"]
    assert all(c.passed for c in run_gate(Gate(max_drop=0.5), cells(rep), rep["models"]))


def test_gate_options_are_checked():
    with pytest.raises(SealError, match="--min-accuracy"):
        Gate(min_accuracy=1.2)
    with pytest.raises(SealError, match="--max-drop"):
        Gate(max_drop=float("nan"))
    rep = _report([True], [True])
    with pytest.raises(SealError, match="--compare"):
        run_gate(Gate(max_drop=0.1), cells(rep), ["base"])


def test_json_document_is_versioned_and_junit_parses():
    rep = _report([True, True, False, False], [True, False, False, False])
    checks = run_gate(Gate(0.5, 0.0), cells(rep), rep["models"])
    rep["gate"] = gate_record(Gate(0.5, 0.0), checks)
    doc = json.loads(json.dumps(json_document(rep)))
    assert doc["schema"] == SCHEMA == "sealgguf.eval/1"
    for key in ("sealgguf_version", "models", "paths", "tasks", "lengths", "samples", "seed", "rope", "records",
                "cells", "gate"):
        assert key in doc, key
    assert doc["gate"]["passed"] is False and doc["gate"]["min_accuracy"] == 0.5
    root = ET.fromstring(junit_xml(cells(rep), rep["models"], checks))
    suite = root.find("testsuite")
    assert int(suite.get("failures")) == 2 and int(suite.get("tests")) == 4 + len(checks)
    msgs = [f.get("message") for f in suite.iter("failure")]
    assert sorted(msgs) == ["lines @1024: new accuracy 0.25 < --min-accuracy 0.50",
                            "lines @1024: new drops 0.25 > --max-drop 0.00"]


@pytest.mark.slow
def test_gate_on_real_models_exit_codes(smollm2, tmp_path):
    """A file whose attention is switched off (all scales 0) must fail --max-drop against the original."""
    from sealgguf import scales
    from sealgguf.fold import fold_file

    scales.save(tmp_path / "zero.safetensors", np.zeros((30, 9), np.float32), {})
    fold_file(smollm2, tmp_path / "zero.safetensors", tmp_path / "broken.gguf")
    base = ["eval", smollm2, "--task", "passkey", "--lengths", "256", "--samples", "3", "--threads", "2"]
    r = subprocess.run([sys.executable, "-m", "sealgguf", *map(str, base), "--compare", tmp_path / "broken.gguf",
                        "--max-drop", "0", "--json", tmp_path / "r.json", "--junit", tmp_path / "j.xml"],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("sealgguf: error: gate failed in 1 check(s)")
    assert lines[1].startswith("passkey @256: broken.gguf drops") and "> --max-drop 0.00" in lines[1]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["schema"] == "sealgguf.eval/1" and doc["gate"]["passed"] is False
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite").get("failures") == "1"
    r = subprocess.run([sys.executable, "-m", "sealgguf", *map(str, base), "--min-accuracy", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "gate passed: 1 check(s)" in r.stdout, r.stderr
