"""The CI gate on an eval report: per-cell thresholds, one reason per failing cell, JUnit XML.

    --min-accuracy A   every cell of every model scores at least A
    --max-drop D       the --compare model scores at most D below the first model, per cell

A cell is one (task, length). Exit status 1 when any check fails (sealgguf.errors.GateFailed).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass

from sealgguf.errors import SealError


@dataclass(frozen=True)
class Gate:
    min_accuracy: float | None = None
    max_drop: float | None = None

    def __post_init__(self) -> None:
        for name, v in (("--min-accuracy", self.min_accuracy), ("--max-drop", self.max_drop)):
            if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise SealError(f"{name} must be a fraction in [0, 1], got {v}")

    @property
    def active(self) -> bool:
        return self.min_accuracy is not None or self.max_drop is not None

    def check_models(self, n_models: int) -> None:
        """Refuse a gate the models cannot answer (before any evaluation runs)."""
        if self.max_drop is not None and n_models != 2:
            raise SealError("--max-drop compares two models: give the new one with --compare")


@dataclass(frozen=True)
class Check:
    """One gate check of one cell: what was checked, on which model, and whether it passed."""
    name: str        # "min-accuracy" or "max-drop"
    task: str
    length: int
    model: str
    value: float     # the accuracy, or the drop (first - compared)
    limit: float
    passed: bool

    @property
    def reason(self) -> str:
        if self.name == "min-accuracy":
            return (f"{self.task} @{self.length}: {self.model} accuracy {self.value:.2f} < --min-accuracy "
                    f"{self.limit:.2f}")
        return f"{self.task} @{self.length}: {self.model} drops {self.value:.2f} > --max-drop {self.limit:.2f}"


def run_gate(gate: Gate, rows: list[dict], labels: list[str]) -> list[Check]:
    """Every check the gate asks for, over the report's cells (see sealgguf.report.cells)."""
    gate.check_models(len(labels))
    checks = []
    for row in rows:
        if gate.min_accuracy is not None:
            for lab in labels:
                acc = row["accuracy"][lab]
                checks.append(Check("min-accuracy", row["task"], row["length"], lab, acc, gate.min_accuracy,
                                    acc >= gate.min_accuracy - 1e-12))
        if gate.max_drop is not None:
            drop = row["accuracy"][labels[0]] - row["accuracy"][labels[1]]
            checks.append(Check("max-drop", row["task"], row["length"], labels[1], drop, gate.max_drop,
                                drop <= gate.max_drop + 1e-12))
    return checks


def gate_record(gate: Gate, checks: list[Check]) -> dict:
    return {**asdict(gate), "passed": all(c.passed for c in checks),
            "checks": [{**asdict(c), "reason": None if c.passed else c.reason} for c in checks]}


def junit_xml(rows: list[dict], labels: list[str], checks: list[Check]) -> str:
    """JUnit XML: one test case per cell and model (accuracy in its output), plus one per gate check."""
    suite = ET.Element("testsuite", name="sealgguf.eval")
    n_fail = 0
    for row in rows:
        for lab in labels:
            case = ET.SubElement(suite, "testcase", classname=f"sealgguf.eval.{lab}",
                                 name=f"{row['task']}@{row['length']}")
            ET.SubElement(case, "system-out").text = f"accuracy {row['accuracy'][lab]:.4f} over {row['n']} samples"
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=f"sealgguf.gate.{c.name}",
                             name=f"{c.task}@{c.length} {c.model}")
        if not c.passed:
            n_fail += 1
            ET.SubElement(case, "failure", message=c.reason, type=c.name).text = c.reason
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(n_fail))
    suite.set("errors", "0")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
