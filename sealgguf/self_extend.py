"""Self-Extend (Jin et al. 2024), as llama.cpp implements it: group attention by KV-cache position edits
(`--grp-attn-n G --grp-attn-w W` in llama-cli and llama-server). One type for the pipeline, like rope.py.

llama.cpp processes the prompt in batches and, whenever the next position reaches `ga_i + W`, rewrites
the positions of the cached tokens (llama_memory_seq_add / seq_div): the oldest W tokens not yet
grouped are divided into groups of G sharing one position, and everything after them moves down. The
most recent tokens keep exact positions, the older ones grouped positions, so position values stay below
about W + (n - W) / G for n tokens. `shift_steps` is that bookkeeping, ported from llama.cpp's
`examples/main` (ga_n, ga_w, ga_i), and `LlamaRunner` applies it to the cache.

Seen from one query the result is simple (`grouped_key_position`): cut the sequence into windows of W tokens;
a query attends to the keys of its own window at their exact distance, and to every older key at its index
divided by G, shifted so that the window's start sits where grouping leaves it. The tuner's attention
(sealgguf.tune.group_attention) computes exactly that, so scales learn under the positions llama.cpp uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sealgguf.errors import SealError


@dataclass(frozen=True)
class SelfExtend:
    group: int = 1     # G, --grp-attn-n: tokens per group position (1 = off)
    window: int = 0    # W, --grp-attn-w: the span grouped at each step

    @property
    def active(self) -> bool:
        return self.group > 1

    @classmethod
    def from_cli(cls, text: str | None) -> "SelfExtend":
        if not text:
            return cls()
        try:
            g, w = (int(x) for x in text.split(","))
        except ValueError:
            raise SealError(f"--self-extend takes G,W (two integers, e.g. 4,512), got {text!r}") from None
        se = cls(g, w)
        se.check()
        return se

    def check(self) -> None:
        if self.group < 1 or (self.active and self.window < 1):
            raise SealError(f"--self-extend {self.group},{self.window}: G must be >= 1 and W >= 1")
        if self.active and self.window % self.group:
            raise SealError(f"--self-extend {self.group},{self.window}: W must be a multiple of G "
                            "(llama.cpp's rule for --grp-attn-w)")

    def context(self, native: int) -> int:
        """The longest prompt whose positions stay inside a `native` window."""
        if not self.active or not native:
            return native
        return self.window + (native - self.window) * self.group if native > self.window else native

    def llama_cpp_flags(self) -> str:
        return f"--grp-attn-n {self.group} --grp-attn-w {self.window}" if self.active else ""

    def to_dict(self) -> dict | None:
        """The scales file's `self_extend` record, which fold copies to seal.tune.self_extend (None when off)."""
        return {"group": self.group, "window": self.window} if self.active else None

    def to_json(self) -> str:
        return json.dumps(self.to_dict()) if self.active else ""

    @classmethod
    def from_json(cls, data: str | dict | None, where: str = "self_extend") -> "SelfExtend":
        """Parse that record (a JSON string, or the dict it holds); empty means off. Defects: one-line SealError."""
        if not data:
            return cls()
        try:
            spec = json.loads(data) if isinstance(data, str) else data
            g, w = spec["group"], spec["window"]
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (g, w)):
                raise TypeError
        except (ValueError, RecursionError, KeyError, TypeError):
            raise SealError(f"{where}: expected {{\"group\": G, \"window\": W}} with integers, got {str(data)[:80]!r}") from None
        se = cls(g, w)
        try:
            se.check()
        except SealError as e:
            raise SealError(f"{where}: {e}") from None
        return se

    def batch(self, state: "GroupState", n_batch: int) -> int:
        """How many tokens to decode before the next cache edit is due. llama.cpp edits the cache only between
        batches, so a batch must stop where the next W-token window starts; with W a multiple of n_batch that
        is llama-cli's own batching, and with W smaller every window is grouped on time (llama-cli would group
        late, at its next batch boundary)."""
        return min(n_batch, state.ga_i + self.window - state.n_past) if self.active else n_batch


@dataclass
class GroupState:
    """llama.cpp's n_past (the next position to write) and ga_i (where the ungrouped tail starts)."""
    n_past: int = 0
    ga_i: int = 0


def shift_steps(se: SelfExtend, state: GroupState) -> list[tuple[str, int, int, int]]:
    """The cache edits due before writing at state.n_past, as (op, p0, p1, value) with op "add" (shift
    positions in [p0, p1) by value) or "div" (divide them by value); updates `state` as llama.cpp does."""
    ops = []
    G, W = se.group, se.window
    while se.active and state.n_past >= state.ga_i + W:
        ib = (G * state.ga_i) // W
        bd = (W // G) * (G - 1)
        dd = (W // G) - ib * bd - W
        ops += [("add", state.ga_i, state.n_past, ib * bd),
                ("div", state.ga_i + ib * bd, state.ga_i + ib * bd + W, G),
                ("add", state.ga_i + ib * bd + W, state.n_past + ib * bd, dd)]
        state.n_past -= bd
        state.ga_i += W // G
    return ops


def grouped_key_position(se: SelfExtend, window_start: int, key_index):
    """Where a query in the window that starts at token `window_start` (a multiple of W) sees an older key,
    `key_index` < window_start, in a frame where the query sits at its own index: its group (index // G),
    moved up so the window's start keeps its exact distance (window_start - window_start // G). Keys of the
    query's own window sit at their index. Works on ints and on integer tensors; tests check it against
    shift_steps applied to a simulated cache."""
    return window_start - window_start // se.group + key_index // se.group
