import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# the tests' own conversion cache (sealgguf.tune.gguf_loader): never the user's, filled by the first load of each model
os.environ["SEALGGUF_CACHE"] = tempfile.mkdtemp(prefix="sealgguf-test-cache-")
atexit.register(shutil.rmtree, os.environ["SEALGGUF_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from sealgguf.models import resolve

    return resolve("smollm2")


@pytest.fixture(scope="session")
def gemma3() -> Path:
    from sealgguf.models import resolve

    return resolve("gemma3")


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def bundled_gguf(request):
    """Each bundled model in turn: (path, its validated GGUF header, its attention layout)."""
    from sealgguf.gguf_file import open_gguf, read_layout

    path = request.getfixturevalue(request.param)
    src = open_gguf(path)
    return path, src, read_layout(src, path)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2):
    """SmolLM2 in transformers, dequantized from the bundled Q4_1 GGUF (loaded once per session)."""
    import torch
    from transformers.utils import logging

    from sealgguf.tune.model import load

    logging.disable_progress_bar()
    torch.manual_seed(0)
    return load(smollm2, "cpu")


@pytest.fixture(scope="session")
def vocab_smollm2(smollm2):
    """llama.cpp's tokenizer for SmolLM2, without the weights."""
    from llama_cpp import Llama

    from sealgguf.gguf_file import open_gguf
    from sealgguf.tokens import PromptEncoder, gguf_adds_bos

    llm = Llama(model_path=str(smollm2), vocab_only=True, verbose=False)
    reader = open_gguf(smollm2)
    return PromptEncoder(encode=lambda t: llm.tokenize(t.encode(), add_bos=False, special=True),
                         bos_id=llm.token_bos() if gguf_adds_bos(reader) else None,
                         chat_template=reader.value("tokenizer.chat_template"))
