"""The llama.cpp build under llama-cpp-python: what it was compiled with, and how sealgguf loads a
model so that it runs on this machine.

ggml's AMX backend (compiled in when llama.cpp is built with -march=native on a CPU with AMX-INT8,
e.g. Sapphire Rapids) repacks weights into its own buffer type, and its matmul segfaults
(llama.cpp issue 20824). tools/setup.sh builds llama-cpp-python without it. For a build that has it
anyway (a wheel built elsewhere), `load_llama` turns off llama.cpp's extra buffer types
(`use_extra_bufts = false`, the same switch as llama-cli's `--no-repack`), which keeps the weights in
plain CPU buffers: slower on such a build, but no crash. `python -m sealgguf.eval.backend` prints
what the build has; `--check` exits 3 if it has the AMX backend.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Iterator

from sealgguf.errors import EnvironmentProblem, SealError
from sealgguf.hardware import cpu_has_amx


@functools.lru_cache(maxsize=None)
def system_info() -> str:
    """llama.cpp's own description of its build ("CPU : SSE3 = 1 | ... | AMX_INT8 = 1 | ...")."""
    try:
        import llama_cpp
    except ImportError:
        raise EnvironmentProblem("eval needs llama-cpp-python (pip install -e '.[eval]' or bash tools/setup.sh)") \
            from None
    return llama_cpp.llama_print_system_info().decode("utf-8", "replace")


def has_amx_backend() -> bool:
    """Whether this llama.cpp build contains ggml's AMX buffer type (the one that crashes)."""
    return "AMX_INT8 = 1" in system_info()


@contextlib.contextmanager
def _no_extra_buffer_types() -> Iterator[None]:
    """Make llama-cpp-python's next model load use plain CPU buffers (use_extra_bufts = false).
    Llama() has no argument for it, so the default-params factory it calls is wrapped for the load."""
    import llama_cpp.llama as llama_module

    low = llama_module.llama_cpp
    original = low.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def load_llama(path, gpu_layers: int = 0, **kwargs):
    """llama_cpp.Llama for `path`, loaded in the way that is safe on this build; a model llama.cpp
    refuses (an architecture it does not know, a tensor it cannot place) is a one-line SealError."""
    from llama_cpp import Llama

    if gpu_layers < -1:
        raise SealError(f"--gpu-layers must be -1 (all), 0 (CPU) or a positive count, got {gpu_layers}")
    guard = _no_extra_buffer_types() if has_amx_backend() else contextlib.nullcontext()
    try:
        with guard:
            return Llama(model_path=str(path), n_gpu_layers=gpu_layers, verbose=False, **kwargs)
    except (ValueError, RuntimeError) as e:
        raise SealError(f"{path}: llama.cpp cannot load this model ({str(e).splitlines()[0]})") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    info = system_info()
    amx = has_amx_backend()
    print(f"llama.cpp build: {info.strip()}")
    print(f"AMX backend compiled in: {'yes (loads fall back to plain CPU buffers)' if amx else 'no'}; "
          f"CPU has AMX-INT8: {'yes' if cpu_has_amx() else 'no'}")
    if "--check" in argv and amx:
        print("sealgguf: error: this llama-cpp-python was built with ggml's AMX backend, which segfaults on AMX "
              "CPUs; rebuild it with bash tools/setup.sh", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
