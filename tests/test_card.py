"""The model card `seal` writes: Markdown with YAML front matter, every number taken from the report."""

import copy
import re

import yaml

from sealgguf.report import json_document
from sealgguf.report.card import MARKER, TAGS, card_path, model_card

NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w])")
CONSTANTS = {95.0, 256.0}  # "95% CI", "SHA-256"


def _report_numbers(doc) -> list[float]:
    out = []
    if isinstance(doc, bool):
        return out
    if isinstance(doc, (int, float)):
        return [float(doc)]
    if isinstance(doc, dict):
        doc = list(doc.values())
    if isinstance(doc, list):
        for v in doc:
            out += _report_numbers(v)
    return out


def check_card(card: str, report: dict) -> None:
    """Front matter parses with the hub keys; every number in the body is one of the report's, as printed."""
    assert card.startswith("---\n")
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["base_model"] == report["source"]["base_model"] and meta["tags"] == TAGS
    assert meta["library_name"] == "gguf"
    for s in (report["source"]["name"], report["sealed"]["name"], report["source"]["sha256"],
              report["sealed"]["sha256"], report["sealgguf_version"], report["source"]["base_model"],
              (report.get("fold") or {}).get("imatrix") or "", (report.get("fold") or {}).get("imatrix_option") or ""):
        body = body.replace(s, "")
    known = _report_numbers(report)
    for token in NUMBER.findall(body):
        x = float(token)
        if x in CONSTANTS:
            continue
        decimals = len(token.split(".")[1].split("e")[0]) if "." in token else 0
        tol = 0.5 * 10.0 ** -decimals * (abs(x) if "e" in token else 1) + 1e-12
        assert any(abs(x - v) <= tol for v in known), f"{token} in the card is not in the report"


def _report() -> dict:
    recs = [{"task": "lines", "length": 1024, "depth": None, "seed": i, "n_tokens": 1000 + i,
             "output": {}, "correct": {"base.gguf": i % 3 == 0, "sealed.gguf": i % 5 != 0}} for i in range(20)]
    tune = {"task": "lines", "length": 1024, "mean_tokens": 1013.5, "samples": 50, "lr": 0.02, "epochs": 1,
            "keep": 10.0, "seed": 0, "granularity": "channel", "exact_fold": False, "device": "cpu",
            "dtype": "fp32", "seconds": 465.3, "val_exact_match_before": 0.1, "val_exact_match_after": 0.9,
            "scale_min": 0.412, "scale_max": 1.734, "rope_scaling": None, "self_extend": None}
    return {"models": ["base.gguf", "sealed.gguf"], "tasks": ["lines"], "lengths": [1024], "samples": 20,
            "records": recs, "tune": tune,
            "knowledge": {"tokens": 2044, "perplexity": {"base.gguf": 30.391, "sealed.gguf": 30.962},
                          "mean_kl": 0.03112},
            "fold": {"form": "columns", "blocks_rescaled": 12, "blocks_requantized": 3456,
                     "rel_rmse_by_type": {"Q4_1": 0.0881}},
            "source": {"name": "base.gguf", "sha256": "ab" * 32, "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                       "license": "apache-2.0"},
            "sealed": {"name": "sealed.gguf", "sha256": "cd" * 32}}


def test_card_numbers_come_from_the_report():
    doc = json_document(_report())
    card = model_card(doc)
    check_card(card, doc)
    assert "sealgguf seal base.gguf -o sealed.gguf" in card and "FROM ./sealed.gguf" in card
    assert "0.35 (0.18–0.57)" in card  # 7 of 20 with its Wilson interval
    changed = copy.deepcopy(doc)
    changed["knowledge"]["perplexity"]["sealed.gguf"] = 31.5
    assert "31.500" in model_card(changed) and "30.962" not in model_card(changed)
    assert "--imatrix" not in card and "importance matrix" not in card  # no imatrix, the default option


def test_card_names_the_imatrix_and_the_option_that_picked_it():
    doc = json_document(_report())
    doc["fold"].update(imatrix="sealed.imatrix.gguf", blocks_imatrix=3001, imatrix_option="auto")
    card = model_card(doc)
    check_card(card, doc)
    assert "importance matrix sealed.imatrix.gguf: 3001 of them" in card and "--imatrix" not in card
    assert "error carried" not in card
    doc["fold"].update(error_feedback=True)
    assert "each block's error carried into the blocks after it" in model_card(doc)
    doc["fold"].update(imatrix="smol8.imatrix.gguf", imatrix_option="smol8.imatrix.gguf")
    card = model_card(doc)
    check_card(card, doc)
    assert "--imatrix smol8.imatrix.gguf" in card


def test_card_of_a_model_tuned_with_context_extension():
    """Rope scaling and Self-Extend reach the reproduce command; Self-Extend also the llama.cpp flags to run with."""
    doc = _report()
    doc["tune"]["rope_scaling"] = {"type": "yarn", "factor": 2.0, "original_context_length": 8192, "head_dim": 64}
    doc["tune"]["self_extend"] = {"group": 2, "window": 256}
    doc = json_document(doc)
    card = model_card(doc)
    check_card(card, doc)
    assert "--rope-scaling yarn --rope-factor 2" in card and "--self-extend 2,256" in card
    assert "llama-cli -m sealed.gguf -c 1024 --grp-attn-n 2 --grp-attn-w 256" in card


def test_a_number_not_in_the_report_is_caught():
    doc = json_document(_report())
    card = model_card(doc).replace("465.3 s", "466.3 s")
    try:
        check_card(card, doc)
    except AssertionError as e:
        assert "466.3" in str(e)
    else:
        raise AssertionError("the checker passed a number that is not in the report")


def test_card_never_overwrites_a_readme_it_did_not_write(tmp_path):
    sealed = tmp_path / "m.gguf"
    assert card_path(sealed) == tmp_path / "README.md"
    (tmp_path / "README.md").write_text("# my notes\n")
    assert card_path(sealed) == tmp_path / "m.README.md"
    (tmp_path / "README.md").write_text("old card\n" + MARKER + "\n")
    assert card_path(sealed) == tmp_path / "README.md"
