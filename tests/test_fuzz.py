"""Seeded fuzzing of inspect and fold (tools/fuzz_inputs.py): every mutant ends in a one-line error or a
valid output, with its inputs unchanged and no partial file. The long run is the same tool with more
mutants (README, "What is validated")."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import fuzz_inputs  # noqa: E402


def test_fuzz_mutants_fail_cleanly_or_fold_validly():
    counts, bad = fuzz_inputs.fuzz(n=300, seed=7, timeout=20.0)
    assert not bad, "\n".join(bad[:20])
    # the generator must exercise both ends, or the test proves nothing
    assert counts["error"] >= 100 and counts["valid"] >= 10, counts


def test_fuzz_generator_is_seeded(tmp_path):
    a = fuzz_inputs.fuzz(n=15, seed=3)
    b = fuzz_inputs.fuzz(n=15, seed=3)
    assert a == b
