"""Row softmax over the last dimension: one read and one write of the data.

Math: for a row ``x`` of ``n`` entries,
``softmax(x)_j = exp(x_j) / Σ_k exp(x_k)``. Computed literally, ``exp``
overflows for ``x_j`` above ~88 in fp32 (~11 in fp16). Softmax does not change
when a constant is subtracted from every entry, so we subtract the row maximum
``m = max_k x_k``: ``softmax(x)_j = exp(x_j − m) / Σ_k exp(x_k − m)``. Now every
exponent is ≤ 0, every ``exp`` lies in (0, 1], and the sum lies in [1, n] — no
overflow for any finite input, however large.

Special values follow ``torch.softmax`` exactly, so the kernel never returns
a plausible-looking answer for a broken input. IEEE arithmetic on the two
per-row scalars ``m`` and ``s = Σ_k exp(x_k − m)`` does it, with no extra pass:

* ``-inf`` entries in a row with at least one finite entry (masked scores):
  ``exp(-inf − m) = 0``, so they get probability exactly 0 and the rest of the
  row is normalised without them.
* A row that is entirely ``-inf`` (fully masked): ``m = -inf`` and
  ``x_j − m = -inf − (-inf) = NaN``, so the whole row is NaN — its softmax is
  0/0, and NaN says so instead of inventing a distribution.
* A ``+inf`` entry: ``m = +inf``, ``+inf − m = NaN`` enters the sum, so the
  whole row is NaN (``torch.softmax`` gives NaN too: ``∞/∞``).
* A NaN entry: ``exp(NaN) = NaN`` enters the sum, so the whole row is NaN.

Rows are independent: a special value never leaks into another row. The
kernels' only guards (a ``tl.where`` on per-row scalars) stop ``-inf − (-inf)``
where it is *not* an answer: in padding rows past the last row, and in the
online kernel's leading blocks of a row whose finite entries come later.
``softmax_ref`` below is the same formula in PyTorch, and the tests hold both
to ``torch.softmax``. (Attention is another matter: ``flash_attention`` returns
zeros for a query whose scores are all masked, as SDPA does.)

The online softmax (Milakov & Gimelshein 2018) processes a row in blocks
without knowing its maximum in advance. Keep a running maximum ``m`` and a
running sum ``s = Σ exp(x_k − m)`` over the entries seen so far; for the next
block ``b``:

    m_new = max(m, max_k b_k)
    s     = s · exp(m − m_new) + Σ_k exp(b_k − m_new)
    m     = m_new

The factor ``exp(m − m_new)`` re-expresses the old sum relative to the new
maximum. After the last block, ``softmax(x)_j = exp(x_j − m) / s``.
FlashAttention applies the same recurrence to attention scores.

Memory traffic: rows up to ``MAX_FUSED_BLOCK`` = 32768 entries (64 KB in
16-bit) fit on chip: ``_softmax_kernel`` holds one or more whole rows in
registers, reads each element once from HBM and writes it once —
``2 · rows · n · element_size`` bytes, the minimum. The widest of them (32768
entries) leave room for one program per SM: those programs are persistent and
pipelined, reading the next rows while they reduce this one
(``_tuning.softmax_config``). Wider rows go through
``_softmax_online_kernel``: a first pass computes ``m`` and ``s`` block by
block, a second pass reads the row again to normalise and write it. That
second read is the price of rows that do not fit (3 passes over the row instead
of 2; the re-read often comes from L2 when the rows in flight fit in it).
Arithmetic is done in fp32 whatever the storage type: free in a memory-bound
kernel.

References: Triton tutorial 02 "Fused softmax"
(https://triton-lang.org/main/getting-started/tutorials/02-fused-softmax.html);
M. Milakov, N. Gimelshein, "Online normalizer calculation for softmax" (2018),
https://arxiv.org/abs/1805.02867.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tuning
from ._checks import check_rows_contiguous, check_tensor

#: Widest row kept whole on chip (one pass); wider rows take the online kernel.
MAX_FUSED_BLOCK = _tuning.SOFTMAX_MAX_FUSED_BLOCK


def softmax_ref(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim in fp32, cast back; NaN and ±inf behave as in ``torch.softmax``."""
    xf = x.float()
    m = xf.amax(dim=-1, keepdim=True)               # NaN if the row holds NaN (amax propagates it)
    e = torch.exp(xf - m)                           # all-(-inf) row or +inf entry: NaN, as torch
    s = e.sum(dim=-1, keepdim=True)                 # in [1, n] for a row with a finite maximum
    return (e / s).to(x.dtype)


# n_rows is not specialised: Triton would otherwise compile again whenever the
# number of rows (tokens in the batch) changes its divisibility by 16 or becomes
# 1. n_cols stays specialised: a model's width is fixed, so it costs one compile,
# and knowing it is a multiple of 16 lets the masked loads vectorise.
@triton.jit(do_not_specialize=["n_rows"])
def _softmax_kernel(x_ptr, out_ptr, n_rows, n_cols, stride_x, stride_out,
                    BLOCK: tl.constexpr, ROWS: tl.constexpr, NUM_STAGES: tl.constexpr):
    # Each step of the loop owns ROWS whole rows: a (ROWS, BLOCK) tile. With a
    # grid smaller than the number of tiles the program is persistent and the
    # loop software-pipelines the next tile's loads under this tile's math.
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(n_rows, ROWS)
    offs_c = tl.arange(0, BLOCK)
    for tile in tl.range(pid, n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        offs_r = tile * ROWS + tl.arange(0, ROWS)                 # (ROWS,)
        row_ok = offs_r < n_rows                           # the last tile may run past n_rows
        mask = row_ok[:, None] & (offs_c[None, :] < n_cols)       # (ROWS, BLOCK)
        rows = offs_r.to(tl.int64)[:, None]  # int64: row · stride may pass 2**31
        # Read once from HBM; padding reads as -inf so it gets probability 0.
        # fp32 from here on (the interpreter's bf16 arithmetic is broken, triton
        # 3.7.1, 2026-11-26, https://github.com/triton-lang/triton/issues/11584;
        # on the GPU it costs nothing in a memory-bound kernel).
        x = tl.load(x_ptr + rows * stride_x + offs_c[None, :], mask=mask,
                    other=float("-inf")).to(tl.float32)          # (ROWS, BLOCK)
        # Padding rows (past n_rows, never stored) are all -inf: shift them by 0
        # and divide them by 1 so they compute zeros, not NaN. Real rows get no
        # guard: an all -inf row (m = -inf), a +inf or a NaN makes its own row
        # NaN through IEEE arithmetic, as torch.softmax does. Both wheres act
        # on (ROWS,) scalars: free.
        m = tl.where(row_ok, tl.max(x, axis=1), 0.0)             # (ROWS,)
        e = tl.exp(x - m[:, None])                # in [0, 1] for a finite m: no overflow
        s = tl.sum(e, axis=1)                                     # (ROWS,) in [1, n], or NaN
        out = e * (1.0 / tl.where(row_ok, s, 1.0))[:, None]       # one division per row
        tl.store(out_ptr + rows * stride_out + offs_c[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask)     # written once


@triton.jit
def _softmax_online_kernel(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK: tl.constexpr):
    # One program per row that is too wide to hold: two passes over it.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    out_row = out_ptr + row * stride_out
    offs = tl.arange(0, BLOCK)
    # Pass 1: running max m and running sum s = Σ exp(x - m), block by block.
    m = tl.max(tl.full([BLOCK], float("-inf"), tl.float32), axis=0)    # scalar -inf
    s = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)                   # scalar 0
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        x = tl.load(x_row + cols, mask=cols < n_cols,
                    other=float("-inf")).to(tl.float32)                   # (BLOCK,)
        m_new = tl.maximum(m, tl.max(x, axis=0))                                            # scalar
        # Until a finite entry has been seen m_new is -inf; shift by 0 instead
        # (exp(-inf - 0) = 0) so that leading masked blocks add 0, not
        # -inf - (-inf) = NaN, to a row that has finite entries further on.
        # A +inf or NaN still makes s NaN, and NaN stays NaN in later blocks.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
        m = m_new
    # No guard here: s is in [1, n] for a row with a finite maximum; a row that
    # is all -inf keeps m = -inf (x - m = NaN below), and a +inf or NaN left
    # s = NaN: the whole row comes out NaN, as torch.softmax gives.
    inv_s = 1.0 / s
    # Pass 2: read the row again, normalise, write it once.
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        x = tl.load(x_row + cols, mask=cols < n_cols,
                    other=float("-inf")).to(tl.float32)                   # (BLOCK,)
        out = tl.exp(x - m) * inv_s
        tl.store(out_row + cols, out.to(out_ptr.dtype.element_ty), mask=cols < n_cols)


def _launch_fused(x2: torch.Tensor, out2: torch.Tensor, block: int, rows: int, num_warps: int,
                  num_stages: int = 1, programs: int | None = None):
    """Run ``_softmax_kernel`` on 2-D ``x2 (n_rows, n_cols)``.

    ``programs`` caps the grid: each program then loops over several tiles
    (persistent), and ``num_stages`` > 1 prefetches the next tile's rows.
    """
    n_rows, n_cols = x2.shape
    n_tiles = _tuning.cdiv(n_rows, rows)
    grid = (n_tiles if programs is None else max(1, min(programs, n_tiles)),)
    return _softmax_kernel[grid](x2, out2, n_rows, n_cols, x2.stride(0), out2.stride(0),
                                 BLOCK=block, ROWS=rows, NUM_STAGES=num_stages, num_warps=num_warps)


def _launch_online(x2: torch.Tensor, out2: torch.Tensor, block: int = _tuning.SOFTMAX_ONLINE.kwargs["BLOCK"],
                   num_warps: int = _tuning.SOFTMAX_ONLINE.num_warps):
    n_rows, n_cols = x2.shape
    return _softmax_online_kernel[(n_rows,)](x2, out2, n_cols, x2.stride(0), out2.stride(0),
                                             BLOCK=block, num_warps=num_warps)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of ``x`` (any leading dims), in x's dtype.

    NaN and ±inf give what ``torch.softmax`` gives: ``-inf`` entries get
    probability 0, and a row that is entirely ``-inf``, or holds a ``+inf`` or a
    NaN, comes out all NaN. The last dimension must have
    stride 1; leading dimensions may be strided (rows are addressed through a
    row stride when they can be merged into one, and copied once otherwise).
    """
    check_tensor("softmax", "x", x)
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one.
        with torch.cuda.device(x.device):
            return softmax(x)
    if x.dim() == 0:
        raise ValueError("softmax: x is 0-d (a single number); softmax normalises over the last "
                         "dimension, so x needs at least one dimension")
    n_cols = x.shape[-1]
    check_rows_contiguous("softmax", x=x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    # (rows, n_cols): a view when the leading dims merge into one row stride,
    # otherwise reshape copies (one extra read and write, outside the kernel).
    x2 = x.reshape(-1, n_cols)
    out2 = out.view(-1, n_cols)
    if n_cols <= MAX_FUSED_BLOCK:
        cfg = _tuning.softmax_config(n_cols, x.element_size())
        # num_stages > 1: persistent, one program per SM with the next rows in flight
        programs = _tuning.sm_count() if cfg.num_stages > 1 else None
        _launch_fused(x2, out2, cfg.kwargs["BLOCK"], cfg.kwargs["ROWS"], cfg.num_warps,
                      cfg.num_stages, programs)
    else:
        _launch_online(x2, out2)
    return out
