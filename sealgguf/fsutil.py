"""Output files appear whole or not at all: write to a temporary sibling, rename on success."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; it replaces `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Each read and each update takes the GIL back: in 1 MiB pieces, beside fold's Python code, the hash ran at half
# speed (measured, README Benchmarks); 16 MiB pieces take it a few times per 100 MiB.
HASH_CHUNK = 16 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The file's SHA-256 in hex (hashlib releases the GIL: callers hash in a thread beside other work)."""
    h = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def cache_dir(*parts: str) -> Path:
    """sealgguf's cache folder: `$SEALGGUF_CACHE`, else ~/.cache/sealgguf (where tools/setup.sh keeps its wheels).
    Only derived data lives there: deleting it costs time, never a result."""
    return Path(os.environ.get("SEALGGUF_CACHE") or Path.home() / ".cache" / "sealgguf", *parts)
