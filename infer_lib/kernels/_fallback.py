"""The kernels' PyTorch references, for machines without Triton (macOS has no Triton wheels).

``infer_lib.kernels`` exports these under the launchers' names when
``device.HAS_TRITON`` is False, so every chapter runs: ``infer_lib.kernels.softmax(x)``
computes ``softmax_ref(x)`` and says so once (``TritonNotInstalledWarning``). They are
the references, not the kernels: nothing here is fast, and nothing here is what a
chapter measures.

The ``<op>_ref`` functions are the very text of those in ``<op>_kernel.py`` (fp32
inside, cast back; NaN and ±inf as there), copied because those modules import
Triton; ``tests/test_without_triton.py`` checks, with ``infer_lib.source``, that the
copies have not drifted. This module imports no Triton.
"""

from __future__ import annotations

import warnings

import torch

from ..reference import attention_ref


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

def vector_add_ref(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference, computed in fp32 and cast back."""
    return (x.float() + y.float()).to(x.dtype)


def softmax_ref(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim in fp32, cast back; NaN and ±inf behave as in ``torch.softmax``."""
    xf = x.float()
    m = xf.amax(dim=-1, keepdim=True)               # NaN if the row holds NaN (amax propagates it)
    e = torch.exp(xf - m)                           # all-(-inf) row or +inf entry: NaN, as torch
    s = e.sum(dim=-1, keepdim=True)                 # in [1, n] for a row with a finite maximum
    return (e / s).to(x.dtype)


def matmul_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference: the product computed in fp32, cast back to the input type."""
    return (a.float() @ b.float()).to(a.dtype)


#: The reference is the one of ``matmul``: the product in fp32, cast back.
matmul_splitk_ref = matmul_ref


def flash_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        sm_scale: float | None = None) -> torch.Tensor:
    """What ``flash_attention`` computes, in plain PyTorch (fp32 inside, cast back to q's dtype).

    ``infer_lib.reference.attention_ref``: the bottom-right causal mask, GQA by
    indexing, zeros for a query that sees no key, and NaN/±inf as in the module
    docstring — SDPA's math backend applied to the keys each query sees.
    """
    return attention_ref(q, k, v, causal=causal, sm_scale=sm_scale)


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
