"""eval, report and seal: statistics, real llama.cpp runs at small sizes, and the tie between the
transformers model with scales and the folded GGUF."""

import json

import numpy as np
import pytest

from sealgguf.eval.harness import EvalOptions, evaluate
from sealgguf.eval.stats import mcnemar_exact, paired


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(5, 5) == 1.0


def test_paired_difference_and_interval():
    a = [True] * 3 + [False] * 17
    b = [True] * 12 + [False] * 8
    p = paired(a, b)
    assert p.n == 20 and p.acc_a == 0.15 and p.acc_b == 0.6
    assert p.diff == pytest.approx(0.45)
    assert 0.2 < p.ci_low < p.diff < p.ci_high < 0.7
    assert p.only_b == 9 and p.only_a == 0 and p.p_mcnemar < 0.01
    same = paired(a, a)
    assert same.diff == 0 and same.ci_low == 0 and same.ci_high == 0 and same.p_mcnemar == 1.0


@pytest.fixture(scope="module")
def self_compare(smollm2, tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    import shutil

    twin = d / "twin.gguf"
    shutil.copyfile(smollm2, twin)
    report = evaluate(EvalOptions(models=[smollm2, twin], tasks=["passkey", "lines"], lengths=[256, 400],
                                  samples=3, threads=2, progress=False))
    return d, report


def test_compare_with_itself_gives_zero_difference(self_compare):
    from sealgguf.report import cells

    _, report = self_compare
    assert len(report["records"]) == 2 * 2 * 3
    a, b = report["models"]
    for r in report["records"]:
        assert r["output"][a] == r["output"][b]
    assert sum(bool(r["output"][a].strip()) for r in report["records"]) >= 10  # real answers, not empty ones
    for c in cells(report):
        assert c["paired"]["diff"] == 0 and c["paired"]["only_a"] == c["paired"]["only_b"] == 0
    passkey = [r for r in report["records"] if r["task"] == "passkey"]
    assert sum(r["correct"][report["models"][0]] for r in passkey) >= 4  # SmolLM2 finds short passkeys


def test_report_files(self_compare):
    from sealgguf import report as rep

    d, report = self_compare
    rep.write_json(report, d / "r.json")
    rep.plot(report, d / "r.png")
    rep.write_markdown(report, d / "r.md")
    data = json.loads((d / "r.json").read_text())
    assert len(data["records"]) == 12 and all("output" in r for r in data["records"])
    assert (d / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "| passkey | 256 |" in (d / "r.md").read_text()


def test_prefix_reuse_saves_tokens_without_changing_answers(smollm2):
    opts = dict(models=[smollm2], tasks=["niah"], lengths=[300, 500], samples=1, depths=[0.2, 0.5, 0.8],
                threads=2, progress=False)
    with_reuse = evaluate(EvalOptions(**opts, reuse_prefix=True))
    without = evaluate(EvalOptions(**opts, reuse_prefix=False))
    lab = with_reuse["models"][0]
    assert [r["output"][lab] for r in with_reuse["records"]] == [r["output"][lab] for r in without["records"]]
    assert with_reuse["timing"][lab]["tokens_processed"] < without["timing"][lab]["tokens_processed"]


def test_hf_scales_and_folded_gguf_agree(smollm2, hf_smollm2, tmp_path):
    """Scales applied in transformers and the same scales folded into the Q4_1 GGUF give the same
    greedy answers: tune, fold and eval describe one model."""
    import torch

    from sealgguf import scales
    from sealgguf.eval.runner import LlamaRunner
    from sealgguf.fold import fold_file
    from sealgguf.tasks import get_task, make_sample
    from sealgguf.tune.model import SealScales

    lm = hf_smollm2
    values = np.random.default_rng(5).uniform(0.6, 1.4, (30, 9)).astype(np.float32)
    scales.save(tmp_path / "s.safetensors", values, {})
    fold_file(smollm2, tmp_path / "s.safetensors", tmp_path / "sealed.gguf")
    runner = LlamaRunner(tmp_path / "sealed.gguf", n_ctx=512, threads=2)
    seal = SealScales(lm.layout, "head")
    with torch.no_grad():
        seal.scales.copy_(torch.from_numpy(values))
    seal.attach(lm.model)
    agree = 0
    try:
        for i, name in enumerate(["passkey", "lines", "passkey", "kv"]):
            task = get_task(name)
            s = make_sample(task, 900_100 + i, 300, runner.encoder.count)
            ids = lm.encoder.prompt_ids(s)
            assert ids == runner.encoder.prompt_ids(s)
            out = lm.model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                    attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            hf_ids = out[0, len(ids):].tolist()
            llama_text = runner.generate(ids, 6)
            llama_ids = runner.encoder.encode(llama_text)
            assert llama_ids, f"llama.cpp gave an empty answer to {name}"
            agree += hf_ids[: len(llama_ids)][:3] == llama_ids[:3]
    finally:
        seal.detach_hooks()
        runner.close()
    assert agree >= 3, agree


def test_seal_end_to_end_tiny(tmp_path):
    """`sealgguf seal` through the command line: tune, fold, eval and the knowledge check on a tiny run."""
    from llama_cpp import Llama

    from sealgguf.cli import main
    from sealgguf.fsutil import sha256_file

    out = tmp_path / "tiny.gguf"
    assert main(["-q", "seal", "smollm2", "-o", str(out), "--task", "passkey", "--length", "200", "--samples", "3",
                 "--eval-samples", "2", "--ppl-windows", "1", "--threads", "2", "--base-model", "org/tiny"]) == 0
    for key in ("scales.safetensors", "report.json", "report.md", "report.png"):
        assert (tmp_path / f"tiny.{key}").exists(), key
    report = json.loads((tmp_path / "tiny.report.json").read_text())
    k = report["knowledge"]
    assert k["tokens"] == 511 and k["mean_kl"] > 0  # the scales moved, so the two models differ
    labels = report["models"]
    assert k["perplexity"][labels[0]] != k["perplexity"][labels[1]]
    assert report["tune"]["samples"] == 3 and len(report["records"]) == 2
    # SEAL-C varies inside blocks, so --imatrix auto collected one and the weighted quantizer won some blocks
    assert report["fold"]["imatrix"] == "tiny.imatrix.gguf" and (tmp_path / "tiny.imatrix.gguf").exists()
    assert 0 < report["fold"]["blocks_imatrix"] <= report["fold"]["blocks_requantized"]
    assert report["fold"]["error_feedback"] is True  # the collected imatrix holds the Gram matrices
    from test_card import check_card  # tests/ is on sys.path (conftest)

    card = (tmp_path / "README.md").read_text()
    check_card(card, report)
    assert "base_model: \"org/tiny\"" in card and f"--lr {report['tune']['lr']:g}" in card
    assert report["sealed"]["sha256"] == sha256_file(out) and report["source"]["sha256"] in card
    llm = Llama(model_path=str(out), n_ctx=64, verbose=False)
    assert llm.create_completion("Hello", max_tokens=4, temperature=0)["choices"][0]["text"].strip()


def test_prompt_longer_than_the_loaded_context_is_refused(smollm2):
    from sealgguf.errors import SealError
    from sealgguf.eval.runner import LlamaRunner

    runner = LlamaRunner(smollm2, n_ctx=256, threads=2)
    try:
        n_ctx = runner.llm.n_ctx()
        with pytest.raises(SealError, match=f"does not fit n_ctx {n_ctx}"):
            runner.generate(list(range(100, 100 + n_ctx)), 8)
    finally:
        runner.close()
