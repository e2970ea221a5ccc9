"""The kernels' PyTorch references, for machines without Triton (macOS has no Triton wheels).

``infer_lib.kernels`` exports these under the launchers' names when
``device.HAS_TRITON`` is False, so every chapter runs: ``infer_lib.kernels.softmax(x)``
computes ``softmax_ref(x)`` and says so once (``TritonNotInstalledWarning``). They are
the references, not the kernels: nothing here is fast, and nothing here is what a
chapter measures.

The ``<op>_ref`` functions are those of ``<op>_kernel.py`` (fp32 inside, cast back;
NaN and ±inf as there). Those modules import Triton, so their references are read
from the files and compiled here from that text: one copy, which cannot drift; so is
``quantize_int8``, the plain-PyTorch quantiser of ``int8_matmul_kernel.py``. This module
imports no Triton.
"""

from __future__ import annotations

import ast
import warnings
from importlib import resources

import torch

from .. import source
from ..reference import attention_ref
from ._checks import (check_eps, check_int8_matmul_operands, check_int8_scale_values, check_seqlen_values,
                      check_tensor)


class TritonNotInstalledWarning(UserWarning):
    """A launcher ran its PyTorch reference because Triton is not installed."""


_warned: set[str] = set()


def _note(op: str, ref: str) -> None:
    """Say once per launcher that it runs its reference."""
    if op not in _warned:
        _warned.add(op)
        warnings.warn(f"Triton is not installed: infer_lib.kernels.{op} runs its PyTorch reference "
                      f"({ref}), not a Triton kernel. It computes the same values; nothing it does "
                      "says anything about a GPU's speed.", TritonNotInstalledWarning, stacklevel=3)


def _no_config(op: str, config) -> None:
    if config is not None:
        raise ValueError(f"{op}: config= picks a Triton configuration, and Triton is not installed; "
                         "call it without config= to run the PyTorch reference")


# ----------------------------------------------------------------------------
# The references, as in the kernel files
# ----------------------------------------------------------------------------

#: kernel file -> what is compiled from it: its reference, and the plain-PyTorch helpers
#: the launchers need (``quantize_int8`` is the same function with or without Triton)
_FROM_KERNEL_FILES = {op: (f"{op}_ref",) for op in (
    "vector_add", "softmax", "matmul", "matmul_splitk", "flash_attention", "decode_attention",
    "rms_norm", "add_rms_norm", "swiglu", "rope_cache", "paged_decode_attention")}
_FROM_KERNEL_FILES["int8_matmul"] = ("quantize_int8", "int8_matmul_ref")


def _references() -> dict:
    """``<op>_ref`` of each kernel file (and ``quantize_int8``), compiled from that file's own
    statement (the file name and line numbers kept, so tracebacks and ``inspect.getsource``
    point there)."""
    namespace = {"torch": torch, "attention_ref": attention_ref, "check_tensor": check_tensor}
    for op, names in _FROM_KERNEL_FILES.items():
        path = resources.files("infer_lib") / "kernels" / f"{op}_kernel.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name in names:
            node = next(n for n in tree.body if name in source._defined(n))
            namespace["__name__"] = f"infer_lib.kernels.{op}_kernel"     # where it is defined
            exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace


_refs = _references()
vector_add_ref = _refs["vector_add_ref"]
softmax_ref = _refs["softmax_ref"]
matmul_ref = _refs["matmul_ref"]
matmul_splitk_ref = _refs["matmul_splitk_ref"]
flash_attention_ref = _refs["flash_attention_ref"]
decode_attention_ref = _refs["decode_attention_ref"]
rms_norm_ref = _refs["rms_norm_ref"]
add_rms_norm_ref = _refs["add_rms_norm_ref"]
swiglu_ref = _refs["swiglu_ref"]
rope_cache_ref = _refs["rope_cache_ref"]
paged_decode_attention_ref = _refs["paged_decode_attention_ref"]
int8_matmul_ref = _refs["int8_matmul_ref"]
quantize_int8 = _refs["quantize_int8"]


# ----------------------------------------------------------------------------
# The launchers' names, running the references
# ----------------------------------------------------------------------------

def vector_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Without Triton: ``vector_add_ref(x, y)``."""
    _note("vector_add", "vector_add_ref")
    return vector_add_ref(x, y)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Without Triton: ``softmax_ref(x)``."""
    _note("softmax", "softmax_ref")
    return softmax_ref(x)


def matmul(a: torch.Tensor, b: torch.Tensor, *, config=None) -> torch.Tensor:
    """Without Triton: ``matmul_ref(a, b)``."""
    _no_config("matmul", config)
    _note("matmul", "matmul_ref")
    return matmul_ref(a, b)


def matmul_splitk(a: torch.Tensor, b: torch.Tensor, *, config=None) -> torch.Tensor:
    """Without Triton: ``matmul_splitk_ref(a, b)``, the reference of ``matmul``."""
    _no_config("matmul_splitk", config)
    _note("matmul_splitk", "matmul_splitk_ref")
    return matmul_splitk_ref(a, b)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    sm_scale: float | None = None) -> torch.Tensor:
    """Without Triton: ``flash_attention_ref(q, k, v, causal, sm_scale)``."""
    _note("flash_attention", "flash_attention_ref")
    return flash_attention_ref(q, k, v, causal=causal, sm_scale=sm_scale)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                     sm_scale: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """Without Triton: ``decode_attention_ref(q, k_cache, v_cache, cache_seqlens, sm_scale)``."""
    check_seqlen_values("decode_attention", cache_seqlens, k_cache.shape[2])
    _note("decode_attention", "decode_attention_ref")
    return decode_attention_ref(q, k_cache, v_cache, cache_seqlens, sm_scale=sm_scale)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Without Triton: ``rms_norm_ref(x, weight, eps)``."""
    check_eps("rms_norm", eps)
    _note("rms_norm", "rms_norm_ref")
    return rms_norm_ref(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Without Triton: ``add_rms_norm_ref(x, residual, weight, eps)``."""
    check_eps("add_rms_norm", eps)
    _note("add_rms_norm", "add_rms_norm_ref")
    return add_rms_norm_ref(x, residual, weight, eps)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Without Triton: ``swiglu_ref(gate, up)``."""
    _note("swiglu", "swiglu_ref")
    return swiglu_ref(gate, up)


def paged_decode_attention(q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor,
                           block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                           sm_scale: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """Without Triton: ``paged_decode_attention_ref(q, k_blocks, v_blocks, block_table, cache_seqlens,
    sm_scale)``."""
    _note("paged_decode_attention", "paged_decode_attention_ref")
    return paged_decode_attention_ref(q, k_blocks, v_blocks, block_table, cache_seqlens, sm_scale=sm_scale)


def rope_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Without Triton: ``rope_cache_ref(q, k, v, cos, sin, k_cache, v_cache, positions)``."""
    _note("rope_cache", "rope_cache_ref")
    return rope_cache_ref(q, k, v, cos, sin, k_cache, v_cache, positions)


def int8_matmul(a: torch.Tensor, w_q: torch.Tensor, scales: torch.Tensor, *, config=None) -> torch.Tensor:
    """Without Triton: ``int8_matmul_ref(a, w_q, scales)``, after the launcher's checks."""
    _no_config("int8_matmul", config)
    check_int8_matmul_operands("int8_matmul", a, w_q, scales)
    check_int8_scale_values("int8_matmul", scales)
    _note("int8_matmul", "int8_matmul_ref")
    return int8_matmul_ref(a, w_q, scales)
