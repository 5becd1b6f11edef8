"""Self-Extend in eval: llama.cpp's group-attention bookkeeping, applied to llama.cpp's own cache."""

import pytest

from sealgguf.errors import SealError
from sealgguf.self_extend import GroupState, SelfExtend, shift_steps


def simulate(se: SelfExtend, n_tokens: int, chunk: int) -> list[int]:
    """Positions of n_tokens written in batches of at most `chunk` (cut by SelfExtend.batch), with the edits applied as llama.cpp's seq_add / seq_div do."""
    pos, state = [], GroupState()
    while len(pos) < n_tokens:
        for op, p0, p1, v in shift_steps(se, state):
            pos = [(p + v if op == "add" else p // v) if p0 <= p < p1 else p for p in pos]
        k = min(se.batch(state, chunk), n_tokens - len(pos))
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


def views(se: SelfExtend, n_tokens: int, n_batch: int) -> list[list[int]]:
    """For each token t, the distance from its query to every key 0..t as llama.cpp's cache holds them when t is
    decoded: batches cut by SelfExtend.batch, the edits applied before each batch as seq_add / seq_div do."""
    pos, state, out = [], GroupState(), []
    while len(pos) < n_tokens:
        for op, p0, p1, v in shift_steps(se, state):
            pos = [(p + v if op == "add" else p // v) if p0 <= p < p1 else p for p in pos]
        k = min(se.batch(state, n_batch), n_tokens - len(pos))
        new = list(range(state.n_past, state.n_past + k))
        for i, q in enumerate(new):
            out.append([q - p for p in pos + new[:i + 1]])
        pos += new
        state.n_past += k
    return out


@pytest.mark.parametrize("se,n_batch", [(SelfExtend(2, 16), 8), (SelfExtend(4, 16), 64), (SelfExtend(3, 12), 5)])
def test_grouped_key_position_is_what_the_cache_edits_give(se, n_batch):
    from sealgguf.self_extend import grouped_key_position

    for t, seen in enumerate(views(se, 100, n_batch)):
        s = t - t % se.window
        assert seen == [t - (grouped_key_position(se, s, p) if p < s else p) for p in range(t + 1)], t


def test_tuner_attention_matches_llama_cpp_on_logits(smollm2, hf_smollm2):
    """The tuner's grouped attention (transformers) and eval's (llama.cpp's cache edits) give the same next-token
    distribution on essay text: as close as the two engines are without Self-Extend, and far from either model
    without it. Also: the plain model is untouched once the attention is detached."""
    import numpy as np
    import torch

    from sealgguf.eval.runner import LlamaRunner
    from sealgguf.tasks.words import anchor_sentences
    from sealgguf.tune import group_attention

    model, se = hf_smollm2.model, SelfExtend(2, 128)
    ids = hf_smollm2.encoder.encode(" ".join(anchor_sentences()[:300]))[:700]

    def torch_logprobs(grouped: bool) -> np.ndarray:
        if grouped:
            group_attention.attach(model, se)
        try:
            with torch.no_grad():
                return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float().log_softmax(-1).numpy()
        finally:
            group_attention.detach(model)

    def llama_logprobs(s: SelfExtend) -> np.ndarray:
        r = LlamaRunner(smollm2, n_ctx=768, threads=2, self_extend=s, reuse_prefix=False)
        try:
            r._decode_grouped(ids) if s.active else r.llm.eval(ids)
            x = r._last_logits().astype(np.float64)
        finally:
            r.close()
        x -= x.max()
        return x - np.log(np.exp(x).sum())

    def kl(p, q):
        return float((np.exp(p) * (p - q)).sum())

    t_plain, t_grouped, t_again = torch_logprobs(False), torch_logprobs(True), torch_logprobs(False)
    l_plain, l_grouped = llama_logprobs(SelfExtend()), llama_logprobs(se)
    floor = kl(l_plain, t_plain)
    assert np.array_equal(t_plain, t_again)
    assert kl(l_grouped, t_grouped) < 2 * floor + 2e-3
    assert kl(l_grouped, t_plain) > 3 * kl(l_grouped, t_grouped)   # grouping changes the output, both engines agree
    assert kl(l_plain, t_grouped) > 3 * kl(l_grouped, t_grouped)


def test_tune_under_self_extend_is_recorded_and_printed(smollm2, tmp_path):
    """tune --self-extend learns under grouped attention, records it, fold copies it to seal.tune.self_extend, and
    eval on the sealed file names the flags to use."""
    from sealgguf import scales
    from sealgguf.fold import fold_file
    from sealgguf.gguf_file import open_gguf
    from sealgguf.tune import TuneOptions, run_tune

    out = tmp_path / "scales.safetensors"
    info = run_tune(TuneOptions(model=str(smollm2), out=out, tasks=["passkey"], granularity="head", length=300,
                                samples=2, val_samples=1, keep=0.0, self_extend=SelfExtend(2, 64), progress=False))
    assert info["self_extend"] == {"group": 2, "window": 64}
    assert SelfExtend.from_json(scales.load(out).metadata["self_extend"]) == SelfExtend(2, 64)
    fold_file(smollm2, out, tmp_path / "sealed.gguf")
    assert SelfExtend.from_json(open_gguf(tmp_path / "sealed.gguf").get("seal.tune.self_extend")) == SelfExtend(2, 64)
    with pytest.raises(SealError, match="exceeds the model's context of 8192 tokens; use .*--self-extend"):
        run_tune(TuneOptions(model=str(smollm2), out=out, length=9000, self_extend=SelfExtend()))


@pytest.mark.parametrize("bad", ['{"group": 2}', '{"group": "2", "window": 64}', "[2, 64]", "{", '{"group": 2, "window": 63}'])
def test_a_bad_self_extend_record_is_one_line(bad):
    with pytest.raises(SealError, match="seal.tune.self_extend: "):
        SelfExtend.from_json(bad, "x.gguf: seal.tune.self_extend")
