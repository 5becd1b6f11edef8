"""The model card (`README.md`) that `seal` writes beside a sealed GGUF, for sharing it on a model hub.

Every number in the card is read from the seal report (report.json): nothing is computed here but its
formatting. The front matter follows the hub convention (base_model, tags, library_name)."""

from __future__ import annotations

import json
from pathlib import Path

from sealgguf.eval.stats import Paired
from sealgguf.fsutil import atomic_output
from sealgguf.self_extend import SelfExtend

TAGS = ["gguf", "seal", "long-context"]
MARKER = "<!-- written by sealgguf seal: rewritten on the next seal into this folder -->"


def card_path(sealed: Path) -> Path:
    """README.md beside the sealed file, unless a README.md that sealgguf did not write is there: that one is
    kept and the card goes to <sealed stem>.README.md."""
    readme = sealed.with_name("README.md")
    if readme.exists() and MARKER not in readme.read_text(errors="replace"):
        stem = sealed.name[:-5] if sealed.name.endswith(".gguf") else sealed.name
        return sealed.with_name(f"{stem}.README.md")
    return readme


def _recipe(tune: dict) -> str:
    kind = "SEAL-H (one scale per head)" if tune["granularity"] == "head" else "SEAL-C (one scale per head channel)"
    if tune.get("exact_fold"):
        kind += ", factorized to fold exactly (tune --exact-fold)"
    return kind


def _seal_command(report: dict) -> str:
    t, src, out = report["tune"], report["source"], report["sealed"]
    args = [f"sealgguf seal {src['name']} -o {out['name']}", f"--task {t['task']}", f"--length {t['length']}",
            f"--samples {t['samples']}", f"--granularity {t['granularity']}",
            "--lr auto" if t.get("lr_sweep") else f"--lr {t['lr']:g}",
            f"--keep {t['keep']:g}", f"--seed {t['seed']}"]
    if t.get("epochs", 1) != 1:
        args.append(f"--epochs {t['epochs']}")
    if t.get("exact_fold"):
        args.append("--exact-fold")
    imatrix = (report.get("fold") or {}).get("imatrix_option", "auto")
    if imatrix != "auto":
        args.append(f"--imatrix {imatrix}")
    rope = t.get("rope_scaling") or {}  # the scales file's record, {"type": KIND, "factor": F, ...}
    if rope.get("type", "none") != "none":
        args.append(f"--rope-scaling {rope['type']} --rope-factor {rope['factor']:g}")
    se = SelfExtend.from_json(t.get("self_extend"))
    if se.active:
        args.append(f"--self-extend {se.group},{se.window}")
    args += [f"--eval-samples {report['samples']}", f"--eval-lengths {','.join(map(str, report['lengths']))}",
             f"--eval-task {','.join(report['tasks'])}"]
    return " \\\n    ".join(args)


def _results_table(report: dict) -> list[str]:
    base, sealed = report["models"]
    lines = ["| task | length | n | base (95% CI) | sealed (95% CI) | difference (95% CI) | McNemar p |",
             "|---|---|---|---|---|---|---|"]
    for row in report["cells"]:
        acc, ci = row["accuracy"], row["ci95"]
        p = Paired(**row["paired"])
        lines.append(f"| {row['task']} | {row['length']} | {row['n']} "
                     f"| {acc[base]:.2f} ({ci[base][0]:.2f}–{ci[base][1]:.2f}) "
                     f"| {acc[sealed]:.2f} ({ci[sealed][0]:.2f}–{ci[sealed][1]:.2f}) "
                     f"| {p.diff:+.2f} ({p.ci_low:+.2f} to {p.ci_high:+.2f}) | {p.p_mcnemar:.3f} |")
    return lines


def model_card(report: dict) -> str:
    """The card's Markdown, YAML front matter first. `report` is the seal report as written to report.json."""
    t, src, out = report["tune"], report["source"], report["sealed"]
    base, sealed = report["models"]
    ctx = max(report["lengths"])
    front = ["---", f"base_model: {json.dumps(src['base_model'])}", "tags:"] + [f"- {tag}" for tag in TAGS] + \
            ["library_name: gguf", f"license: {json.dumps(src['license'])}" if src.get("license") else None, "---"]
    lines = [x for x in front if x is not None] + [
        "", f"# {out['name']}", "",
        f"`{src['name']}` with SEAL attention scales folded into its weights by sealgguf: the same architecture, "
        "quantization and size, and no extra cost at inference. SEAL (Scaling to Emphasize Attention for "
        "Long-context retrieval, ACL) learns one scale per attention head or head channel on synthetic "
        "retrieval samples, with the model frozen.", "",
        "## What was tuned", "",
        "| | |", "|---|---|",
        f"| recipe | {_recipe(t)} |",
        f"| task, prompt length | {t['task']}, {t['length']} tokens (mean {t['mean_tokens']}) |",
        f"| training samples, epochs | {t['samples']}, {t['epochs']} |",
        f"| learning rate, keep | {t['lr']:g}, {t['keep']:g} (KL to the base model on essay text) |",
        *(["| --lr auto (validation loss + keep × KL per candidate) | "
           + ", ".join(f"{c['lr']:g}: {c['score']:.4f}" for c in t["lr_sweep"]) + " |"] if t.get("lr_sweep") else []),
        f"| tuned on | {t['device']}, {t['dtype']}, {t['seconds']} s |",
        f"| validation exact match | {t['val_exact_match_before']:.2f} → {t['val_exact_match_after']:.2f} |",
        f"| scales | {t['scale_min']:.3f} to {t['scale_max']:.3f} |", "",
        "## Results (llama.cpp, held-out samples on fresh seeds)", "",
        *_results_table(report), "",
    ]
    k = report.get("knowledge")
    if k:
        lines += ["## Knowledge check", "",
                  f"Perplexity over {k['tokens']} tokens of essay text the tuner never saw: "
                  f"base {k['perplexity'][base]:.3f}, sealed {k['perplexity'][sealed]:.3f}; "
                  f"mean KL(base ‖ sealed) {k['mean_kl']:.5f} nats/token.", ""]
    fold = report.get("fold") or {}
    if fold:
        rmse = ", ".join(f"{typ} {v:.1e}" for typ, v in fold["rel_rmse_by_type"].items())
        lines += ["## Fold", "",
                  f"Folded as {fold['form']}: {fold['blocks_rescaled']} blocks rescaled, "
                  f"{fold['blocks_requantized']} requantized"
                  + (f" ({fold['blocks_refit']} of them kept their quantized levels with refit scales, which beat "
                     "a fresh quantization)" if fold.get("blocks_refit") else "")
                  + "; relative RMSE against the exactly scaled weights: "
                  f"{rmse}." + (f" KL(scales applied exactly ‖ sealed) {fold['kl_exact']:.5f} nats/token "
                                f"(llama.cpp's floor for any change: {fold['kl_floor']:.5f})."
                                if "kl_exact" in fold else "")
                  + (f" Requantized blocks were weighted by the importance matrix {fold['imatrix']}: "
                     f"{fold['blocks_imatrix']} of them came from ggml's weighted quantizer"
                     + (", each block's error carried into the blocks after it (its Gram matrices)."
                        if fold.get("error_feedback") else ".")
                     if fold.get("imatrix")
                     else ""), ""]
    se = SelfExtend.from_json(t.get("self_extend"))
    grouped = f" {se.llama_cpp_flags()}" if se.active else ""
    lines += ["## Files", "", "| file | SHA-256 |", "|---|---|",
              f"| base: {src['name']} | `{src['sha256']}` |", f"| sealed: {out['name']} | `{out['sha256']}` |", "",
              "## Reproduce", "", "```sh", f"# sealgguf {report['sealgguf_version']}", _seal_command(report), "```", "",
              "## Run it", "", "llama.cpp:", "", "```sh",
              f"llama-cli -m {out['name']} -c {ctx}{grouped}", "```", ""] + ([
              f"Tuned under Self-Extend (group {se.group}, window {se.window}); llama.cpp has no GGUF key for it, so "
              "pass the group-attention flags above; llama-cpp-python and ollama have no switch for it. "
              "Caution: in the llama.cpp sealgguf was tested with, llama_memory_seq_div (which group "
              "attention calls) rotates the grouped keys the wrong way; sealgguf's evaluation divides positions "
              "with seq_add instead, so llama.cpp's own group attention may score lower than the table above.", ""] if se.active else []) + [ "llama-cpp-python:", "", "```python",
              "from llama_cpp import Llama", "",
              f"llm = Llama(model_path=\"{out['name']}\", n_ctx={ctx})", "```", "",
              "ollama (a `Modelfile`, then `ollama create sealed -f Modelfile`):", "", "```",
              f"FROM ./{out['name']}", f"PARAMETER num_ctx {ctx}", "```", ""]
    return "\n".join(lines)


def write_card(report: dict, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(model_card(report))
