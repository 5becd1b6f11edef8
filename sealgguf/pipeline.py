"""`sealgguf seal`: tune -> fold -> eval, with a before/after report next to the output file."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from sealgguf.errors import SealError
from sealgguf.tune import TuneOptions


@dataclass
class SealOptions:
    tune: TuneOptions                       # what to learn; tune.out is replaced by the scales file beside `out`
    out: Path                               # the sealed GGUF
    eval_samples: int = 30
    eval_lengths: list[int] | None = None   # default: the tuning length
    eval_tasks: list[str] | None = None     # default: the tuning tasks
    ppl_windows: int = 4                    # knowledge check: perplexity/KL on 4 x 512 essay tokens (0 = skip)
    threads: int | None = None
    gpu_layers: int = 0                     # llama.cpp offload for the evaluation (-1 = all)
    base_model: str | None = None           # the model card's base_model (default: from the GGUF's metadata)
    imatrix: Path | str | None = "auto"     # llama.cpp importance matrix weighting the fold's requantization;
                                            # "auto": collect one from essay text when the fold requantizes


def report_paths(out: Path) -> dict[str, Path]:
    stem = out.name[:-5] if out.name.endswith(".gguf") else out.name
    return {k: out.with_name(f"{stem}.{k}")
            for k in ("scales.safetensors", "imatrix.gguf", "report.json", "report.md", "report.png")}


def pick_imatrix(opt: SealOptions, model: Path, scales: Path, path: Path, tuned: dict) -> Path | None:
    """The imatrix for the fold: the given file; with "auto", one collected from essay text (sealgguf.imatrix,
    written to `path`) when the scales vary inside quant blocks, none when every block folds exactly. It is
    collected on the device and in the dtype the tuning run (`tuned`, run_tune's record) loaded the model with."""
    from sealgguf.fold import requantizes

    if opt.imatrix in (None, "none"):
        return None
    if opt.imatrix != "auto":
        return Path(opt.imatrix)
    if not requantizes(model, scales):
        return None
    from sealgguf.imatrix import collect_to

    collect_to(path, model, progress=opt.tune.progress, device=tuned["device"], dtype=tuned["dtype"],
               device_map=tuned["device_map"], max_memory=opt.tune.max_memory)
    return path


def exact_kl(model: Path, scales: Path, windows: int, threads: int | None, gpu_layers: int = 0):
    """For fold_file(measure_kl=...): KL(scales applied exactly || sealed) in llama.cpp on `windows` x 512 held-out
    essay tokens, and the floor: KL(exact || exact nudged by 1e-6). The models are written beside the sealed
    file with the folded tensors in F32 (sealgguf.fold.reference: one matmul path for all) and removed after."""
    import os
    import tempfile

    from sealgguf.eval.knowledge import knowledge_check
    from sealgguf.fold.reference import write_exact, write_unpacked

    def measure(sealed: Path) -> dict[str, float]:
        paths = []
        try:
            for name in ("exact", "sealed", "nudged"):
                fd, p = tempfile.mkstemp(prefix=f".{name}.", suffix=".gguf", dir=sealed.parent)
                os.close(fd)
                paths.append(Path(p))
            names = write_exact(model, scales, paths[0])
            write_unpacked(sealed, names, paths[1])
            write_exact(model, scales, paths[2], nudge=1e-6)
            return {f"kl_{what}": knowledge_check([paths[0], other], ["exact", what], windows, threads,
                                                  gpu_layers)["mean_kl"]
                    for what, other in (("exact", paths[1]), ("floor", paths[2]))}
        finally:
            for p in paths:
                p.unlink(missing_ok=True)
    return measure


def base_model(path: Path) -> dict:
    """What the model card's front matter says about the source: the hub repository it came from when the GGUF
    records one (general.base_model.0.repo_url / general.source.repo_url on huggingface.co), else its
    general.name; and its general.license."""
    from sealgguf.gguf_file import open_gguf

    reader = open_gguf(path)
    name = reader.get("general.name") or path.stem
    for key in ("general.base_model.0.repo_url", "general.source.repo_url"):
        url = reader.get(key)
        if isinstance(url, str) and "huggingface.co/" in url:
            name = url.split("huggingface.co/", 1)[1].strip("/")
            break
    return {"base_model": name, "license": reader.get("general.license") or ""}


def seal(opt: SealOptions) -> dict:
    from sealgguf import report as rep
    from sealgguf.eval.harness import EvalOptions, evaluate
    from sealgguf.fold import fold_file
    from sealgguf.fsutil import sha256_file
    from sealgguf.models import resolve
    from sealgguf.report.card import card_path, write_card
    from sealgguf.tune import run_tune

    t = opt.tune
    model_path = resolve(t.model)
    if not model_path.is_file():
        raise SealError(f"{model_path}: seal needs a GGUF file (it folds into the quantized weights)")
    paths = report_paths(opt.out)
    tune_info = run_tune(replace(t, model=str(model_path), out=paths["scales.safetensors"]))
    kl = exact_kl(model_path, paths["scales.safetensors"], opt.ppl_windows, opt.threads, opt.gpu_layers) \
        if opt.ppl_windows else None
    imatrix = pick_imatrix(opt, model_path, paths["scales.safetensors"], paths["imatrix.gguf"], tune_info)
    if imatrix is None:
        paths.pop("imatrix.gguf")
    folded = fold_file(model_path, paths["scales.safetensors"], opt.out, threads=opt.threads or 0,
                       progress=t.progress, measure_kl=kl, imatrix=imatrix)
    report = evaluate(EvalOptions(
        models=[model_path, opt.out], tasks=opt.eval_tasks or t.tasks,
        lengths=opt.eval_lengths or [t.length], samples=opt.eval_samples, rope=t.rope, self_extend=t.self_extend,
        threads=opt.threads, gpu_layers=opt.gpu_layers, ppl_windows=opt.ppl_windows, seed=t.seed, progress=t.progress))
    report["tune"] = {k: v for k, v in tune_info.items() if k != "losses"}
    report["tune"]["losses"] = [round(x, 4) for x in tune_info["losses"]]
    report["source"] = {"name": model_path.name, "sha256": tune_info["source_sha256"], **base_model(model_path)}
    if opt.base_model:
        report["source"]["base_model"] = opt.base_model
    report["sealed"] = {"name": opt.out.name, "sha256": sha256_file(opt.out)}
    report["fold"] = {"rel_rmse_by_type": folded.rel_rmse_by_type(),
                      "blocks_rescaled": folded.blocks("blocks_rescaled"),
                      "blocks_requantized": folded.blocks("blocks_requantized"),
                      "blocks_refit": folded.blocks("blocks_refit"), "form": folded.form,
                      "imatrix": imatrix.name if imatrix else None, "blocks_imatrix": folded.blocks("blocks_imatrix"),
                      "error_feedback": folded.error_feedback,
                      "imatrix_option": Path(opt.imatrix).name if opt.imatrix else "none",
                      **(folded.kl or {})}
    header = (f"# sealgguf report: {model_path.name} -> {opt.out.name}\n\n"
              f"SEAL-{'H' if t.granularity == 'head' else 'C'} tuned on {','.join(t.tasks)} at {t.length} "
              f"tokens, {t.samples} samples x {t.epochs} epoch(s), lr {tune_info['lr']}, in "
              f"{tune_info['seconds']} s on {tune_info['device']}; scales {tune_info['scale_min']:.3f}.."
              f"{tune_info['scale_max']:.3f}; validation exact match {tune_info['val_exact_match_before']:.2f} -> "
              f"{tune_info['val_exact_match_after']:.2f}.\nFold: {json.dumps(report['fold'])}\n\n")
    rep.write_json(report, paths["report.json"])
    rep.write_markdown(report, paths["report.md"], header)
    rep.plot(report, paths["report.png"])
    paths["card"] = card_path(opt.out)
    write_card(rep.json_document(report), paths["card"])
    report["header"] = header
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report
