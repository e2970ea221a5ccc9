"""Elementwise addition ``out = x + y`` — the first Triton kernel of the course.

Math: ``out[i] = x[i] + y[i]`` for every element; one add per element, so the
arithmetic intensity is 1 FLOP per ``3 · bytes_per_element`` bytes — far below
any GPU's balance point. The kernel is memory-bound: its speed limit is HBM
bandwidth, and the goal is to move each byte exactly once.

Memory traffic: reads ``x`` and ``y`` once, writes ``out`` once
(``3 · n · element_size`` bytes). Nothing else touches HBM.

Program layout: a 1-D grid; program ``pid`` owns elements
``[pid · BLOCK_SIZE, (pid + 1) · BLOCK_SIZE)`` and masks the tail.

References: Triton tutorial 01 "Vector addition"
(https://triton-lang.org/main/getting-started/tutorials/01-vector-add.html).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tuning
from ._checks import check_same, check_tensor


def vector_add_ref(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference, computed in fp32 and cast back."""
    return (x.float() + y.float()).to(x.dtype)


@triton.jit
def _vector_add_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    # int64 offsets: tensors of more than 2**31 elements stay addressable
    offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask)  # each byte of x and y read once from HBM
    y = tl.load(y_ptr + offs, mask=mask)
    # Add in fp32 and round once to the output type: the same result as a native
    # 16-bit add, free in a memory-bound kernel, and it sidesteps Triton's CPU
    # interpreter, whose bf16 arithmetic returns garbage (seen with triton 3.7.1,
    # 2026-11-26; see https://github.com/triton-lang/triton/issues/11584).
    out = (x.to(tl.float32) + y.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, out, mask=mask)  # written once


def vector_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` for two contiguous tensors of the same shape, dtype and device."""
    check_tensor("vector_add", "x", x)
    check_tensor("vector_add", "y", y)
    check_same("vector_add", x=x, y=y)
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one.
        with torch.cuda.device(x.device):
            return vector_add(x, y)
    if x.shape != y.shape:
        raise ValueError(f"vector_add: x has shape {tuple(x.shape)} but y has shape "
                         f"{tuple(y.shape)}; the kernel adds elementwise and does not broadcast")
    if not (x.is_contiguous() and y.is_contiguous()):
        raise ValueError("vector_add: x and y must be contiguous (the kernel walks memory "
                         "linearly); call .contiguous() first")
    out = torch.empty_like(x)
    n = out.numel()
    if n == 0:
        return out
    cfg = _tuning.VECTOR_ADD                   # BLOCK_SIZE elements per program
    grid = (_tuning.cdiv(n, cfg.kwargs["BLOCK_SIZE"]),)
    _vector_add_kernel[grid](x, y, out, n, **cfg.kwargs, num_warps=cfg.num_warps)
    return out
