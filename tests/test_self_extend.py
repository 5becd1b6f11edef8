"""Self-Extend in eval: llama.cpp's group-attention bookkeeping, applied to llama.cpp's own cache."""

import pytest

from sealgguf.errors import SealError
from sealgguf.self_extend import GroupState, SelfExtend, shift_steps


def simulate(se: SelfExtend, n_tokens: int, chunk: int) -> list[int]:
    """Positions of n_tokens written in chunks, with the edits applied as llama.cpp's seq_add / seq_div do."""
    pos, state = [], GroupState()
    for start in range(0, n_tokens, chunk):
        for op, p0, p1, v in shift_steps(se, state):
            pos = [(p + v if op == "add" else p // v) if p0 <= p < p1 else p for p in pos]
        k = min(chunk, n_tokens - start)
        pos += range(state.n_past, state.n_past + k)
        state.n_past += k
    return pos


def test_positions_are_grouped_behind_and_exact_in_front():
    se = SelfExtend(4, 512)
    pos = simulate(se, 6000, 512)
    assert pos == sorted(pos)                                # order kept
    assert max(pos) < 512 + (6000 - 512) // 4 + 512          # compressed about G times
    last = 6000 % 512                                        # the newest batch keeps exact spacing
    assert pos[-last:] == list(range(pos[-last], pos[-last] + last))
    assert pos[:8] == [0, 0, 0, 0, 1, 1, 1, 1]                # the oldest tokens share positions in groups of G
    assert simulate(SelfExtend(), 3000, 512) == list(range(3000))  # off: untouched


def test_options():
    assert SelfExtend.from_cli("4,512") == SelfExtend(4, 512)
    assert SelfExtend.from_cli(None) == SelfExtend()
    assert SelfExtend(2, 512).context(8192) == 512 + (8192 - 512) * 2
    assert SelfExtend(4, 512).llama_cpp_flags() == "--grp-attn-n 4 --grp-attn-w 512"
    for bad, match in (("4", "two integers"), ("4,510", "multiple of G"), ("0,512", "G must be")):
        with pytest.raises(SealError, match=match):
            SelfExtend.from_cli(bad)


def test_llama_cpp_cache_positions_follow_the_port(smollm2):
    """After a grouped prompt llama.cpp's cache holds the positions the port predicts; a window the prompt
    never reaches leaves generation exactly as without Self-Extend."""
    from sealgguf.eval.runner import LlamaRunner

    ids = list(range(1000, 2600))  # 1,600 tokens
    se = SelfExtend(4, 256)
    grouped = LlamaRunner(smollm2, n_ctx=2048, threads=2, self_extend=se)
    plain = LlamaRunner(smollm2, n_ctx=2048, threads=2)
    wide = LlamaRunner(smollm2, n_ctx=2048, threads=2, self_extend=SelfExtend(2, 2048))
    try:
        grouped.generate(ids, 1)
        assert grouped.max_position() == max(simulate(se, len(ids), grouped.llm.n_batch))
        assert grouped.max_position() < len(ids) // 2
        assert wide.generate(ids, 6) == plain.generate(ids, 6)
        assert wide.max_position() == plain.llm.n_tokens - 1
    finally:
        for r in (grouped, plain, wide):
            r.close()


def test_eval_refuses_a_length_beyond_the_extended_window(smollm2):
    from sealgguf.eval.harness import EvalOptions, check_options

    with pytest.raises(SealError, match="--self-extend 2,512 it reaches"):
        check_options(EvalOptions(models=[smollm2], lengths=[20000], self_extend=SelfExtend(2, 512)))
    n_ctx, _ = check_options(EvalOptions(models=[smollm2], lengths=[12000], self_extend=SelfExtend(2, 512)))
    assert n_ctx > 12000
