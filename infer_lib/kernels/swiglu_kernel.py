"""SwiGLU's gating, ``silu(gate) · up``, elementwise: two reads and one write.

Math: the MLP of a Llama-style block is ``down(silu(gate(x)) · up(x))`` (Shazeer 2020),
with ``silu(g) = g · sigmoid(g) = g / (1 + exp(−g))``. Between the matmuls sits this
elementwise step:

    out_i = silu(gate_i) · up_i

computed in fp32 whatever the storage type and rounded once to the inputs' dtype.
PyTorch's ``F.silu(gate) * up`` rounds twice in 16-bit (the silu, then the product), so
the two may differ by one unit in the last place of fp16 or bf16.

Special values follow ``F.silu(gate) * up`` exactly, through IEEE arithmetic with no guard:
``silu(+inf) = +inf``, ``silu(−inf) = −inf · 0 = NaN`` (as ``F.silu``), ``silu(NaN) = NaN``,
a large negative finite ``gate`` gives ``−0``; then the product (``inf · 0 = NaN``, NaN in
``up`` gives NaN). Where the fp32 product exceeds the dtype's range it becomes ±inf when
rounded, as PyTorch's product does.

Memory traffic: one read of ``gate`` and of ``up``, one write of ``out``,
``3 · n · element_size`` bytes — the minimum. Unfused, ``F.silu`` reads ``gate`` and writes
``silu(gate)``, and the product reads it back with ``up`` and writes ``out``: 5 · n ·
element_size, so the fusion saves 40% of the traffic, and one launch. (Fusing the gating
into the epilogue of the ``gate``/``up`` matmul would save the rest; that is a matmul's
business, not this kernel's.)

Program layout: the inputs are seen as ``(rows, n_cols)`` with a row stride each (one
row of ``numel`` entries when both are contiguous), and a 1-D grid of
``rows · cdiv(n_cols, BLOCK)`` programs, each owning ``BLOCK`` columns of one row. So the
two halves of one fused projection (``gate, up = proj.chunk(2, dim=-1)``, whose rows are
strided) are read in place, without a copy.

References: N. Shazeer, "GLU Variants Improve Transformer" (2020),
https://arxiv.org/abs/2002.05202; ``torch.nn.functional.silu``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tuning
from ._checks import check_rows_contiguous, check_same, check_tensor


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) · up`` in fp32, cast back; NaN and ±inf behave as in ``F.silu(gate) * up``."""
    g = gate.float()
    return (g * torch.sigmoid(g) * up.float()).to(gate.dtype)      # silu(-inf) = -inf · 0 = NaN, as F.silu


# n_rows is not specialised. n_cols is (Triton keys a compile on whether an integer is 1 or
# a multiple of 16, not on its value, so a new batch size does not recompile): knowing that
# n_cols is a multiple of 16 is what lets the masked loads and stores be vectorised. Without
# it the kernel ran at 0.4x the copy bandwidth on an H200 (bf16, 16384 x 4096, 2026-12-02).
@triton.jit(do_not_specialize=["n_rows"])
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, n_rows, n_cols, stride_gate, stride_up, stride_out,
                   BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n_col_blocks = tl.cdiv(n_cols, BLOCK)
    row = (pid // n_col_blocks).to(tl.int64)  # int64: row · stride and the columns may pass 2**31
    offs_c = (pid % n_col_blocks).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)      # (BLOCK,)
    mask = offs_c < n_cols
    # Each byte of gate and up read once from HBM; fp32 arithmetic (the interpreter's bf16
    # arithmetic is broken, triton 3.7.1, 2026-11-26,
    # https://github.com/triton-lang/triton/issues/11584; free on a GPU in a memory-bound kernel).
    g = tl.load(gate_ptr + row * stride_gate + offs_c, mask=mask).to(tl.float32)
    u = tl.load(up_ptr + row * stride_up + offs_c, mask=mask).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(out_ptr + row * stride_out + offs_c, out.to(out_ptr.dtype.element_ty), mask=mask)  # written once


def _rows(t: torch.Tensor, contiguous: bool) -> torch.Tensor:
    """``t`` as 2-D ``(rows, n_cols)``: one row when the inputs are contiguous, else its rows
    (a view where the leading dims merge into one row stride, one copy otherwise)."""
    return t.reshape(1, -1) if contiguous else t.reshape(-1, t.shape[-1])


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) · up`` elementwise, in the inputs' dtype (fp32 inside, rounded once).

    ``gate`` and ``up`` have one shape (any, no broadcasting), dtype and device; the output
    is contiguous. NaN and ±inf give what ``F.silu(gate) * up`` gives. Contiguous inputs are
    read as one run; otherwise the last dimension must have stride 1 and the rows are read
    through their stride (the halves of ``proj.chunk(2, dim=-1)`` need no copy).
    """
    check_tensor("swiglu", "gate", gate)
    check_tensor("swiglu", "up", up)
    check_same("swiglu", gate=gate, up=up)
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate has shape {tuple(gate.shape)} but up has shape "
                         f"{tuple(up.shape)}; they must match (the kernel does not broadcast)")
    if gate.is_cuda and gate.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one.
        with torch.cuda.device(gate.device):
            return swiglu(gate, up)
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    if gate.numel() == 0:
        return out
    contiguous = gate.is_contiguous() and up.is_contiguous()
    if not contiguous:
        check_rows_contiguous("swiglu", gate=gate, up=up)
    g2, u2, out2 = _rows(gate, contiguous), _rows(up, contiguous), _rows(out, contiguous)
    n_rows, n_cols = g2.shape
    cfg = _tuning.swiglu_config()
    grid = (n_rows * _tuning.cdiv(n_cols, cfg.kwargs["BLOCK"]),)
    _swiglu_kernel[grid](g2, u2, out2, n_rows, n_cols, g2.stride(0), u2.stride(0), out2.stride(0),
                         BLOCK=cfg.kwargs["BLOCK"], num_warps=cfg.num_warps)
    return out
