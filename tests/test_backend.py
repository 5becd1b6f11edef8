"""Runs on every machine: the llama.cpp build cannot take the AMX path that segfaults, and inspect,
fold and eval work where torch and transformers are not installed."""

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sealgguf import hardware
from sealgguf.eval import backend

# Imports of these modules fail inside the child, as they would in `pip install -e ".[eval]"`.
NO_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "accelerate"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Missing())
    from sealgguf.cli import main
    code = main(sys.argv[1:])
    assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules), "torch was imported"
    sys.exit(code)
""")


def _run_without_torch(*args):
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_llama_cpp_build_has_no_amx_backend():
    """tools/setup.sh builds llama-cpp-python with -mno-amx-int8. A build with the AMX backend crashes on
    AMX CPUs (ggml_backend_amx_mul_mat, llama.cpp issue 20824); sealgguf would then load without extra
    buffer types, but the shipped set-up must not rely on that."""
    assert not backend.has_amx_backend(), backend.system_info()


def test_eval_runs_in_a_fresh_process_on_this_cpu(smollm2):
    """The crash was a segfault in the first llama.cpp evaluation of the suite: run one in a child
    process, so a crash fails this test instead of killing pytest. On a CPU with AMX it is the real check;
    elsewhere it still proves the load and generate path."""
    code = ("from sealgguf.eval.runner import LlamaRunner\n"
            f"r = LlamaRunner({str(smollm2)!r}, n_ctx=256, threads=2)\n"
            "ids = r.encoder.encode('The capital of France is')\n"
            "print(repr(r.generate(ids, 8)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    cpu = "an AMX CPU" if hardware.cpu_has_amx() else "a CPU without AMX"
    assert r.returncode == 0, f"llama.cpp died on {cpu} with status {r.returncode}: {r.stderr[-500:]}"
    assert r.stdout.strip() not in ("", "''")


def test_amx_build_falls_back_to_plain_buffers(monkeypatch, smollm2):
    """With a build that reports AMX, loads go through use_extra_bufts = false (llama-cli's --no-repack)."""
    import llama_cpp.llama as llama_module

    seen = []
    original = llama_module.llama_cpp.llama_model_default_params

    def spy():
        p = original()
        seen.append(p)
        return p

    monkeypatch.setattr(llama_module.llama_cpp, "llama_model_default_params", spy)
    monkeypatch.setattr(backend, "has_amx_backend", lambda: True)
    llm = backend.load_llama(smollm2, n_ctx=64)
    assert seen and seen[-1].use_extra_bufts is False
    llm.close()
    monkeypatch.setattr(backend, "has_amx_backend", lambda: False)
    llm = backend.load_llama(smollm2, n_ctx=64)
    assert seen[-1].use_extra_bufts is True
    llm.close()


def test_backend_check_command():
    r = subprocess.run([sys.executable, "-m", "sealgguf.eval.backend", "--check"], capture_output=True, text=True)
    assert r.returncode == 0 and "AMX backend compiled in: no" in r.stdout


@pytest.mark.slow
def test_inspect_fold_eval_without_torch(smollm2, tmp_path):
    from sealgguf import scales

    model = tmp_path / "m.gguf"
    shutil.copyfile(smollm2, model)
    scales.save(tmp_path / "s.safetensors", np.full((30, 9), 1.1, np.float32), {})
    r = _run_without_torch("inspect", model)
    assert r.returncode == 0 and "9 query heads, 3 KV heads" in r.stdout, r.stderr
    r = _run_without_torch("fold", model, tmp_path / "s.safetensors", "-o", tmp_path / "sealed.gguf")
    assert r.returncode == 0 and (tmp_path / "sealed.gguf").is_file(), r.stderr
    r = _run_without_torch("eval", model, "--compare", tmp_path / "sealed.gguf", "--task", "passkey",
                           "--lengths", "200", "--samples", "2", "--threads", "2", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "| passkey | 200 |" in r.stdout
    r = _run_without_torch("tune", model, "-o", tmp_path / "x.safetensors")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "torch" in r.stderr, r.stderr


def test_no_amx_flag_wins_over_march_native_in_this_compiler():
    """setup.sh relies on -mno-amx-int8 beating the -march=native that GGML_NATIVE adds after it: checked
    here for an AMX target (Sapphire Rapids), in both orders, with this machine's C++ compiler."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")

    def macros(*flags):
        r = subprocess.run([cxx, *flags, "-dM", "-E", "-x", "c++", "-"], input="", capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"{cxx} does not know -march=sapphirerapids")
        return r.stdout

    assert "__AMX_INT8__" in macros("-march=sapphirerapids")
    assert "__AMX_INT8__" not in macros("-mno-amx-int8", "-march=sapphirerapids")
    assert "__AMX_INT8__" not in macros("-march=sapphirerapids", "-mno-amx-int8")
