"""CUDA kernels written in Python with numba-cuda, for the chapter on the CUDA programming model.

Every Triton kernel of ``infer_lib/kernels/`` is, underneath, exactly this: a grid of
*blocks* of *threads*, each thread knowing its place from ``blockIdx``, ``blockDim`` and
``threadIdx``, threads of one block sharing a small fast memory (shared memory) and
waiting for each other at barriers (``syncthreads``). Triton abstracts these threads
and blocks away — a Triton *program* is one block, and its ``tl.arange`` vectors are
spread over the block's threads by the compiler. Here the threads are written out by
hand, one at a time, as in CUDA C++:

- ``vector_add`` — one thread per element, indexed by
  ``blockIdx.x * blockDim.x + threadIdx.x``, with the bounds guard for the last block;
- ``row_sum`` — one block per row: threads stride over the row, stage their partial sums
  in shared memory (``cuda.shared.array`` of a compile-time size) and combine them in a
  tree reduction, a ``cuda.syncthreads()`` barrier between the levels;
- ``warp_divergence_demo`` — threads of one warp taking different branches;
- ``launch_unchecked`` — a launch with as many threads per block as asked, past the
  hardware's limit of 1024 (``MAX_THREADS_PER_BLOCK``), to show what happens then.

On a GPU, numba-cuda compiles each kernel to PTX and launches it. Without a GPU,
``infer_lib.device`` has set ``NUMBA_ENABLE_CUDASIM=1`` before ``numba.cuda`` is first
imported, and Numba's CUDA simulator runs the very same kernels: one Python thread per
CUDA thread, one block at a time, with real barriers and real shared arrays. The
simulator shows what a kernel *means* — which thread computes what, what a missing
barrier breaks — not how fast it runs: it has no warps executing in lockstep, no
memory hierarchy, no timing, and it does not enforce hardware limits (it launches
2048 threads per block without complaint; a GPU refuses the launch). It is slow
(~0.1 ms per thread), so keep sizes tiny there.

Each launcher takes NumPy ``float32`` arrays, checks them and its launch configuration
before launching (the kernel assumes; the launcher validates), copies the inputs to the
device, launches, and returns a NumPy array. The references are NumPy (``<op>_ref``).

numba-cuda is an optional dependency (``pip install numba-cuda``, or the package's
extra ``infer-lib[cuda-kernels]``); this module is the only one of ``infer_lib`` that
imports it, so ``import infer_lib`` works without it.

References: the CUDA C++ Programming Guide, "Programming Model" (thread hierarchy,
shared memory, ``__syncthreads``) and "SIMT Architecture" (warps, divergence),
https://docs.nvidia.com/cuda/cuda-c-programming-guide/; numba-cuda's documentation
(kernels, shared memory, the simulator), https://nvidia.github.io/numba-cuda/;
M. Harris, "Optimizing Parallel Reduction in CUDA" (NVIDIA, 2007).
"""

from __future__ import annotations

import functools
import numbers

import numpy as np

from . import device  # noqa: F401  (sets NUMBA_ENABLE_CUDASIM before numba.cuda is imported)


def _require_numba_cuda() -> None:
    if not all(device.installed(name) for name in ("numba", "numba_cuda")):
        raise ImportError(
                "infer_lib.cuda_kernels needs numba-cuda (NVIDIA's CUDA target for Numba): "
                "`pip install numba-cuda` (it brings numba and llvmlite), then restart the Python "
                "kernel. Without a GPU its kernels run in Numba's CUDA simulator."
            )


_require_numba_cuda()

from numba import cuda, float32  # noqa: E402  (after the check, and after infer_lib.device)

from .hardware import MAX_THREADS_PER_BLOCK, WARP_SIZE  # noqa: E402,F401  (CUDA's limits, re-exported)


def _simulator_enabled() -> bool:
    try:
        from numba.cuda.core import config  # numba-cuda's own configuration
    except ImportError:                     # older numba-cuda: the one of numba
        from numba.core import config
    return bool(config.ENABLE_CUDASIM)


#: True when the kernels below run in Numba's CUDA simulator (fixed when numba.cuda was
#: first imported), False when they are compiled to PTX for a GPU.
SIMULATOR: bool = _simulator_enabled()


def _check_numpy_for_the_gpu() -> None:
    """numba-cuda up to 0.30.4 (the newest as of 2026-12) registers ``np.row_stack``, which
    NumPy 2.5 removed, when it first compiles a kernel for a GPU; the simulator never does."""
    if SIMULATOR:
        return
    try:
        from numba.cuda.np import arrayobj  # noqa: F401  (what the first compile imports)
    except AttributeError as e:
        raise ImportError(
            f"infer_lib.cuda_kernels: this numba-cuda does not work with NumPy {np.__version__} "
            f"on a GPU ({e}); install the course's pinned NumPy (`pip install -r requirements.txt`, "
            "or `pip install 'numpy<2.5'`) and restart the Python kernel"
        ) from e


_check_numpy_for_the_gpu()


def describe() -> str:
    """One line: where the kernels of this module run."""
    import numba

    where = ("in Numba's CUDA simulator (no GPU: semantics, not speed)" if SIMULATOR
             else "compiled to PTX for the GPU")
    return f"numba-cuda kernels run {where} · numba {numba.__version__}"


# ----------------------------------------------------------------------------
# Checks: the launcher validates, the kernel assumes
# ----------------------------------------------------------------------------

def _check_array(op: str, name: str, a, ndim: int) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        hint = " (for a torch tensor, pass t.cpu().numpy())" if type(a).__module__.startswith("torch") else ""
        raise TypeError(f"{op}: {name} must be a NumPy array, got {type(a).__name__}{hint}")
    if a.dtype != np.float32:
        raise TypeError(f"{op}: {name} has dtype {a.dtype}; the kernel computes in float32: "
                        f"pass {name}.astype(np.float32)")
    if a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {a.shape}")
    # device copies need one contiguous buffer
    return np.ascontiguousarray(a)


def _check_threads(op: str, threads_per_block, *, power_of_two: bool = False) -> int:
    if isinstance(threads_per_block, bool) or not isinstance(threads_per_block, numbers.Integral):
        raise TypeError(f"{op}: threads_per_block must be an int, got {threads_per_block!r}")
    t = int(threads_per_block)
    if not 1 <= t <= MAX_THREADS_PER_BLOCK:
        raise ValueError(f"{op}: threads_per_block={t} is outside 1..{MAX_THREADS_PER_BLOCK}: "
                         f"CUDA allows at most {MAX_THREADS_PER_BLOCK} threads per block")
    if power_of_two and t & (t - 1):
        raise ValueError(f"{op}: threads_per_block={t} must be a power of two (1, 2, 4, …, "
                         f"{MAX_THREADS_PER_BLOCK}): the tree reduction halves the active threads "
                         f"at each step")
    return t


# ----------------------------------------------------------------------------
# vector_add: one thread per element
# ----------------------------------------------------------------------------

def vector_add_ref(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """NumPy reference."""
    return x + y


@cuda.jit
def _vector_add_kernel(x, y, out):
    # This thread's element: the blocks before this one hold blockIdx.x * blockDim.x
    # threads, and this thread is number threadIdx.x within its block.
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    # The grid is rounded up to whole blocks, so the last block has threads past the end.
    if i < x.shape[0]:
        out[i] = x[i] + y[i]


def vector_add(x: np.ndarray, y: np.ndarray, threads_per_block: int = 256) -> np.ndarray:
    """``x + y`` for two 1-D float32 NumPy arrays of one length, one thread per element.

    The grid has ``ceil(n / threads_per_block)`` blocks of ``threads_per_block`` threads.
    """
    x = _check_array("vector_add", "x", x, ndim=1)
    y = _check_array("vector_add", "y", y, ndim=1)
    if x.shape != y.shape:
        raise ValueError(f"vector_add: x has shape {x.shape} but y has shape {y.shape}; "
                         f"the kernel adds elementwise and does not broadcast")
    tpb = _check_threads("vector_add", threads_per_block)
    n = x.shape[0]
    if n == 0:
        return np.empty(0, np.float32)  # a grid of zero blocks is not a valid launch
    d_x, d_y = cuda.to_device(x), cuda.to_device(y)
    d_out = cuda.device_array(n, np.float32)
    launch_vector_add(d_x, d_y, d_out, tpb)
    return d_out.copy_to_host()


def launch_vector_add(x, y, out, threads_per_block: int = 256) -> None:
    """Launch the ``vector_add`` kernel on arrays already on the device (numba device arrays,
    or CUDA tensors through ``numba.cuda.as_cuda_array``): no copies and no synchronisation,
    so that a timer sees the kernel alone. Returns at once, as every kernel launch does."""
    tpb = _check_threads("launch_vector_add", threads_per_block)
    n = x.shape[0]
    if not (len(x.shape) == len(y.shape) == len(out.shape) == 1 and y.shape[0] == out.shape[0] == n):
        raise ValueError(f"launch_vector_add: x, y and out must be 1-D of one length, got shapes "
                         f"{tuple(x.shape)}, {tuple(y.shape)} and {tuple(out.shape)}")
    if n:
        _vector_add_kernel[(n + tpb - 1) // tpb, tpb](x, y, out)


# ----------------------------------------------------------------------------
# row_sum: one block per row, shared memory and a tree reduction
# ----------------------------------------------------------------------------

def row_sum_ref(x: np.ndarray) -> np.ndarray:
    """NumPy reference: the sum of each row, accumulated in float64, returned as float32."""
    return x.sum(axis=1, dtype=np.float64).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _row_sum_kernel(threads_per_block: int):
    """The kernel for one block size. A shared array's size must be known when the kernel
    is compiled, so each block size gets its own kernel (as a Triton ``tl.constexpr``
    block size gets its own compilation)."""
    TPB = threads_per_block  # a constant of the compiled kernel

    @cuda.jit
    def kernel(x, out):
        partial = cuda.shared.array(TPB, float32)  # one slot per thread, shared by the block
        row = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        # 1. Each thread sums the columns tid, tid + TPB, tid + 2·TPB, … of its row:
        #    neighbouring threads read neighbouring elements (coalesced loads).
        acc = float32(0.0)
        for col in range(tid, x.shape[1], TPB):
            acc += x[row, col]
        partial[tid] = acc
        cuda.syncthreads()  # every partial sum is written before anyone reads one
        # 2. Tree reduction: the first half adds the second half, then a quarter, … .
        stride = TPB // 2
        while stride > 0:
            if tid < stride:
                partial[tid] += partial[tid + stride]
            cuda.syncthreads()  # this level is finished before the next one reads it
            stride //= 2
        if tid == 0:
            out[row] = partial[0]

    return kernel


def row_sum(x: np.ndarray, threads_per_block: int = 128) -> np.ndarray:
    """The sum of each row of a 2-D float32 NumPy array: one block of ``threads_per_block``
    threads (a power of two, at most 1024) per row."""
    x = _check_array("row_sum", "x", x, ndim=2)
    tpb = _check_threads("row_sum", threads_per_block, power_of_two=True)
    n_rows = x.shape[0]
    if n_rows == 0:
        return np.empty(0, np.float32)  # a grid of zero blocks is not a valid launch
    d_x = cuda.to_device(x)
    d_out = cuda.device_array(n_rows, np.float32)
    _row_sum_kernel(tpb)[n_rows, tpb](d_x, d_out)
    return d_out.copy_to_host()


# ----------------------------------------------------------------------------
# Warp divergence: which thread took which branch
# ----------------------------------------------------------------------------

@cuda.jit
def _divergence_kernel(split_by_warp, lane, warp, path, value):
    tid = cuda.threadIdx.x
    lane[tid] = cuda.laneid              # the thread's place in its warp
    warp[tid] = tid // cuda.warpsize     # which warp of the block it belongs to
    if split_by_warp:
        odd = (tid // cuda.warpsize) % 2 == 1  # whole warps take one branch or the other
    else:
        odd = tid % 2 == 1                     # neighbours in one warp disagree
    if odd:
        path[tid] = 1
        value[tid] = -tid       # branch B
    else:
        path[tid] = 0
        value[tid] = 2 * tid    # branch A


def warp_divergence_demo(threads: int = 64, split: str = "lane") -> dict[str, np.ndarray]:
    """Launch one block of ``threads`` threads that branch on ``threadIdx.x % 2``
    (``split="lane"``) or on the warp's number (``split="warp"``), and return what each
    thread recorded, one array per column (``pandas.DataFrame(...)`` shows it as a table):

    - ``thread``: ``threadIdx.x``; ``warp``: its warp; ``lane``: ``cuda.laneid``, its lane;
    - ``path``: 0 for branch A (``value = 2·t``), 1 for branch B (``value = -t``);
    - ``value``: what it computed;
    - ``paths_in_warp``: how many different branches its warp took.

    On a GPU the 32 threads of a warp issue one instruction at a time: a warp whose lanes
    disagree (``paths_in_warp == 2``) runs branch A with the B lanes masked off, then
    branch B with the A lanes masked off — both branches' time. With ``split="warp"``
    every warp agrees and runs one branch. The simulator runs the kernel and shows exactly
    this assignment of lanes to branches, but not the cost: it has no lockstep warps, and
    nothing it times would mean anything.
    """
    tpb = _check_threads("warp_divergence_demo", threads)
    if split not in ("lane", "warp"):
        raise ValueError(f"warp_divergence_demo: split must be 'lane' or 'warp', got {split!r}")
    d = {name: cuda.device_array(tpb, np.int32) for name in ("lane", "warp", "path", "value")}
    _divergence_kernel[1, tpb](split == "warp", d["lane"], d["warp"], d["path"], d["value"])
    out = {"thread": np.arange(tpb, dtype=np.int32)}
    out.update({name: arr.copy_to_host() for name, arr in d.items()})
    per_warp = {int(w): len(set(out["path"][out["warp"] == w].tolist())) for w in np.unique(out["warp"])}
    out["paths_in_warp"] = np.array([per_warp[int(w)] for w in out["warp"]], dtype=np.int32)
    return out


# ----------------------------------------------------------------------------
# Past the limit: a launch nothing checks
# ----------------------------------------------------------------------------

@cuda.jit
def _thread_index_kernel(out):
    t = cuda.threadIdx.x
    if t < out.shape[0]:
        out[t] = t


def launch_unchecked(threads: int) -> np.ndarray:
    """Launch one block of ``threads`` threads, with no check of ``threads``, and return
    the ``threadIdx.x`` each thread wrote.

    For the chapter to show what a launch past ``MAX_THREADS_PER_BLOCK`` (1024) does:

    - on a GPU the driver refuses the launch: ``cuLaunchKernel`` returns
      ``CUDA_ERROR_INVALID_VALUE``, which numba-cuda raises as an exception naming it
      (nothing runs);
    - Numba's CUDA simulator does not model the limit: it starts ``threads`` Python
      threads and returns ``0 … threads-1`` — a reminder that it checks semantics, not the
      hardware.
    """
    out = cuda.device_array(max(int(threads), 0), np.int32)
    _thread_index_kernel[1, threads](out)
    return out.copy_to_host()
