"""Render a prompt the way the model expects it: its chat template, then the answer prefix.

The template is the `tokenizer.chat_template` string stored in the GGUF (or the HF tokenizer), so
the tuner (transformers) and the evaluator (llama.cpp) see the same text.
"""

from __future__ import annotations

import datetime
import functools

from sealgguf.tasks.base import Sample


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str):
        raise ValueError(message)

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


def render(sample: Sample, template: str | None, bos_token: str = "") -> str:
    """Full prompt text (without a leading BOS token) that ends with the answer prefix."""
    if not template:
        return f"{sample.prompt}\n\n{sample.answer_prefix}"
    text = _compile(template).render(
        messages=[{"role": "user", "content": sample.prompt}],
        add_generation_prompt=True, bos_token=bos_token, eos_token="",
    )
    if bos_token and text.startswith(bos_token):
        text = text[len(bos_token):]  # the tokenizer adds BOS itself
    return text + sample.answer_prefix
