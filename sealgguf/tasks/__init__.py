"""Synthetic long-context retrieval tasks, one module per format.

    lines     LongEval line retrieval (SEAL's main task)
    passkey   llama.cpp's passkey format
    niah      needle in a haystack over Paul Graham essays
    kv        key-value retrieval over UUIDs
    multikey  several needles, one asked for
"""

from __future__ import annotations

from sealgguf.errors import SealError
from sealgguf.tasks.base import Sample, Task, make_sample
from sealgguf.tasks.kv import KvTask
from sealgguf.tasks.lines import LinesTask
from sealgguf.tasks.multikey import MultikeyTask
from sealgguf.tasks.niah import NiahTask
from sealgguf.tasks.passkey import PasskeyTask

TASKS = {"lines": LinesTask, "passkey": PasskeyTask, "niah": NiahTask, "kv": KvTask, "multikey": MultikeyTask}


def get_task(name: str, train: bool = False) -> Task:
    if name not in TASKS:
        raise SealError(f"unknown task {name!r} (choose from: {', '.join(TASKS)})")
    return NiahTask(train=train) if name == "niah" else TASKS[name]()


def parse_tasks(spec: str) -> list[str]:
    names = [t.strip() for t in spec.split(",") if t.strip()]
    for n in names:
        get_task(n)
    return names


__all__ = ["Sample", "Task", "TASKS", "get_task", "make_sample", "parse_tasks"]
