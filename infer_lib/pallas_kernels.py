"""The fused RMSNorm written in Pallas, JAX's kernel language, for the chapter on other authoring tools.

Chapter 8 writes one kernel three ways: in CUDA (``infer_lib.cuda_kernels``: threads and
blocks by hand), in Triton (``infer_lib/kernels/rms_norm_kernel.py``: one *program* per
block of rows, vectors of a block instead of threads) and here in Pallas.

Pallas (``jax.experimental.pallas``) is JAX's kernel language. A kernel body is a Python
function that works on *refs* — mutable views of blocks in fast memory — instead of
pointers: it reads a block with ``x_ref[...]``, computes on it with ``jax.numpy``, and writes
with ``o_ref[...] = ...``. Which block each ref holds is not computed in the body, as
Triton's ``pid * ROWS + tl.arange(0, ROWS)`` is, but declared outside it: a ``grid`` of
program instances (as a Triton launch grid) and, for every input and output, a
``pl.BlockSpec(block_shape, index_map)`` that carves the blocks from the array — program
``i`` gets the block at block index ``index_map(i)``. ``pl.pallas_call`` ties the body, the
grid and the specs together into a function on JAX arrays. Where it runs:

- on an NVIDIA GPU, Pallas lowers the body to Triton (the backend ``pl.pallas_call`` picks by
  default), which compiles it as it compiles a Triton kernel. XLA's Triton support needs
  compute capability 8.0: on a T4 (7.5) the kernels run in interpret mode instead
  (https://github.com/jax-ml/jax/issues/26799). jax 0.11 deprecates this backend in favour of
  Mosaic GPU, Pallas' other GPU backend, which has its own API and targets Hopper and newer,
  and warns at every compile; the launcher silences that one warning;
- on a TPU, to Mosaic (which also wants the last two dims of a block to be multiples of 8
  and 128, or whole: this file is written for the GPU and interpret mode);
- without either, with ``interpret=True``: JAX runs the grid as a loop of ordinary XLA
  operations on the CPU (Pallas has no CPU code generator).

The mapping onto the Triton kernel ``_rms_norm_kernel`` is one to one: one program per
block of ``ROWS`` whole rows (``BlockSpec((ROWS, N_pad), lambda i: (i, 0))``), the weight
the same block of ``N_pad`` entries for every program (``BlockSpec((N_pad,), lambda i:
(0,))``), fp32 arithmetic whatever the storage type, ``1/√(mean(x²) + eps)``, one read of
``x`` and one write of the output per program, rounded once to x's dtype. What differs is
the edges. A Triton program masks its loads and stores (``mask = offs_c < n_cols``), so a
block may hang over the end of a row. Pallas' Triton lowering needs power-of-two block shapes
and the generic API has no masks, so the launcher pads the array instead: columns to the
next power of two and rows to a multiple of ``ROWS``, with zeros, and slices the result
back. Zeros add nothing to the sum of squares, and the mean divides by the true width.
The padding is a copy of ``x`` before the kernel and of the output after it — traffic the
Triton kernel's masks avoid, and one of the things Pallas' block model leaves to you. (The
Triton backend's own ``jax.experimental.pallas.triton.load``/``store`` take masks, at the
price of a kernel tied to that backend.)

Special values follow ``infer_lib.kernels.rms_norm``: a row holding a NaN or a ±inf comes
out NaN in every entry, through the same ``x − x`` term added to each square (0 for a
finite entry, NaN otherwise); a finite row whose squares overflow fp32 gives zeros; NaN or
±inf in ``weight`` reaches its column.

Interpret mode shows what the kernel *means*: which block each program reads and writes,
the fp32 arithmetic, the NaN rule, what the padding does. It does not show speed (the
programs run one after another as XLA operations on the CPU), registers, or what the GPU
lowering refuses: it accepts any block shape, so the launcher enforces the power-of-two rule
itself, and the blocks that pass here are blocks the GPU accepts. Nothing is timed in it.

jax is an optional dependency (``pip install jax``, or the package's extra
``infer-lib[pallas]``); this module is the only one of ``infer_lib`` that imports it, so
``import infer_lib`` works without it. From ``infer_lib`` it imports only ``device``.

References: the Pallas documentation (quickstart, "Grids and BlockSpecs"),
https://docs.jax.dev/en/latest/pallas/; B. Zhang, R. Sennrich, "Root Mean Square Layer
Normalization" (2019), https://arxiv.org/abs/1910.07467.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import warnings
from typing import NamedTuple

import numpy as np

from . import device  # only its installed(); importing infer_lib already ran it

# Without this, JAX reserves 75% of the GPU's memory the first time it touches the GPU and
# starves the PyTorch cells of the same notebook (and PyTorch's reservations starve JAX).
# It must be in the environment before JAX first uses the GPU; a value the user set stays.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _require_jax() -> None:
    if not all(device.installed(name) for name in ("jax", "jaxlib")):
        raise ImportError(
            "infer_lib.pallas_kernels needs JAX (its kernel language Pallas): `pip install jax` "
            "(the CPU build; without a GPU the kernels run in Pallas' interpret mode), or the "
            "package's extra `pip install 'infer-lib[pallas]'`, then restart the Python kernel. "
            "On a GPU, install JAX's CUDA build (`pip install 'jax[cuda13]'`)."
        )


_require_jax()

import jax  # noqa: E402  (after the check and the environment variable)
import jax.numpy as jnp  # noqa: E402
from jax.experimental import pallas as pl  # noqa: E402

#: The storage types the kernel accepts (it computes in fp32 whatever the storage type).
DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)
#: Widest row: a row is one block, held whole on chip (``rms_norm_kernel.MAX_FUSED_BLOCK``
#: of the Triton kernel, every model width in use). The Triton launcher loops over wider rows.
MAX_WIDTH = 16384
#: Most entries in one block: the Triton lowering's 4 warps (128 threads, Pallas' default)
#: then hold at most 128 fp32 values each.
MAX_BLOCK_ELEMENTS = 16384
#: Entries per block the default ``block_rows`` aims at: 32 fp32 values per thread.
TARGET_BLOCK_ELEMENTS = 4096
#: XLA compiles Triton kernels from compute capability 8.0 (Ampere) on.
MIN_CAPABILITY = (8, 0)


def _capability(dev) -> tuple[int, int] | None:
    cc = getattr(dev, "compute_capability", None)   # "9.0" on an H100; absent on ROCm
    try:
        major, minor = str(cc).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _compiles_here() -> tuple[bool, str]:
    """Whether Pallas compiles for JAX's default device, and the device in words."""
    if jax.default_backend() != "gpu":
        return False, f"JAX sees no GPU (backend {jax.default_backend()!r})"
    dev = jax.devices()[0]
    cc = _capability(dev)
    if cc is not None and cc < MIN_CAPABILITY:
        return False, (f"{dev.device_kind}, compute capability {cc[0]}.{cc[1]}: Pallas' Triton "
                       f"lowering needs {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}")
    return True, dev.device_kind


#: True when the kernels run with ``interpret=True`` (no GPU for JAX, or one Pallas cannot
#: compile for), False on a GPU, where Pallas compiles them through Triton.
INTERPRET: bool = not _compiles_here()[0]


def describe() -> str:
    """One line: where the kernels of this module run."""
    compiles, where = _compiles_here()
    how = ("compiled by Pallas (Triton lowering) for the GPU" if compiles
           else "in Pallas' interpret mode (semantics, not speed)")
    return f"Pallas kernels run {how} · {where} · jax {jax.__version__}"


# ----------------------------------------------------------------------------
# The reference
# ----------------------------------------------------------------------------

def rms_norm_ref(x, weight, eps: float = 1e-6) -> np.ndarray:
    """NumPy reference: RMSNorm over the last dim in fp32, cast back to x's dtype (a NumPy
    array; bfloat16 is ml_dtypes'). A row holding NaN or ±inf is NaN throughout, as in
    ``infer_lib.kernels.rms_norm_ref``."""
    x = np.asarray(x)
    xf = x.astype(np.float32)
    with np.errstate(over="ignore"):   # squares past fp32's range: inf, then 1/√inf = 0
        rstd = 1.0 / np.sqrt(np.mean(np.square(xf), axis=-1, keepdims=True) + np.float32(eps))
    rstd = np.where(np.isfinite(xf).all(axis=-1, keepdims=True), rstd, np.float32("nan"))
    with np.errstate(invalid="ignore"):   # inf · 0 where a row's rstd is 0: NaN, as on the GPU
        return (xf * rstd * np.asarray(weight).astype(np.float32)).astype(x.dtype)


# ----------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------

def _rms_norm_kernel(x_ref, w_ref, o_ref, *, n_cols: int, eps: float):
    # This program's block: ROWS whole (padded) rows, carved by the BlockSpec.
    x = x_ref[...].astype(jnp.float32)                              # (ROWS, N_pad), read once
    # x - x is 0, or NaN where x is NaN or ±inf: such a row's sum, and so the whole row, is NaN.
    # Padding columns are 0 and add nothing; the mean divides by the true width.
    rstd = 1.0 / jnp.sqrt(jnp.sum(x * x + (x - x), axis=1) / n_cols + eps)   # (ROWS,)
    w = w_ref[...].astype(jnp.float32)                              # (N_pad,), the same block for all
    o_ref[...] = (x * rstd[:, None] * w[None, :]).astype(o_ref.dtype)   # written once


# ----------------------------------------------------------------------------
# The launcher: checks, padding, grid
# ----------------------------------------------------------------------------

class LaunchConfig(NamedTuple):
    """How ``rms_norm`` launches for an input shape: ``n_rows`` rows of ``n_cols`` entries,
    blocks of ``block_rows`` rows, the array padded to ``(rows_padded, cols_padded)``, a
    grid of ``grid`` programs."""
    n_rows: int
    n_cols: int
    block_rows: int
    rows_padded: int
    cols_padded: int
    grid: int

    @property
    def padded(self) -> bool:
        """Whether the launcher copies ``x`` into a padded array (and the output back)."""
        return (self.rows_padded, self.cols_padded) != (self.n_rows, self.n_cols)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _check_block_rows(block_rows, cols_padded: int) -> int:
    if isinstance(block_rows, bool) or not isinstance(block_rows, numbers.Integral):
        raise TypeError(f"rms_norm: block_rows must be an int or None, got {block_rows!r}")
    rows = int(block_rows)
    if rows < 1 or rows & (rows - 1):
        raise ValueError(f"rms_norm: block_rows={rows} must be a power of two (1, 2, 4, …): Pallas' "
                         "GPU (Triton) lowering needs power-of-two block shapes")
    if rows * cols_padded > MAX_BLOCK_ELEMENTS:
        raise ValueError(f"rms_norm: block_rows={rows} rows of {cols_padded} (padded) entries make a "
                         f"block of {rows * cols_padded} entries, more than MAX_BLOCK_ELEMENTS="
                         f"{MAX_BLOCK_ELEMENTS} held on chip; use block_rows <= "
                         f"{max(1, MAX_BLOCK_ELEMENTS // cols_padded)}")
    return rows


def launch_config(shape, block_rows: int | None = None) -> LaunchConfig:
    """The blocks, padding and grid of ``rms_norm`` on an ``x`` of ``shape`` (..., N).

    Columns are padded to the next power of two (``N_pad``); ``block_rows`` (a power of two,
    with ``block_rows · N_pad`` ≤ ``MAX_BLOCK_ELEMENTS``) defaults to about
    ``TARGET_BLOCK_ELEMENTS`` entries a block, at most the row count rounded up to a power of
    two; rows are padded to a multiple of it.
    """
    shape = tuple(int(d) for d in shape)
    if not shape:
        raise ValueError("rms_norm: x is 0-d (a single number); RMSNorm normalises over the last "
                         "dimension, so x needs at least one dimension")
    n_cols = shape[-1]
    n_rows = math.prod(shape[:-1])
    if n_cols > MAX_WIDTH:
        raise ValueError(f"rms_norm: rows of {n_cols} entries are wider than MAX_WIDTH={MAX_WIDTH}: "
                         "this kernel holds a whole row in one block (the Triton launcher "
                         "infer_lib.kernels.rms_norm loops over wider rows)")
    cols_padded = _next_power_of_2(n_cols)
    if block_rows is None:
        block_rows = min(max(1, TARGET_BLOCK_ELEMENTS // cols_padded), _next_power_of_2(n_rows))
    rows = _check_block_rows(block_rows, cols_padded)
    grid = -(-n_rows // rows)
    return LaunchConfig(n_rows, n_cols, rows, grid * rows, cols_padded, grid)


def _check_array(name: str, a):
    if not isinstance(a, (np.ndarray, jax.Array)):
        hint = (" (for a torch tensor, pass jnp.from_dlpack(t): no copy, bf16 included)"
                if type(a).__module__.startswith("torch") else "")
        raise TypeError(f"rms_norm: {name} must be a NumPy or JAX array, got {type(a).__name__}{hint}")
    # before any conversion: jnp.asarray would turn float64 into float32 without a word
    if not any(a.dtype == dt for dt in DTYPES):
        raise TypeError(f"rms_norm: {name} has dtype {a.dtype}; the kernel supports float32, float16 "
                        f"and bfloat16: pass {name}.astype(jnp.float32)")


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        hint = " (an array: pass float(eps))" if hasattr(eps, "shape") else ""
        raise TypeError(f"rms_norm: eps must be a number, got {type(eps).__name__} {eps!r}{hint}")
    try:
        finite_positive = math.isfinite(eps) and eps > 0
    except OverflowError:   # an int beyond the float range
        finite_positive = False
    if not finite_positive:
        raise ValueError(f"rms_norm: eps must be a finite positive number (1e-6 or 1e-5 in most "
                         f"models), got {eps!r}")
    return float(eps)


# Compiled once per shape and dtype of x2 and per (eps, block_rows, interpret): a new width
# or row count traces and compiles again, as a new shape does for any jitted JAX function.
@functools.partial(jax.jit, static_argnames=("eps", "config", "interpret"))
def _rms_norm_2d(x2, weight, *, eps: float, config: LaunchConfig, interpret: bool):
    n_rows, n_cols = x2.shape                                       # (rows, N)
    rows, n_pad = config.block_rows, config.cols_padded
    # Padding to power-of-two blocks costs a copy of x here and of the output below: the
    # traffic the Triton kernel's masks avoid, and one of the things Pallas' block model
    # makes you manage. Zeros add nothing to the sum of squares.
    if config.padded:
        x2 = jnp.pad(x2, ((0, config.rows_padded - n_rows), (0, n_pad - n_cols)))
        weight = jnp.pad(weight, (0, n_pad - n_cols))
    out = pl.pallas_call(
        functools.partial(_rms_norm_kernel, n_cols=n_cols, eps=eps),
        out_shape=jax.ShapeDtypeStruct((config.rows_padded, n_pad), x2.dtype),
        grid=(config.grid,),                                        # one program per block of rows
        in_specs=[pl.BlockSpec((rows, n_pad), lambda i: (i, 0)),    # program i: rows i·ROWS …
                  pl.BlockSpec((n_pad,), lambda i: (0,))],          # the whole weight, for every program
        out_specs=pl.BlockSpec((rows, n_pad), lambda i: (i, 0)),
        interpret=interpret,
    )(x2, weight)
    return out[:n_rows, :n_cols] if config.padded else out


def rms_norm(x, weight, eps: float = 1e-6, *, block_rows: int | None = None,
             interpret: bool | None = None) -> jax.Array:
    """RMSNorm over the last dimension of ``x`` (any leading dims), scaled by ``weight``: a
    JAX array of x's shape and dtype.

    ``x`` and ``weight`` are NumPy or JAX arrays of one dtype — float32, float16 or bfloat16
    (ml_dtypes' for NumPy) — ``weight`` 1-D with one entry per column; ``eps`` a finite
    positive number. Computes what ``infer_lib.kernels.rms_norm`` computes (fp32 inside,
    rounded once; a row holding NaN or ±inf is NaN throughout).

    ``block_rows``: rows per program, a power of two (``launch_config`` says what the default
    is and how the array is padded). ``interpret``: None runs in interpret mode exactly when
    ``INTERPRET`` says so; True forces it (also on a GPU); False needs a GPU Pallas compiles for.
    """
    _check_array("x", x)
    if x.ndim == 0:
        raise ValueError("rms_norm: x is 0-d (a single number); RMSNorm normalises over the last "
                         "dimension, so x needs at least one dimension")
    _check_array("weight", weight)
    if weight.ndim != 1:
        raise ValueError(f"rms_norm: weight must be 1-D (one entry per column of x), got shape "
                         f"{tuple(weight.shape)}")
    if weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rms_norm: weight has {weight.shape[0]} entries but the last dimension of x "
                         f"has {x.shape[-1]} (x has shape {tuple(x.shape)}); the weight scales each "
                         "column of the normalised row, one entry per column")
    if weight.dtype != x.dtype:
        raise TypeError(f"rms_norm: x has dtype {x.dtype} but weight has dtype {weight.dtype}; pass "
                        "both in one dtype (weight.astype(x.dtype))")
    eps = _check_eps(eps)
    config = launch_config(x.shape, block_rows)
    if interpret is None:
        interpret = INTERPRET
    elif not isinstance(interpret, bool):
        raise TypeError(f"rms_norm: interpret must be True, False or None, got {interpret!r}")
    elif not interpret and INTERPRET:
        raise ValueError(f"rms_norm: interpret=False needs a GPU Pallas compiles for, and here "
                         f"{_compiles_here()[1]}; leave interpret=None")
    x, weight = jnp.asarray(x), jnp.asarray(weight)
    if x.size == 0:
        return jnp.zeros(x.shape, x.dtype)    # no rows (or no columns): a grid of no programs
    with warnings.catch_warnings():
        # jax 0.11 deprecates Pallas' Triton backend and warns at every compile on a GPU
        # (2026-07, https://docs.jax.dev/en/latest/pallas/CHANGELOG.html); the module docstring
        # tells the reader instead, once.
        warnings.filterwarnings("ignore", message="The Pallas Triton backend is deprecated",
                                category=DeprecationWarning)
        out = _rms_norm_2d(x.reshape(config.n_rows, config.n_cols), weight, eps=eps, config=config,
                           interpret=interpret)
    return out.reshape(x.shape)
