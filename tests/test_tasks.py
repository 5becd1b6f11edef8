"""Task generators: token targets, determinism (also across processes), scorers."""

import json
import os
import subprocess
import sys

import pytest

from sealgguf.tasks import TASKS, get_task, make_sample


# One kv pair (two UUIDs) is ~45 tokens, more than 2% of 2K; kv is checked where a pair is < 2%.
TARGETS = [(n, L) for n in sorted(TASKS) if n != "kv" for L in (1024, 2048)] + [("kv", 4096)]


@pytest.mark.parametrize("name,length", TARGETS)
def test_hits_token_target(name, length, vocab_smollm2):
    s = make_sample(get_task(name), 900_000 + length, length, vocab_smollm2.count)
    assert length * 0.98 <= s.n_tokens <= length, (name, s.n_tokens)
    assert s.n_tokens == len(vocab_smollm2.prompt_ids(s))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_deterministic_per_seed(name, vocab_smollm2):
    a = make_sample(get_task(name), 7, 600, vocab_smollm2.count)
    b = make_sample(get_task(name), 7, 600, vocab_smollm2.count)
    c = make_sample(get_task(name), 8, 600, vocab_smollm2.count)
    assert (a.prompt, a.answer) == (b.prompt, b.answer)
    assert a.prompt != c.prompt


def test_deterministic_across_processes():
    """No dependence on hash randomization: two interpreters with different PYTHONHASHSEED agree."""
    code = ("import json,random;from sealgguf.tasks import TASKS,get_task;"
            "print(json.dumps({n:get_task(n, train=True).build(random.Random(f'{n}:3'), 40).prompt for n in TASKS}))")
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.append(json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                              text=True, check=True).stdout))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_scorer_accepts_right_rejects_wrong(name, vocab_smollm2):
    task = get_task(name)
    s = make_sample(task, 11, 500, vocab_smollm2.count)
    assert task.score(s, s.answer)
    assert task.score(s, s.answer + "\nSomething else 42.")
    wrong = {"lines": " 50001.", "passkey": " 50001.", "niah": " go to the beach.",
             "kv": "00000000-0000-4000-8000-000000000000\".", "multikey": " 1234."}[name]
    assert not task.score(s, wrong)
    assert not task.score(s, "")


def test_lines_format_matches_longeval(vocab_smollm2):
    s = make_sample(get_task("lines"), 1, 400, vocab_smollm2.count)
    key = s.meta["key"]
    assert s.prompt.startswith("Below is a record of lines I want you to remember.")
    assert f"line {key}: REGISTER_CONTENT is <{s.expected}>\n" in s.prompt
    assert s.prompt.endswith(f"Tell me what is the <REGISTER_CONTENT> in line {key}? I need the number.")
    assert s.answer_prefix == f"The <REGISTER_CONTENT> in line {key} is"


def test_niah_train_needles_differ_from_eval(vocab_smollm2):
    ev = make_sample(get_task("niah"), 1, 500, vocab_smollm2.count)
    tr = make_sample(get_task("niah", train=True), 1, 500, vocab_smollm2.count)
    assert "San Francisco" in ev.meta["needle"] and "San Francisco" not in tr.meta["needle"]


def test_unknown_task_is_a_clear_error():
    from sealgguf.errors import SealError

    with pytest.raises(SealError, match="unknown task 'lyrics'"):
        get_task("lyrics")
