"""Input checks shared by the launchers: messages a learner can act on."""

from __future__ import annotations

import math
import numbers
import os

import torch

from .. import device

SUPPORTED_FLOAT = (torch.float32, torch.float16, torch.bfloat16)


def _names(dtypes) -> str:
    return ", ".join(device.dtype_name(d) for d in dtypes)


def check_tensor(op: str, name: str, t, *, dtypes=SUPPORTED_FLOAT, ndim: int | None = None,
                 any_device: bool = False) -> None:
    """A tensor of one of ``dtypes`` (and ``ndim`` dimensions), on the device the kernels run on
    (a CUDA tensor where there is a GPU, a CPU tensor where there is none; ``any_device``: either,
    for plain PyTorch work such as ``quantize_int8``), not requiring grad in grad mode."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} has dtype {device.dtype_name(t.dtype)}; "
                        f"supported dtypes are {_names(dtypes)}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.device.type not in ("cuda", "cpu"):
        raise ValueError(f"{op}: {name} is on {t.device}; use a CUDA tensor (or a CPU tensor without a GPU)")
    if device.HAS_GPU and t.device.type != "cuda" and not any_device:
        raise ValueError(f"{op}: {name} is on the CPU but this machine has a GPU; Triton kernels "
                         f"run on CUDA tensors here — move it with .cuda()")
    if not device.HAS_GPU and t.device.type != "cpu" and not any_device:
        raise ValueError(f"{op}: {name} is on {t.device} but no GPU is available")
    if t.requires_grad and torch.is_grad_enabled():
        # The launchers return fresh tensors with no autograd graph: a gradient
        # through them would silently be dropped. Refuse instead.
        raise RuntimeError(f"{op}: {name} requires grad, but this is an inference kernel with no "
                           f"backward pass, so the gradient would be silently lost; call it under "
                           f"torch.no_grad() or torch.inference_mode(), or pass {name}.detach()")


def check_same(op: str, **tensors) -> None:
    """All tensors on one device and of one dtype."""
    items = list(tensors.items())
    (n0, t0) = items[0]
    for n, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(f"{op}: {n0} is on {t0.device} but {n} is on {t.device}; put them on one device")
        if t.dtype != t0.dtype:
            raise TypeError(f"{op}: {n0} is {device.dtype_name(t0.dtype)} but {n} is "
                            f"{device.dtype_name(t.dtype)}; cast them to one dtype")


def check_bf16_supported(op: str, t: torch.Tensor) -> None:
    """bfloat16 needs the tensor cores of compute capability 8.0 (Ampere) or newer."""
    if t.dtype == torch.bfloat16 and not device.supports_bf16():
        cap = device.capability()
        raise TypeError(f"{op}: bfloat16 needs tensor cores of compute capability 8.0 or newer and "
                        f"this GPU is sm_{cap[0]}{cap[1]}; use float16")


def check_matmul_operands(op: str, a, b) -> tuple[int, int, int]:
    """``a (M, K)`` and ``b (K, N)``: 2-D, one dtype and device, inner dimensions equal.
    Returns ``(M, K, N)``."""
    check_tensor(op, "a", a, ndim=2)
    check_tensor(op, "b", b, ndim=2)
    check_same(op, a=a, b=b)
    (M, K), (K_b, N) = a.shape, b.shape
    if K != K_b:
        raise ValueError(f"{op}: a is (M, K)={tuple(a.shape)} but b is {tuple(b.shape)}: "
                         f"a.shape[1] must equal b.shape[0]")
    return M, K, N


def check_int8_matmul_operands(op: str, a, w_q, scales) -> tuple[int, int, int]:
    """``a (M, K)`` of a float dtype, ``w_q (K, N)`` int8 and ``scales (N,)`` fp32 (what
    ``quantize_int8`` returns), on one device. Returns ``(M, K, N)``."""
    check_tensor(op, "a", a, ndim=2)
    if isinstance(w_q, torch.Tensor) and w_q.dtype != torch.int8:
        raise TypeError(f"{op}: w_q has dtype {device.dtype_name(w_q.dtype)}; it must be int8, the "
                        "quantised weights that quantize_int8(w) returns with their scales")
    check_tensor(op, "w_q", w_q, dtypes=(torch.int8,), ndim=2)
    if isinstance(scales, torch.Tensor) and scales.dtype != torch.float32:
        raise TypeError(f"{op}: scales has dtype {device.dtype_name(scales.dtype)}; it must be float32, "
                        "one scale per column of w_q, as quantize_int8(w) returns them")
    check_tensor(op, "scales", scales, dtypes=(torch.float32,), ndim=1)
    for name, t in (("w_q", w_q), ("scales", scales)):
        if t.device != a.device:
            raise ValueError(f"{op}: a is on {a.device} but {name} is on {t.device}; put them on one device")
    (M, K), (K_w, N) = a.shape, w_q.shape
    if K != K_w:
        raise ValueError(f"{op}: a is (M, K)={tuple(a.shape)} but w_q is {tuple(w_q.shape)}: "
                         f"a.shape[1] must equal w_q.shape[0]")
    if scales.shape[0] != N:
        raise ValueError(f"{op}: scales has {scales.shape[0]} entries but w_q has N={N} columns "
                         f"(shape {tuple(w_q.shape)}); there is one scale per column")
    return M, K, N


def check_int8_scale_values(op: str, scales: torch.Tensor) -> None:
    """Each scale a finite positive number (``quantize_int8`` never makes another); only where
    ``values_checked`` says reading them is allowed."""
    if not values_checked(scales):
        return
    bad = ~(scales.isfinite() & (scales > 0))
    if bool(bad.any()):
        n = int(bad.nonzero()[0, 0])
        raise ValueError(f"{op}: scales[{n}] = {scales[n].item()} is not a finite positive number; "
                         "each scale is the largest |w| of its column / 127 (1 for a column of zeros) — "
                         "make the scales with quantize_int8(w)")


def check_sm_scale(op: str, sm_scale) -> None:
    """None (the default, 1/√D) or a finite positive real number; a tensor is refused with a hint."""
    if sm_scale is None:
        return
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, numbers.Real):
        hint = " (a tensor: pass sm_scale.item())" if isinstance(sm_scale, torch.Tensor) else ""
        raise TypeError(f"{op}: sm_scale must be a number, got {type(sm_scale).__name__} "
                        f"{sm_scale!r}{hint}")
    try:
        finite_positive = math.isfinite(sm_scale) and sm_scale > 0
    except OverflowError:   # an int beyond the float range
        finite_positive = False
    if not finite_positive:
        raise ValueError(f"{op}: sm_scale must be a finite positive number (the default is 1/√D), "
                         f"got {sm_scale!r}")


def check_eps(op: str, eps) -> None:
    """A normalisation's ``eps``: a finite positive real number (it keeps ``1/√(mean(x²) + eps)``
    finite for a row of zeros); a tensor is refused with a hint."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        hint = " (a tensor: pass eps.item())" if isinstance(eps, torch.Tensor) else ""
        raise TypeError(f"{op}: eps must be a number, got {type(eps).__name__} {eps!r}{hint}")
    try:
        finite_positive = math.isfinite(eps) and eps > 0
    except OverflowError:   # an int beyond the float range
        finite_positive = False
    if not finite_positive:
        raise ValueError(f"{op}: eps must be a finite positive number (1e-6 or 1e-5 in most models), "
                         f"got {eps!r}")


def check_norm_weight(op: str, weight, x: torch.Tensor) -> None:
    """A normalisation's ``weight``: 1-D, one entry per column of ``x`` (its last dim), of x's
    dtype and on x's device."""
    check_tensor(op, "weight", weight, ndim=1)
    check_same(op, x=x, weight=weight)
    if weight.shape[0] != x.shape[-1]:
        raise ValueError(f"{op}: weight has {weight.shape[0]} entries but the last dimension of x has "
                         f"{x.shape[-1]} (x has shape {tuple(x.shape)}); the weight scales each column "
                         "of the normalised row, one entry per column")


def check_heads(op: str, q, kv, kv_names: str = "k and v", head_dims=(16, 32, 64, 128)) -> None:
    """Attention's head counts and head size: ``q``'s ``H`` (dim 1) and ``kv``'s ``H_kv`` (dim 1)
    at least 1, ``H`` a multiple of ``H_kv`` (GQA), ``D`` (the last dim, equal on both) in
    ``head_dims``. ``kv_names`` names the key/value tensors in the messages."""
    H, H_kv, D = q.shape[1], kv.shape[1], q.shape[-1]
    if H == 0:
        raise ValueError(f"{op}: q has H=0 query heads (shape {tuple(q.shape)}); attention needs at "
                         "least one head")
    if H_kv == 0:
        raise ValueError(f"{op}: {kv_names} have H_kv=0 key/value heads (shape {tuple(kv.shape)}); "
                         "every query head needs a key/value head to read")
    if H % H_kv != 0:
        raise ValueError(f"{op}: H={H} query heads is not a multiple of H_kv={H_kv} key/value heads")
    if D not in head_dims:
        raise ValueError(f"{op}: head dim D={D} unsupported: use a power of two from 16 to 128")


def values_checked(t: torch.Tensor) -> bool:
    """Whether a launcher reads a tensor's values to check them: free on the CPU; on a GPU a
    host synchronisation (and impossible inside a CUDA graph), so only with ``INFER_LIB_CHECKS=1``."""
    return t.device.type == "cpu" or os.environ.get("INFER_LIB_CHECKS") == "1"


def seqlen_values_checked(cache_seqlens: torch.Tensor) -> bool:
    """Whether a launcher reads per-sequence lengths to check them (``values_checked``)."""
    return values_checked(cache_seqlens)


def check_seqlen_values(op: str, cache_seqlens: torch.Tensor, S_max: int) -> None:
    """Each length in ``1..S_max`` (it counts the cached tokens, the one being decoded included);
    only where ``seqlen_values_checked`` says reading them is allowed."""
    if not seqlen_values_checked(cache_seqlens):
        return
    bad = (cache_seqlens < 1) | (cache_seqlens > S_max)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise ValueError(f"{op}: cache_seqlens[{b}] = {int(cache_seqlens[b])} is outside 1..{S_max}: "
                         "each length counts the cached tokens of its sequence, the one being "
                         "decoded included, in a cache of S_max positions")


def check_rows_contiguous(op: str, **tensors) -> None:
    """Row kernels read each row of the last dimension as one run of memory: its stride must
    be 1 (any leading strides are fine; the launcher views or copies them into rows)."""
    for name, t in tensors.items():
        if t.numel() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"{op}: the last dimension of {name} must be contiguous (stride 1), got "
                             f"strides {tuple(t.stride())}; the kernel reads each row as one run of "
                             "memory — call .contiguous() first")
