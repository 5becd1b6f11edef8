"""Before/after report: a table (stdout and Markdown), JSON with every sample's output, and plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sealgguf.eval.stats import Paired, paired, wilson
from sealgguf.fsutil import atomic_output


def cells(report: dict) -> list[dict]:
    """One row per (task, length): accuracy per model and, for two models, the paired comparison."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in report["records"]:
        groups[(r["task"], r["length"])].append(r)
    rows = []
    labels = report["models"]
    for (task, length), recs in sorted(groups.items()):
        row = {"task": task, "length": length, "n": len(recs),
               "mean_tokens": round(sum(r["n_tokens"] for r in recs) / len(recs)),
               "accuracy": {lab: sum(r["correct"][lab] for r in recs) / len(recs) for lab in labels},
               "ci95": {lab: list(wilson(sum(r["correct"][lab] for r in recs), len(recs))) for lab in labels}}
        if len(labels) == 2:
            row["paired"] = paired([r["correct"][labels[0]] for r in recs],
                                   [r["correct"][labels[1]] for r in recs]).__dict__
        rows.append(row)
    return rows


def table(report: dict) -> str:
    labels = report["models"]
    head = ["task", "length", "tokens", "n"] + [f"acc {lab}" for lab in labels]
    if len(labels) == 2:
        head += ["diff", "95% CI", "McNemar p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in cells(report):
        vals = [row["task"], str(row["length"]), str(row["mean_tokens"]), str(row["n"])]
        vals += [f"{row['accuracy'][lab]:.2f}" for lab in labels]
        if "paired" in row:
            p = Paired(**row["paired"])
            vals += [f"{p.diff:+.2f}", f"[{p.ci_low:+.2f}, {p.ci_high:+.2f}]", f"{p.p_mcnemar:.3f}"]
        lines.append("| " + " | ".join(vals) + " |")
    k = report.get("knowledge")
    if k:
        ppl = ", ".join(f"{lab} {v:.3f}" for lab, v in k["perplexity"].items())
        lines.append(f"\nperplexity over {k['tokens']} essay tokens: {ppl}")
        if "mean_kl" in k:
            lines.append(f"mean KL(baseline || other) per token: {k['mean_kl']:.5f} nats")
    return "\n".join(lines)


# The eval report's JSON layout (docs/eval-report.md). Bump the number when a documented field changes
# meaning or disappears; adding a field keeps it.
SCHEMA = "sealgguf.eval/1"


def json_document(report: dict) -> dict:
    """The eval report as written to --json: schema tag first, then the run, the cells and every sample."""
    from sealgguf import __version__

    return {"schema": SCHEMA, "sealgguf_version": __version__, **report, "cells": cells(report)}


def write_json(report: dict, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(json_document(report), indent=1, default=str))


def plot(report: dict, path: str | Path) -> None:
    """Accuracy vs length per task (one line per model, 95% Wilson bands); with a single length, bars with
    95% intervals instead; NIAH length x depth heatmaps when depths vary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, rows = report["models"], cells(report)
    tasks = sorted({r["task"] for r in rows})
    heat = report.get("depths") and any(t == "niah" for t in tasks)
    ncols = len(tasks) + (len(labels) if heat else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_rows = [r for r in rows if r["task"] == task]
        if len(task_rows) == 1:  # one cell: bars with their intervals read better than two dots on a log axis
            row = task_rows[0]
            acc = [row["accuracy"][lab] for lab in labels]
            err = [[a - row["ci95"][lab][0] for a, lab in zip(acc, labels)],
                   [row["ci95"][lab][1] - a for a, lab in zip(acc, labels)]]
            ax.bar(range(len(labels)), acc, yerr=err, capsize=6, color=[f"C{i}" for i in range(len(labels))])
            for i, a in enumerate(acc):
                ax.text(i, a + 0.02, f"{a:.2f}", ha="center", va="bottom", fontsize=9)
            ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=10)
            ax.set(title=f"{task} at {row['length']} tokens (n={row['n']}, 95% CI)", ylabel="accuracy",
                   ylim=(0, 1.1))
            ax.grid(alpha=0.3, axis="y")
            continue
        for i, lab in enumerate(labels):
            x = [r["length"] for r in task_rows]
            ax.plot(x, [r["accuracy"][lab] for r in task_rows], marker="o", label=lab, color=f"C{i}")
            ax.fill_between(x, [r["ci95"][lab][0] for r in task_rows], [r["ci95"][lab][1] for r in task_rows],
                            alpha=0.15, color=f"C{i}")
        ax.set(title=task, xlabel="prompt length (tokens)", ylabel="accuracy", ylim=(-0.03, 1.03))
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if heat:
        import numpy as np

        lengths, depths = report["lengths"], report["depths"]
        for ax, lab in zip(axes[0][len(tasks):], labels):
            grid = np.zeros((len(depths), len(lengths)))
            for i, d in enumerate(depths):
                for j, n in enumerate(lengths):
                    recs = [r for r in report["records"] if r["task"] == "niah" and r["depth"] == d and r["length"] == n]
                    grid[i, j] = sum(r["correct"][lab] for r in recs) / max(1, len(recs))
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set(title=f"niah: {lab}", xlabel="length", ylabel="needle depth",
                   xticks=range(len(lengths)), xticklabels=lengths, yticks=range(len(depths)),
                   yticklabels=[f"{d:.2f}" for d in depths])
        fig.colorbar(im, ax=axes[0][-1])
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_markdown(report: dict, path: str | Path, header: str = "") -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(header + table(report) + "\n")
