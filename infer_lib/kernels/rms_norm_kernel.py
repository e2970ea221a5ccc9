"""RMSNorm over the last dimension: one read of ``x``, one write of the output.

Math: for a row ``x`` of ``d`` entries and a weight ``w`` of ``d`` entries,

    rms_norm(x)_j = x_j / √(mean_k(x_k²) + eps) · w_j

(Zhang & Sennrich 2019): LayerNorm without the mean subtraction and the bias. Every
Llama-style block applies it twice per token, before attention and before the MLP. The
sum of squares, the reciprocal square root and both products are computed in fp32
whatever the storage type, and the result is rounded once to x's dtype.
``torch.nn.functional.rms_norm(x, (d,), w, eps)`` computes the same in fp32 but rounds
twice in 16-bit (the normalised row to x's dtype, then its product with ``w``), so the two
may differ by one unit in the last place of fp16 or bf16 — well inside the tests' tolerances.
``rms_norm_ref`` below is the same formula in PyTorch, and the tests hold both to
``F.rms_norm``.

Special values: a row holding a NaN or a ±inf normalises to NaN in every entry. Its norm
is not a number the row can be divided by, and zeros there would be a plausible-looking
answer that hides the problem. PyTorch is not consistent here: ``F.rms_norm`` makes such a
row NaN on a GPU at some widths (9, 1025, 20001 with torch 2.11 on an H200), while at others
(4096, 16384, 70000), and on the CPU, it puts NaN only at the ±inf entry and 0 in the rest
of the row; this kernel gives the whole-row NaN everywhere. It adds ``x − x``
(0 for a finite entry, NaN for NaN or ±inf) to each square, so the sum of squares is NaN
for such a row: no branch, no extra pass. Otherwise IEEE arithmetic with no guard:

* a finite row whose squares overflow fp32 (entries beyond ~1.8e19, which fp32 and bf16 can
  hold) has ``mean(x²) = inf`` and ``1/√inf = 0``: a row of zeros, no NaN, as
  ``F.rms_norm`` on either device (it squares in fp32 too);
* a row of zeros gives zeros (``eps`` > 0 keeps ``1/√eps`` finite);
* NaN or ±inf in ``w`` reaches its column of every row (``±inf · 0 = NaN`` where the
  normalised entry is 0).

Memory traffic: the minimum is one read of ``x`` and one write of the output,
``2 · rows · d · element_size`` bytes, plus ``d`` entries of ``w`` per program (from L2
after the first). Rows up to ``NORM_MAX_FUSED_BLOCK`` = 16384 entries (every model width in
use) are held whole in registers by ``_rms_norm_kernel``, which moves exactly that. Written
as separate PyTorch operations (upcast, square, mean, two products, downcast) the row
passes through HBM once per operation — 6 reads and 5 writes of a row, most of them in
fp32, instead of 1 and 1 (whether ``F.rms_norm`` fuses them depends on the PyTorch version and
device; the bench will measure it). Wider rows go through
``_rms_norm_looped_kernel``: a first pass sums the squares block by block, a second pass
reads the row again to normalise it — one extra read of ``x`` (3 passes over the row
instead of 2; the re-read often comes from L2).

References: B. Zhang, R. Sennrich, "Root Mean Square Layer Normalization" (2019),
https://arxiv.org/abs/1910.07467; Triton tutorial 05 "Layer Normalization"
(https://triton-lang.org/main/getting-started/tutorials/05-layer-norm.html);
``torch.nn.functional.rms_norm``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tuning
from ._checks import check_eps, check_norm_weight, check_rows_contiguous, check_tensor

#: Widest row kept whole on chip (one pass); wider rows take the looped kernel.
MAX_FUSED_BLOCK = _tuning.NORM_MAX_FUSED_BLOCK


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim in fp32, cast back. A row holding NaN or ±inf is NaN
    throughout (the kernel's rule; see the module docstring)."""
    xf = x.float()
    rstd = torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)   # 0 where the squares overflow
    rstd = rstd.masked_fill(~xf.isfinite().all(dim=-1, keepdim=True), float("nan"))
    return (xf * rstd * weight.float()).to(x.dtype)


# n_rows is not specialised: the number of rows (tokens) changes with every call.
# n_cols stays specialised: a model's width is fixed, one compile.
@triton.jit(do_not_specialize=["n_rows"])
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_rows, n_cols, stride_x, stride_out, stride_w, eps,
                     BLOCK: tl.constexpr, ROWS: tl.constexpr):
    # Each program owns ROWS whole rows: a (ROWS, BLOCK) tile.
    pid = tl.program_id(0)
    offs_r = pid * ROWS + tl.arange(0, ROWS)                         # (ROWS,)
    offs_c = tl.arange(0, BLOCK)                                     # (BLOCK,)
    col_ok = offs_c < n_cols
    mask = (offs_r < n_rows)[:, None] & col_ok[None, :]              # (ROWS, BLOCK)
    rows = offs_r.to(tl.int64)[:, None]  # int64: row · stride may pass 2**31
    # Read once from HBM. Padding (columns past n_cols, rows past n_rows) reads as 0: it
    # adds nothing to the sum of squares, and a padding row computes 0 · 1/√eps = 0.
    # fp32 from here on (the interpreter's bf16 arithmetic is broken, triton 3.7.1,
    # 2026-11-26, https://github.com/triton-lang/triton/issues/11584; on the GPU it costs
    # nothing in a memory-bound kernel).
    x = tl.load(x_ptr + rows * stride_x + offs_c[None, :], mask=mask, other=0.0).to(tl.float32)
    # x - x is 0, or NaN where x is NaN or ±inf: such a row's sum, and so the whole row, is NaN.
    rstd = 1.0 / tl.sqrt(tl.sum(x * x + (x - x), axis=1) / n_cols + eps)      # (ROWS,)
    w = tl.load(w_ptr + offs_c * stride_w, mask=col_ok, other=0.0).to(tl.float32)   # (BLOCK,) from L2
    out = x * rstd[:, None] * w[None, :]
    tl.store(out_ptr + rows * stride_out + offs_c[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)            # written once


@triton.jit
def _rms_norm_looped_kernel(x_ptr, w_ptr, out_ptr, n_cols, stride_x, stride_out, stride_w, eps,
                            BLOCK: tl.constexpr):
    # One program per row too wide to hold: two passes over it.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    out_row = out_ptr + row * stride_out
    offs = tl.arange(0, BLOCK)
    # Pass 1: the sum of squares, accumulated elementwise and reduced once at the end.
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        x = tl.load(x_row + cols, mask=cols < n_cols, other=0.0).to(tl.float32)   # (BLOCK,)
        acc += x * x + (x - x)                 # NaN for a NaN or ±inf entry, as above
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n_cols + eps)                    # scalar
    # Pass 2: read the row again (often from L2), normalise, write it once.
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols * stride_w, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_row + cols, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def _launch_fused(x2: torch.Tensor, weight: torch.Tensor, out2: torch.Tensor, eps: float,
                  config: triton.Config):
    """Run ``_rms_norm_kernel`` on 2-D ``x2 (n_rows, n_cols)`` with ``config`` (``BLOCK``, ``ROWS``)."""
    n_rows, n_cols = x2.shape
    grid = (_tuning.cdiv(n_rows, config.kwargs["ROWS"]),)
    return _rms_norm_kernel[grid](x2, weight, out2, n_rows, n_cols, x2.stride(0), out2.stride(0),
                                  weight.stride(0), eps, BLOCK=config.kwargs["BLOCK"],
                                  ROWS=config.kwargs["ROWS"], num_warps=config.num_warps)


def _launch_looped(x2: torch.Tensor, weight: torch.Tensor, out2: torch.Tensor, eps: float,
                   config: triton.Config = _tuning.NORM_LOOP):
    n_rows, n_cols = x2.shape
    return _rms_norm_looped_kernel[(n_rows,)](x2, weight, out2, n_cols, x2.stride(0), out2.stride(0),
                                              weight.stride(0), eps, BLOCK=config.kwargs["BLOCK"],
                                              num_warps=config.num_warps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension of ``x`` (any leading dims), scaled by ``weight``, in x's dtype.

    ``weight`` is 1-D with one entry per column, of x's dtype and device; ``eps`` a finite
    positive number. Computes what ``torch.nn.functional.rms_norm(x, (d,), weight, eps)``
    computes (fp32 inside, rounded once), except that a row holding NaN or ±inf is NaN
    throughout (where PyTorch, at some widths, gives 0 beside a ±inf: module docstring). The last dimension must have stride 1;
    leading dimensions may be strided (rows are addressed through a row stride when they can
    be merged into one, and copied once otherwise).
    """
    check_tensor("rms_norm", "x", x)
    if x.dim() == 0:
        raise ValueError("rms_norm: x is 0-d (a single number); RMSNorm normalises over the last "
                         "dimension, so x needs at least one dimension")
    check_norm_weight("rms_norm", weight, x)
    check_eps("rms_norm", eps)
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one.
        with torch.cuda.device(x.device):
            return rms_norm(x, weight, eps)
    n_cols = x.shape[-1]
    check_rows_contiguous("rms_norm", x=x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    # (rows, n_cols): a view when the leading dims merge into one row stride,
    # otherwise reshape copies (one extra read and write, outside the kernel).
    x2 = x.reshape(-1, n_cols)
    out2 = out.view(-1, n_cols)
    eps = float(eps)
    if n_cols <= MAX_FUSED_BLOCK:
        _launch_fused(x2, weight, out2, eps, _tuning.norm_config(n_cols, x.element_size()))
    else:
        _launch_looped(x2, weight, out2, eps)
    return out
