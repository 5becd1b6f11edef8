"""Turn tools/reproduce.py's cache into the Results section: Markdown tables and PNG plots.

Only what is in the cache is reported; a cell that was not run is said to be not run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from sealgguf.eval.stats import paired

BASE_MODELS = ("smollm2", "gemma3")
NATIVE = {"smollm2": 8192, "gemma3": 32768}  # context windows (GGUF context_length)
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def load_cache(work: Path) -> tuple[list[dict], list[dict]]:
    evals = [json.loads(p.read_text()) for p in sorted((work / "eval").glob("*.json"))]
    tunes = [json.loads(p.read_text()) for p in sorted((work / "tune").glob("*.json"))]
    for record in evals + tunes:  # Self-Extend is one more way to extend: the tables key extensions on "rope"
        group, window = record.get("self_extend") or (1, 0)
        if group > 1:
            record["rope"] = [f"self-extend W{window}", float(group)]
    return evals, tunes


def find_eval(evals: list[dict], model: str, task: str, length: int, rope=("none", 1.0)) -> dict | None:
    """The cached eval with the most samples for this model and cell."""
    hits = [e for e in evals if e["model"] == model and e["task"] == task and e["length"] == length
            and tuple(e["rope"]) == tuple(rope)]
    return max(hits, key=lambda e: e["n"]) if hits else None


def compare(base: dict, cand: dict):
    """Paired comparison on the seeds both evals share."""
    a = {r["seed"]: r["correct"] for r in base["records"]}
    b = {r["seed"]: r["correct"] for r in cand["records"]}
    seeds = sorted(set(a) & set(b))
    return paired([a[s] for s in seeds], [b[s] for s in seeds])


def base_of(run: dict) -> str:
    return run["model"]


def eval_cell(run: dict) -> tuple[str, int, tuple]:
    task = run["tasks"][0] if len(run["tasks"]) == 1 else "lines"
    rope = ("none", 1.0) if run["rope"][0] == "none" else (run["rope"][0], float(run["rope"][1]))
    return task, run.get("eval_length", run["length"]), rope  # eval_length: a run scored at another length


def fmt_cmp(p) -> str:
    return f"{p.acc_a:.2f} → {p.acc_b:.2f} | {p.diff:+.2f} [{p.ci_low:+.2f}, {p.ci_high:+.2f}] | {p.p_mcnemar:.3g}"


def sweep_table(evals: list[dict]) -> str:
    out = []
    for model in BASE_MODELS:
        cells = [e for e in evals if e["model"] == model and e["rope"][0] == "none"]
        if not cells:
            continue
        lengths = sorted({e["length"] for e in cells})
        out += [f"**{model}** (accuracy, n per cell in parentheses)\n",
                "| task | " + " | ".join(str(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for task in sorted({e["task"] for e in cells}):
            row = []
            for n_tok in lengths:
                e = find_eval(cells, model, task, n_tok)
                row.append(f"{e['accuracy']:.2f} ({e['n']})" if e else "")
            out.append(f"| {task} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def tuned_table(evals: list[dict], tunes: list[dict]) -> str:
    head = ("| model | tuned on | SEAL | lr | keep | samples | tune s | val loss | val EM | scales | test acc base → sealed "
            "| diff [95% CI] | McNemar p | ppl base → sealed | KL nats/tok |")
    out = [head, "|" + "---|" * 15]
    for run in sorted(tunes, key=lambda r: (r["model"], r["length"], r["granularity"], "+".join(r["tasks"]),
                                            r["samples"], r.get("keep", 0), r["lr"])):
        t, k = run["tune"], run["knowledge"]
        task, length, rope = eval_cell(run)
        base, cand = find_eval(evals, base_of(run), task, length, rope), find_eval(evals, run["name"], task, length, rope)
        cmp_ = fmt_cmp(compare(base, cand)) if base and cand else "not run | | "
        ppl_b, ppl_s = k["perplexity"]["base"], k["perplexity"]["sealed"]
        rope_txt = "" if rope[0] == "none" else f" {rope[0]}×{rope[1]:g}"
        kind = (run["granularity"][0].upper() + (" exact" if run.get("exact_fold") else "")  # exact: --exact-fold
                + (f" {run['dtype']}" if run.get("dtype", "fp32") != "fp32" else "")  # runs without one are fp32
                + (f" {run['tuned_on']}" if run.get("tuned_on", "cpu") != "cpu" else "")  # tuned elsewhere
                + (f", {t['epochs']} epochs" if t.get("epochs", 1) > 1 else ""))
        scored = f" (scored @{length})" if length != run["length"] else ""
        out.append(
            f"| {run['model']} | {'+'.join(run['tasks'])} @{run['length']}{rope_txt}{scored} | {kind} "
            f"| {run['lr']:g} | {run.get('keep', 0):g} | {run['samples']} | {t['seconds']:.0f} "
            f"| {t['val_loss_before']:.2f} → {t['val_loss_after']:.2f} "
            f"| {t['val_exact_match_before']:.2f} → {t['val_exact_match_after']:.2f} "
            f"| {t['scale_min']:.2f}–{t['scale_max']:.2f} | {cmp_} "
            f"| {ppl_b:.2f} → {ppl_s:.2f} ({100 * (ppl_s / ppl_b - 1):+.1f}%) | {k['mean_kl']:.3f} |")
    return "\n".join(out)


def other_cells(evals: list[dict], tunes: list[dict], same_task: bool) -> list[tuple[dict, dict, object]]:
    """(run, eval, paired comparison) for tuned models scored outside their tuning cell: on a task they were not
    tuned on (same_task False: out of domain) or on their task at another length (same_task True: transfer)."""
    names = {r["name"]: r for r in tunes}
    out = []
    for e in sorted(evals, key=lambda e: (e["model"], e["task"], e["length"])):
        run = names.get(e["model"])
        if (not run or e["rope"][0] != "none" or (e["task"], e["length"]) == eval_cell(run)[:2]
                or (e["task"] in run["tasks"]) != same_task):
            continue  # rope-scaled cells belong to the extension table
        base = find_eval(evals, base_of(run), e["task"], e["length"], tuple(e["rope"]))
        if base:
            out.append((run, e, compare(base, e)))
    return out


def other_table(evals: list[dict], tunes: list[dict], same_task: bool) -> str:
    out = ["| scales | cell | n | base → sealed | diff [95% CI] | McNemar p |", "|---|---|---|---|---|---|"]
    for run, e, p in other_cells(evals, tunes, same_task):
        out.append(f"| {run['name']} | {e['task']} @{e['length']} | {p.n} | {p.acc_a:.2f} → {p.acc_b:.2f} "
                   f"| {p.diff:+.2f} [{p.ci_low:+.2f}, {p.ci_high:+.2f}] | {p.p_mcnemar:.3g} |")
    return "\n".join(out) if len(out) > 2 else "not run"


def native_reference(evals: list[dict], model: str, task: str, window: int) -> dict | None:
    """The base model's eval of `task` at its longest length within (95% of) its native window, unscaled."""
    hits = [e for e in evals if e["model"] == model and e["task"] == task and e["rope"][0] == "none"
            and window * 0.95 <= e["length"] <= window]
    return max(hits, key=lambda e: (e["length"], e["n"])) if hits else None


def extend_cells(evals: list[dict], tunes: list[dict], native: dict[str, int]) -> list[tuple]:
    """(tuning run or None, eval, paired comparison with the same scaling without SEAL or None, native reference
    or None) for every eval under rope scaling beyond the model's native window."""
    names = {r["name"]: r for r in tunes}
    out = []
    for e in sorted((e for e in evals if e["rope"][0] != "none"), key=lambda e: (e["task"], e["rope"][0], e["model"])):
        run = names.get(e["model"])
        model = base_of(run) if run else e["model"]
        if e["length"] <= native.get(model, 0):
            continue  # e.g. the tuning cell of a run tuned under scaling: the tuned table shows it
        base = find_eval(evals, model, e["task"], e["length"], tuple(e["rope"])) if run else None
        ref = native_reference(evals, model, e["task"], native.get(model, 0))
        out.append((run, e, compare(base, e) if base else None, ref))
    return out


def extend_table(evals: list[dict], tunes: list[dict], native: dict[str, int]) -> str:
    cells = extend_cells(evals, tunes, native)
    if not cells:
        return "not run"
    refs = {id(ref): ref for *_, ref in cells if ref}.values()
    out = ["Native reference (no scaling, longest length within the window): "
           + "; ".join(f"{r['model']} {r['task']} @{r['length']} {r['accuracy']:.2f} (n {r['n']})" for r in refs)
           + ".", ""] if refs else []
    out += ["| scales | task @ length | rope | n | accuracy | vs same rope without SEAL [95% CI], McNemar p "
            "| share of native accuracy |", "|---|---|---|---|---|---|---|"]
    for run, e, p, ref in cells:
        who = ("none (baseline)" if run is None else f"{run['name']} (tuned "
               + (f"under {run['rope'][0]}×{run['rope'][1]:g}" if run["rope"][0] != "none" else "without scaling")
               + f" at {run['length']})")
        vs = f"{p.diff:+.2f} [{p.ci_low:+.2f}, {p.ci_high:+.2f}], {p.p_mcnemar:.3g}" if p else "—"
        share = f"{e['accuracy'] / ref['accuracy']:.0%}" if ref and ref["accuracy"] > 0 else "—"
        out.append(f"| {who} | {e['task']} @{e['length']} | {e['rope'][0]}×{e['rope'][1]:g} | {e['n']} "
                   f"| {e['accuracy']:.2f} | {vs} | {share} |")
    return "\n".join(out)


def extend_goal(evals: list[dict], tunes: list[dict], native: dict[str, int]) -> str:
    """The goal row: the best sealed cell under rope scaling as a share of the native accuracy."""
    sealed = [(run, e, ref) for run, e, _, ref in extend_cells(evals, tunes, native)
              if run and ref and ref["accuracy"] > 0]
    if not sealed:
        return "| 2× extension: SEAL recovers ≥ 80% of native accuracy | not run | — |"
    run, e, ref = max(sealed, key=lambda x: x[1]["accuracy"])
    base = find_eval(evals, base_of(run), e["task"], e["length"], tuple(e["rope"]))
    share = e["accuracy"] / ref["accuracy"]
    return (f"| 2× extension: SEAL recovers ≥ 80% of native accuracy | {e['task']} @{e['length']} "
            f"{e['rope'][0]}×{e['rope'][1]:g}: {e['accuracy']:.2f} (n {e['n']}, {run['name']}) against "
            f"{ref['accuracy']:.2f} @{ref['length']} unscaled = {share:.0%}"
            + (f"; without SEAL {base['accuracy']:.2f} = {base['accuracy'] / ref['accuracy']:.0%}" if base else "")
            + f" | {'yes' if share >= 0.8 else 'no'}"
            + (" (the baseline meets it too)" if share >= 0.8 and base and base["accuracy"] >= 0.8 * ref["accuracy"]
               else "") + " |")


def _tuned_cells(evals: list[dict], tunes: list[dict]) -> list[tuple[dict, object]]:
    out = []
    for run in tunes:
        task, length, rope = eval_cell(run)
        base, cand = find_eval(evals, base_of(run), task, length, rope), find_eval(evals, run["name"], task, length, rope)
        if base and cand:
            out.append((run, compare(base, cand)))
    return out


def goals_table(evals: list[dict], tunes: list[dict], native: dict[str, int]) -> str:
    """The issue's goals, each checked against what the cache holds."""
    cells = _tuned_cells(evals, tunes)
    rows = ["| goal | measured | met |", "|---|---|---|"]

    def in_domain_ok(p) -> bool:
        return p.acc_b >= 2 * p.acc_a if p.acc_a <= 0.15 else p.diff >= 0.30

    # In domain: the tuning cell itself, or the same task at another length (scales tuned shorter, scored longer).
    in_domain = [(r, eval_cell(r)[1], p, "") for r, p in cells if r["rope"][0] == "none"]
    in_domain += [(r, e["length"], p, f", tuned at {r['length']}") for r, e, p in other_cells(evals, tunes, True)
                  if e["rope"][0] == "none"]
    for model, window in native.items():
        mine = [x for x in in_domain if x[0]["model"] == model]
        if not mine:
            continue
        longest = max(length for _, length, _, _ in mine)
        run, _, p, how = max((x for x in mine if x[1] == longest), key=lambda x: x[2].diff)
        where = f"{model} {eval_cell(run)[0]} @{longest}" + ("" if longest >= window * 0.95 else
                                                              f" (longest run so far; native window {window})")
        rows.append(f"| in domain ≥ 2× baseline (or +0.30 above 0.15) | {where}: {p.acc_a:.2f} → {p.acc_b:.2f} "
                    f"(n {p.n}, McNemar p {p.p_mcnemar:.2g}, {run['name']}{how}) | {'yes' if in_domain_ok(p) else 'no'}"
                    f"{' (any gain is 2× a zero baseline)' if in_domain_ok(p) and p.acc_a == 0 else ''}"
                    f"{'' if longest >= window * 0.95 else ', not at the native length'} |")
    worst: dict[str, tuple[float, str, int]] = {}  # per set of scales: its largest drop out of domain
    for run, e, p in other_cells(evals, tunes, False):
        d, where, n = worst.get(run["name"], (1.0, "", 0))
        worst[run["name"]] = (p.diff, f"{e['task']} @{e['length']}", n + 1) if p.diff < d else (d, where, n + 1)
    if worst:
        ok = [name for name, (d, _, _) in worst.items() if d >= -0.05]
        rows.append("| out of domain: no drop beyond 0.05 | worst cell per set of scales: "
                    + "; ".join(f"{name} {d:+.2f} ({where}, {n} cells)" for name, (d, where, n) in sorted(worst.items()))
                    + f" | {'yes' if ok else 'no'}: {len(ok)} of {len(worst)} sets |")
    else:
        rows.append("| out of domain: no drop beyond 0.05 | not run | — |")
    rows.append(extend_goal(evals, tunes, native))
    ok = [(r, p) for r, p in cells if r["knowledge"]["perplexity"]["sealed"] <= 1.02 * r["knowledge"]["perplexity"]["base"]]
    best = max(ok, key=lambda rp: rp[1].diff) if ok else None
    rows.append("| short-context perplexity within +2% | "
                + (f"{len(ok)} of {len(cells)} runs; best accuracy gain among them {best[1].diff:+.2f} ({best[0]['name']})"
                   if best else f"0 of {len(cells)} runs") + f" | {'yes' if best and best[1].diff > 0 else 'no'} |")
    return "\n".join(rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()


def plot_sweep(evals: list[dict], path: Path) -> bool:
    plt = _pyplot()
    models = [m for m in BASE_MODELS if any(e["model"] == m and e["rope"][0] == "none" for e in evals)]
    if not models:
        return False
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        cells = [e for e in evals if e["model"] == model and e["rope"][0] == "none"]
        for task in sorted({e["task"] for e in cells}):
            pts = sorted((e["length"], e["accuracy"]) for e in cells if e["task"] == task)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=task)
        ax.set(title=f"{model}: baseline in llama.cpp", xlabel="prompt tokens", ylabel="accuracy", ylim=(-0.03, 1.03))
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return True


def plot_tradeoff(evals: list[dict], tunes: list[dict], path: Path) -> bool:
    """SmolLM2 lines at the sweep length: test accuracy against learning rate, and against the perplexity cost
    (every run, the knowledge-keeping ones included)."""
    pts = []
    for run, p in _tuned_cells(evals, tunes):
        if run["model"] == "smollm2" and run["tasks"] == ["lines"] and run["rope"][0] == "none":
            k = run["knowledge"]["perplexity"]
            pts.append((run, p, 100 * (k["sealed"] / k["base"] - 1)))
    if not pts:
        return False
    length = min(r["length"] for r, _, _ in pts)
    pts = [x for x in pts if x[0]["length"] == length]
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for gran, marker in (("head", "o"), ("channel", "s")):
        line = sorted((r["lr"], p.acc_b) for r, p, _ in pts if r["granularity"] == gran and not r.get("keep")
                      and r["samples"] == max(x["samples"] for x, _, _ in pts))
        if line:
            ax1.plot([x for x, _ in line], [y for _, y in line], marker=marker, label=f"SEAL-{gran[0].upper()}")
    ax1.axhline(pts[0][1].acc_a, color="gray", ls="--", label="baseline")
    ax1.set(xscale="log", xlabel="learning rate", ylabel="test accuracy (llama.cpp)", ylim=(-0.03, 1.03),
            title=f"SmolLM2 lines @{length}, paper's loss")
    ax1.xaxis.set_minor_formatter(plt.NullFormatter())
    for r, p, dppl in pts:
        ax2.scatter(dppl, p.acc_b, marker="s" if r["granularity"] == "channel" else "o",
                    color="C2" if r.get("keep") else "C0")
        ax2.annotate(f"lr {r['lr']:g}" + (f", keep {r['keep']:g}" if r.get("keep") else "")
                     + ("" if r["samples"] == 50 else f", {r['samples']} samples")
                     + (", SEAL-C" if r["granularity"] == "channel" else ""),
                     (dppl, p.acc_b), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax2.axhline(pts[0][1].acc_a, color="gray", ls="--")
    ax2.axvline(2.0, color="red", ls=":", label="+2% perplexity")
    ax2.set(xlabel="perplexity change on essay text (%)", ylabel="test accuracy", ylim=(-0.03, 1.03),
            title="accuracy vs knowledge cost (green: --keep)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return True


def write_report(work: Path, plan, docs: Path, readme: Path | None, command: str) -> str:
    evals, tunes = load_cache(work)
    docs.mkdir(parents=True, exist_ok=True)
    link = Path(os.path.relpath(docs, readme.parent if readme else Path.cwd())).as_posix()
    plots = []
    if plot_sweep(evals, docs / "baseline_sweep.png"):
        plots.append(f"![baseline accuracy vs length]({link}/baseline_sweep.png)")
    if plot_tradeoff(evals, tunes, docs / "tradeoff.png"):
        plots.append(f"![accuracy against learning rate and knowledge cost]({link}/tradeoff.png)")
    seconds = sum(x.get("seconds_total", 0) for x in evals + tunes)
    text = "\n".join([
        f"Produced by `{command}`: "
        f"{len(tunes)} tuning runs and {len(evals)} llama.cpp evaluations, {seconds / 3600:.1f} h of compute "
        f"on this 2-core CPU.", "",
        "### Goals (from the issue) against what was run", "",
        goals_table(evals, tunes, NATIVE), "",
        "### Baseline: accuracy vs prompt length (llama.cpp, greedy)", "", sweep_table(evals) or "not run", "",
        "### Tuned, in domain (test samples never seen in tuning; knowledge = 512-token essay windows)", "",
        tuned_table(evals, tunes) if tunes else "not run", "",
        "### Out of domain (scales tuned on one task, scored on another)", "", other_table(evals, tunes, False), "",
        "### Length transfer (scales scored on their task at another length)", "", other_table(evals, tunes, True), "",
        "### Context extension (2× the native window)", "", extend_table(evals, tunes, NATIVE), "",
        *[p + "\n" for p in plots],
    ])
    (docs / "results.md").write_text(text)
    if readme is not None:
        body = readme.read_text()
        if BEGIN not in body or END not in body:
            raise SystemExit(f"{readme}: no {BEGIN} ... {END} markers to write the results between")
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", body))
    return text


if __name__ == "__main__":  # print the report from a cache: python tools/results_report.py docs/results/raw
    import sys

    w = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reproduce")
    print(write_report(w, None, Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/sealgguf-report"), None,
                       "python tools/reproduce.py"))
