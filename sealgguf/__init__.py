"""sealgguf: learn SEAL attention-head scales and fold them into quantized GGUF models.

Data flow, one sub-package per step:
    tasks  -> synthetic retrieval prompts (lines, passkey, niah, kv, multikey)
    tune   -> learn per-head / per-channel scales in PyTorch      -> scales file
    fold   -> fold scales into blk.N.attn_output.weight (C++)      -> sealed GGUF
    eval   -> measure retrieval in llama.cpp                        -> report
"""

__version__ = "0.1.0"
