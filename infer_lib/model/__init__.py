"""A small Llama-style decoder in plain PyTorch, written to be read and forked.

One file per part: ``config`` (``ModelConfig`` and presets of public models),
``layers`` (RMSNorm, RoPE, attention with selectable backends, SwiGLU MLP,
``Transformer``), ``kv_cache`` (``KVCache``), ``generate`` (prefill, decode,
sampling), ``checkpoint`` (Hugging Face Llama checkpoints in safetensors), ``gqa``
(``to_gqa``: K/V heads mean-pooled into fewer groups, grouped-query attention), ``fast``
(the non-attention work on the Triton kernels, switched in place one rung at a time:
``fuse``, ``use_matmul``, ``quantize``, ``reset``; ``weight_bytes``), ``graphs``
(``GraphedDecoder``: a decode step captured once in a CUDA graph) and ``train``
(the course's own byte-level model trained on the shipped corpus:
``python -m infer_lib.model.train --out-dir DIR``).

    >>> import torch
    >>> from infer_lib.model import ModelConfig, Transformer, generate
    >>> model = Transformer(ModelConfig.from_preset("tiny")).eval()
    >>> tokens = torch.tensor([[1, 2, 3]])
    >>> generate(model, tokens, max_new_tokens=4).shape      # prompt + 4 new tokens
    torch.Size([1, 7])
"""

from .checkpoint import config_from_hf, config_to_hf, from_pretrained, save_pretrained
from .config import (COURSE_MHA, LLAMA_2_7B, LLAMA_3_2_1B, LLAMA_3_8B, LLAMA_3_70B, PRESETS, SMOLLM2_135M,
                     TINY, TINY_MHA, TINY_MQA, ModelConfig, RopeScaling)
from .fast import (FusedTransformer, Int8Linear, MatmulLinear, describe, fuse, quantize, reset, use_matmul,
                   weight_bytes)
from .generate import decode_one_token, generate, generate_uncached, prefill, sample
from .graphs import GraphedDecoder
from .gqa import to_gqa
from .kv_cache import KVCache, max_cached_tokens
from .layers import BACKENDS, Transformer

__all__ = [
    "BACKENDS", "COURSE_MHA", "FusedTransformer", "GraphedDecoder", "Int8Linear", "KVCache", "LLAMA_2_7B", "LLAMA_3_2_1B",
    "LLAMA_3_70B", "LLAMA_3_8B", "MatmulLinear", "ModelConfig",
    "PRESETS", "RopeScaling", "SMOLLM2_135M", "TINY", "TINY_MHA", "TINY_MQA", "Transformer",
    "config_from_hf", "config_to_hf", "decode_one_token", "describe", "from_pretrained", "fuse", "generate",
    "generate_uncached", "max_cached_tokens", "prefill", "quantize", "reset", "sample", "save_pretrained", "to_gqa",
    "use_matmul", "weight_bytes",
]
