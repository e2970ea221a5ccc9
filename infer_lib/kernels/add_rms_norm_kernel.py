"""Residual add fused with RMSNorm: ``h = x + residual`` and ``rms_norm(h)`` in one pass.

Math: every transformer block ends a sub-layer with ``h = x + residual`` (the residual
stream) and starts the next one with ``rms_norm(h)``:

    h_j   = x_j + residual_j
    out_j = h_j / √(mean_k(h_k²) + eps) · w_j

Both are returned: ``h`` is the residual stream the next block adds to, ``out`` the input
of its attention or MLP.

Precision of the sum — defined so that the fused result is the unfused one: ``h`` is
computed in fp32 and **rounded once to x's dtype**, and that rounded ``h`` is what is
stored and what is normalised (in fp32, rounded once at the end). That is what PyTorch
computes for ``h = x + residual; out = F.rms_norm(h, (d,), w, eps)`` in x's dtype: the
returned ``h`` equals ``x + residual`` bit for bit, and ``out`` equals ``rms_norm(h)``
within the one-rounding difference of ``rms_norm_kernel``. A norm taken from the unrounded
fp32 sum would be slightly more accurate, but it would not be the norm of the ``h`` the
next block sees. In fp16 a sum beyond 65504 rounds to ±inf, so its row's norm is NaN
throughout, as for any row holding ±inf (below).

Special values: ``h`` is the IEEE sum, as ``torch.add`` (``inf + (-inf) = NaN``), and
``out`` is ``rms_norm`` of that ``h`` — a row of ``h`` holding NaN or ±inf is NaN throughout
(``rms_norm_kernel``'s rule, where PyTorch's ``F.rms_norm`` depends on the device and width).

Memory traffic: the minimum is reading ``x`` and ``residual`` once and writing ``h`` and
``out`` once, ``4 · rows · d · element_size`` bytes (plus ``d`` entries of ``w`` per
program, from L2 after the first). Unfused, ``torch.add`` moves 3 of those (2 reads, 1
write) and ``rms_norm`` reads ``h`` back from HBM and writes ``out``: 5 · rows · d ·
element_size, so the fusion saves one pass over the row (20%), and one launch. Rows up to
``NORM_MAX_FUSED_BLOCK`` = 16384 entries are held whole in registers by
``_add_rms_norm_kernel``, which moves the minimum. Wider rows go through
``_add_rms_norm_looped_kernel``: a first pass writes ``h`` and sums its squares block by
block; a second pass reads ``x`` and ``residual`` again and recomputes ``h`` (the same
rounding, so the same values) to normalise it — 6 passes over the row instead of 4. It
re-reads the inputs rather than the ``h`` it just wrote because, without a barrier, nothing
promises that one thread sees another thread's global stores of the same program.

References: B. Zhang, R. Sennrich, "Root Mean Square Layer Normalization" (2019),
https://arxiv.org/abs/1910.07467; the fused add + RMSNorm of serving engines (vLLM's
``fused_add_rms_norm``, https://github.com/vllm-project/vllm/blob/main/csrc/layernorm_kernels.cu).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tuning
from ._checks import check_eps, check_norm_weight, check_rows_contiguous, check_same, check_tensor

#: Widest row kept whole on chip (one pass); wider rows take the looped kernel.
MAX_FUSED_BLOCK = _tuning.NORM_MAX_FUSED_BLOCK


def add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, rms_norm(h))`` for ``h = x + residual`` rounded to x's dtype; fp32 inside, cast back."""
    h = (x.float() + residual.float()).to(x.dtype)       # what x + residual gives in x's dtype
    hf = h.float()                                        # the norm is that of the rounded h
    rstd = torch.rsqrt(hf.square().mean(dim=-1, keepdim=True) + eps)
    rstd = rstd.masked_fill(~hf.isfinite().all(dim=-1, keepdim=True), float("nan"))   # as rms_norm_ref
    return h, (hf * rstd * weight.float()).to(x.dtype)


# n_rows is not specialised (it changes with every call); n_cols is (a model's width is fixed).
@triton.jit(do_not_specialize=["n_rows"])
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, h_ptr, out_ptr, n_rows, n_cols,
                         stride_x, stride_res, stride_h, stride_out, stride_w, eps,
                         BLOCK: tl.constexpr, ROWS: tl.constexpr):
    # Each program owns ROWS whole rows: a (ROWS, BLOCK) tile.
    pid = tl.program_id(0)
    offs_r = pid * ROWS + tl.arange(0, ROWS)                         # (ROWS,)
    offs_c = tl.arange(0, BLOCK)                                     # (BLOCK,)
    col_ok = offs_c < n_cols
    mask = (offs_r < n_rows)[:, None] & col_ok[None, :]              # (ROWS, BLOCK)
    rows = offs_r.to(tl.int64)[:, None]  # int64: row · stride may pass 2**31
    # Read once from HBM; padding reads as 0 (adds nothing to the sum of squares).
    # fp32 arithmetic (the interpreter's bf16 arithmetic is broken, triton 3.7.1,
    # 2026-11-26, https://github.com/triton-lang/triton/issues/11584).
    x = tl.load(x_ptr + rows * stride_x + offs_c[None, :], mask=mask, other=0.0).to(tl.float32)
    r = tl.load(res_ptr + rows * stride_res + offs_c[None, :], mask=mask, other=0.0).to(tl.float32)
    # The sum rounded to the storage dtype: stored, and normalised as stored (the docstring's
    # "precision of the sum"), so the fused result is the unfused one.
    h = (x + r).to(h_ptr.dtype.element_ty)
    tl.store(h_ptr + rows * stride_h + offs_c[None, :], h, mask=mask)   # written once
    hf = h.to(tl.float32)
    # hf - hf is 0, or NaN where h is NaN or ±inf: such a row is NaN throughout, as rms_norm.
    rstd = 1.0 / tl.sqrt(tl.sum(hf * hf + (hf - hf), axis=1) / n_cols + eps)        # (ROWS,)
    w = tl.load(w_ptr + offs_c * stride_w, mask=col_ok, other=0.0).to(tl.float32)   # (BLOCK,) from L2
    out = hf * rstd[:, None] * w[None, :]
    tl.store(out_ptr + rows * stride_out + offs_c[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)                # written once


@triton.jit
def _add_rms_norm_looped_kernel(x_ptr, res_ptr, w_ptr, h_ptr, out_ptr, n_cols,
                                stride_x, stride_res, stride_h, stride_out, stride_w, eps,
                                BLOCK: tl.constexpr):
    # One program per row too wide to hold: two passes over it.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    res_row = res_ptr + row * stride_res
    offs = tl.arange(0, BLOCK)
    # Pass 1: h = x + residual, rounded and written once; the sum of squares of the rounded h.
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)           # (BLOCK,)
        r = tl.load(res_row + cols, mask=mask, other=0.0).to(tl.float32)
        h = (x + r).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + row * stride_h + cols, h, mask=mask)
        hf = h.to(tl.float32)
        acc += hf * hf + (hf - hf)             # NaN for a NaN or ±inf entry, as above
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n_cols + eps)                    # scalar
    # Pass 2: read x and residual again (often from L2) and recompute the same rounded h
    # rather than read back the h stored above (see the docstring), normalise, write once.
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(res_row + cols, mask=mask, other=0.0).to(tl.float32)
        hf = (x + r).to(h_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols * stride_w, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_out + cols, (hf * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def _launch_fused(x2, res2, weight, h2, out2, eps: float, config: triton.Config):
    """Run ``_add_rms_norm_kernel`` on 2-D ``(n_rows, n_cols)`` views with ``config`` (``BLOCK``, ``ROWS``)."""
    n_rows, n_cols = x2.shape
    grid = (_tuning.cdiv(n_rows, config.kwargs["ROWS"]),)
    return _add_rms_norm_kernel[grid](x2, res2, weight, h2, out2, n_rows, n_cols,
                                      x2.stride(0), res2.stride(0), h2.stride(0), out2.stride(0),
                                      weight.stride(0), eps, BLOCK=config.kwargs["BLOCK"],
                                      ROWS=config.kwargs["ROWS"], num_warps=config.num_warps)


def _launch_looped(x2, res2, weight, h2, out2, eps: float, config: triton.Config = _tuning.NORM_LOOP):
    n_rows, n_cols = x2.shape
    return _add_rms_norm_looped_kernel[(n_rows,)](x2, res2, weight, h2, out2, n_cols,
                                                  x2.stride(0), res2.stride(0), h2.stride(0), out2.stride(0),
                                                  weight.stride(0), eps, BLOCK=config.kwargs["BLOCK"],
                                                  num_warps=config.num_warps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, rms_norm(h, weight, eps))`` with ``h = x + residual``, both in x's dtype, in one pass.

    ``h`` is rounded to x's dtype and the norm is computed from that rounded ``h`` (in fp32),
    so the pair equals PyTorch's unfused ``h = x + residual; F.rms_norm(h, (d,), weight, eps)``
    — ``h`` bit for bit, the norm within one rounding. ``x`` and ``residual`` have one shape
    (no broadcasting), dtype and device; ``weight`` is 1-D with one entry per column. The last
    dimension must have stride 1; leading dimensions may be strided (copied once where they
    do not merge into one row stride).
    """
    op = "add_rms_norm"
    check_tensor(op, "x", x)
    check_tensor(op, "residual", residual)
    check_same(op, x=x, residual=residual)
    if x.shape != residual.shape:
        raise ValueError(f"{op}: x has shape {tuple(x.shape)} but residual has shape "
                         f"{tuple(residual.shape)}; they must match (the kernel does not broadcast)")
    if x.dim() == 0:
        raise ValueError(f"{op}: x is 0-d (a single number); RMSNorm normalises over the last "
                         "dimension, so x needs at least one dimension")
    check_norm_weight(op, weight, x)
    check_eps(op, eps)
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one.
        with torch.cuda.device(x.device):
            return add_rms_norm(x, residual, weight, eps)
    n_cols = x.shape[-1]
    check_rows_contiguous(op, x=x, residual=residual)
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return h, out
    # (rows, n_cols): views when the leading dims merge into one row stride, else one copy.
    x2, res2 = x.reshape(-1, n_cols), residual.reshape(-1, n_cols)
    h2, out2 = h.view(-1, n_cols), out.view(-1, n_cols)
    eps = float(eps)
    if n_cols <= MAX_FUSED_BLOCK:
        _launch_fused(x2, res2, weight, h2, out2, eps, _tuning.norm_config(n_cols, x.element_size()))
    else:
        _launch_looped(x2, res2, weight, h2, out2, eps)
    return h, out
