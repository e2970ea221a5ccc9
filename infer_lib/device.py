"""Where the code runs: a CUDA GPU (Triton compiles the kernels) or the CPU
(Triton's interpreter runs the very same kernels on CPU tensors) — or, where
Triton is not installed (macOS: there are no Triton wheels), nowhere: the
chapters then run the PyTorch references (``infer_lib.kernels`` falls back to
them and says so).

The choice is made once, at import, before anything imports ``triton``:
Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, so the variable
must be in the environment before the first ``@triton.jit`` runs. ``import
infer_lib`` imports this module first, so readers never set anything by hand.
Whether Triton is installed is asked without importing it
(``importlib.util.find_spec``).

The same holds for Numba's CUDA target (``numba-cuda``, the CUDA kernels written
in Python of ``infer_lib.cuda_kernels``): without a GPU this module sets
``NUMBA_ENABLE_CUDASIM=1``, which ``numba.cuda`` reads once, when it is first
imported, and then runs every kernel in Numba's CUDA simulator (one Python
thread per CUDA thread) instead of compiling it to PTX. A value the user set is
never overridden, and nothing here imports numba.

Also here: the working dtype for the machine, the problem-size profile the
notebooks use, and a one-line description of the machine.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass

import torch

HAS_GPU: bool = torch.cuda.is_available()


def installed(name: str) -> bool:
    """Whether ``import name`` can find the package, asked without importing it (a finder that
    refuses it, or a broken entry, counts as not installed)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _triton_installed() -> bool:
    """Whether ``import triton`` can find Triton, asked without importing it."""
    if "triton" in sys.modules:
        return sys.modules["triton"] is not None   # None: imports of triton are blocked
    return installed("triton")


#: True when Triton is installed. Without it (macOS, a CPU-only pip install of torch on
#: some platforms) ``infer_lib.kernels`` exports the PyTorch references under the
#: launchers' names and the Triton-only cells of the chapters are skipped.
HAS_TRITON: bool = _triton_installed()

#: what a reader without Triton is told, once, wherever the kernels would have run
NO_TRITON_NOTE = ("Triton not installed: the Triton kernels are skipped; chapters run on the "
                  "PyTorch references")

if HAS_TRITON and not HAS_GPU:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton was imported first. Kernels decorated from now on still honour
        # the variable (Triton reads it at decoration time), but say so loudly.
        import warnings

        warnings.warn(
            "triton was imported before infer_lib on a machine without a CUDA GPU; "
            "infer_lib sets TRITON_INTERPRET=1 now. Kernels defined before this "
            "point will not run on the CPU: import infer_lib first.",
            RuntimeWarning,
            stacklevel=2,
        )
    os.environ["TRITON_INTERPRET"] = "1"

#: True when Triton kernels run in the interpreter (Triton present, no GPU), False when
#: they are compiled — or when there is no Triton to run them (``HAS_TRITON`` False).
INTERPRET: bool = HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"

#: the variable ``numba.cuda`` reads when it is first imported: non-zero runs its CUDA
#: simulator instead of compiling kernels for a GPU
CUDASIM_VAR = "NUMBA_ENABLE_CUDASIM"


def _env_flag(name: str) -> bool:
    """A variable read the way Numba reads its flags: an integer, non-zero meaning on
    (unset, empty or not an integer: off)."""
    try:
        return int(os.environ.get(name, "") or 0) != 0
    except ValueError:
        return False


if not HAS_GPU and CUDASIM_VAR not in os.environ:
    # Set even where numba-cuda is not installed (yet): a notebook may pip-install it after
    # importing infer_lib, and the variable must already be there when numba.cuda is imported.
    if "numba.cuda" in sys.modules:
        import warnings

        warnings.warn(
            "numba.cuda was imported before infer_lib on a machine without a CUDA GPU, so it "
            f"looked for a GPU instead of its simulator; infer_lib sets {CUDASIM_VAR}=1 now, "
            "but that only takes effect in a fresh process: restart it and import infer_lib first.",
            RuntimeWarning,
            stacklevel=2,
        )
    os.environ[CUDASIM_VAR] = "1"

#: True when numba-cuda kernels (``infer_lib.cuda_kernels``) run in Numba's CUDA simulator:
#: no GPU here, or the user set ``NUMBA_ENABLE_CUDASIM`` to a non-zero value themselves.
#: (What ``numba.cuda`` actually does is fixed at its first import: see ``cuda_kernels.SIMULATOR``.)
CUDA_SIMULATOR: bool = _env_flag(CUDASIM_VAR)

#: The device the notebooks and tests put their tensors on.
DEVICE: torch.device = torch.device("cuda" if HAS_GPU else "cpu")


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def capability() -> tuple[int, int] | None:
    """Compute capability of the current GPU, e.g. ``(9, 0)`` on an H100; None without a GPU.

    Cached per device: launchers ask on every call, and the driver query costs microseconds.
    """
    return _capability(torch.cuda.current_device()) if HAS_GPU else None


def supports_bf16() -> bool:
    """bf16 tensor-core math needs compute capability 8.0 (Ampere) or newer.

    ``torch.cuda.is_bf16_supported()`` answers True on a T4 (sm_75) because it
    can *emulate* bf16; Triton cannot compile bf16 dots there, so we go by the
    capability. The CPU interpreter handles bf16 elementwise work correctly.
    """
    cap = capability()
    return cap is None or cap >= (8, 0)


def default_dtype() -> torch.dtype:
    """The 16-bit (or 32-bit) type the notebooks compute in on this machine.

    bf16 on Ampere and newer; fp16 on older GPUs (T4, V100); fp32 on the CPU,
    where the interpreter and PyTorch's CPU kernels are exact and fast enough
    for the tiny sizes we use there.
    """
    if not HAS_GPU:
        return torch.float32
    return torch.bfloat16 if supports_bf16() else torch.float16


#: the dtypes the course measures, by the names measurement files use
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``: how dtypes are written in records and labels."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(dtype: torch.dtype | str) -> torch.dtype:
    """The inverse of ``dtype_name``; a torch dtype passes through."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}: use a torch dtype or one of {sorted(DTYPES)}")


def kernel_dtypes() -> tuple[torch.dtype, ...]:
    """Dtypes the kernels are tested in on this machine."""
    if supports_bf16():
        return (torch.float32, torch.float16, torch.bfloat16)
    return (torch.float32, torch.float16)


def gpu_name() -> str | None:
    return torch.cuda.get_device_name() if HAS_GPU else None


def triton_version() -> str | None:
    """Triton's version; None where Triton is not installed."""
    if not HAS_TRITON:
        return None
    import triton  # imported here, after TRITON_INTERPRET is settled

    return triton.__version__


def describe() -> str:
    """One line about this machine, for the top of every notebook."""
    triton_text = f"triton {triton_version()}" if HAS_TRITON else "triton not installed"
    versions = f"torch {torch.__version__} · {triton_text} · Python {platform.python_version()}"
    if HAS_TRITON:
        mode = "Triton kernels run in the interpreter" if INTERPRET else "Triton kernels compiled"
    else:
        mode = NO_TRITON_NOTE
    if not HAS_GPU:
        return f"CPU only, no CUDA GPU: {mode} · {versions}"
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    major, minor = props.major, props.minor
    mem = props.total_memory / 2**30
    return (
        f"{props.name} (sm_{major}{minor}, {props.multi_processor_count} SMs, {mem:.1f} GiB) "
        f"· {mode} · {versions}"
    )


# ----------------------------------------------------------------------------
# Problem-size profiles
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class BottleneckSizes:
    """Chapter 2 (``infer_lib.experiments.bottlenecks``)."""

    #: element counts of the GELU sweep
    elementwise: tuple[int, ...]
    #: the representative ops: a ``rows × cols`` activation, a ``d³`` matmul and a
    #: decode-like ``(small_batch, d) @ (d, d)`` one
    rows: int
    cols: int
    d: int
    small_batch: int
    #: the profiled MLP block: ``mlp_tokens × mlp_d`` activations
    mlp_tokens: int
    mlp_d: int
    #: the tiny add of the launch-overhead measurement, and how many of them a CUDA graph holds
    launch_numel: int
    launch_ops: int


@dataclass(frozen=True)
class LinearSizes:
    """Chapter 3: the batch sweep ``X (B×d) @ W (d×d)`` and the square matmuls against cuBLAS."""

    d: int
    batches: tuple[int, ...]
    square: tuple[int, ...]


@dataclass(frozen=True)
class AttentionSweepSizes:
    """Chapter 4's live sweep (``attention_sweep.sweep``): sequence lengths at a fixed shape."""

    seq_lens: tuple[int, ...]
    B: int
    H: int
    D: int


@dataclass(frozen=True)
class AttentionSizes:
    """Chapter 4 (``infer_lib.experiments.attention_sweep``)."""

    #: ``(B, H, H_kv, S_q, S_k, D, causal)`` shapes of the correctness checks: odd
    #: lengths, ``S_q ≠ S_k``, GQA and MQA
    checks: tuple[tuple[int, int, int, int, int, int, bool], ...]
    #: the live sweep; None where nothing is timed (the CPU)
    sweep: AttentionSweepSizes | None
    #: the sequence length at which the naive steps are timed one by one
    steps_S: int | None
    #: the live softmax sweep: row widths, and the bytes of each input
    softmax_widths: tuple[int, ...]
    softmax_bytes: int


@dataclass(frozen=True)
class PrefillDecodeSizes:
    """Chapter 5's live measurement (``experiments.prefill_decode.run``): the model preset, the
    prompt lengths of the prefill sweep, the batches of the decode sweep and its context."""

    preset: str
    lengths: tuple[int, ...]
    batches: tuple[int, ...]
    context: int


@dataclass(frozen=True)
class GqaSpeedSizes:
    """Chapter 7's live measurement (``experiments.gqa_speed.attention_record``): one decoding
    step of attention for ``batch`` sequences of ``context`` tokens, ``heads`` query heads of
    ``head_dim``, at each K/V head count of ``kv_heads`` (MHA first, MQA last)."""

    batch: int
    heads: int
    head_dim: int
    context: int
    kv_heads: tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """Problem sizes for notebooks, experiments and tests: tiny on the CPU, realistic on a GPU.

    ``live`` says whether timings on this machine mean anything; without a
    GPU the notebooks show the shipped reference measurements instead. The
    sizes of chapter 1 are plain fields; those of later chapters are grouped
    by chapter.
    """

    name: str
    live: bool
    #: buffer sizes (bytes) of the copy-bandwidth sweep
    copy_sizes: tuple[int, ...]
    #: square matrix sizes n of the n×n×n matmul sweep
    matmul_sizes: tuple[int, ...]
    #: element count of the vector examples
    vector_n: int
    bottlenecks: BottleneckSizes
    linear: LinearSizes
    attention: AttentionSizes
    #: chapter 5's live sweep on the model; None where nothing is timed (the CPU)
    prefill_decode: PrefillDecodeSizes | None = None
    #: chapter 7's live decode attention against the K/V heads; None where nothing is timed
    gqa_speed: GqaSpeedSizes | None = None


def _pow2_range(lo: int, hi: int) -> tuple[int, ...]:
    out, n = [], lo
    while n <= hi:
        out.append(n)
        n *= 2
    return tuple(out)


#: GELU sweep on a GPU: 1 Ki … 256 Mi elements, the largest input 512 MiB in bf16 (1 GiB in fp32),
#: so it fits a 16 GB GPU and the whole chapter-2 run stays under a minute on an H100
_GPU_ELEMENTWISE = tuple(2**k for k in range(10, 29, 2))
_GPU_ATTENTION_CHECKS = ((2, 8, 2, 1000, 1000, 128, True), (1, 4, 1, 129, 1000, 64, True),
                         (3, 4, 4, 17, 33, 64, False), (1, 8, 8, 1000, 129, 128, True))
_SOFTMAX_WIDTHS = (1024, 4096, 16384, 32768)

PROFILES: dict[str, Profile] = {
    # The interpreter runs one Triton program at a time: keep everything tiny. Nothing is
    # timed on the CPU; the sizes keep the cells runnable (and plumbing tests quick on a GPU).
    "cpu": Profile(
        "cpu", live=False, copy_sizes=_pow2_range(2**12, 2**16), matmul_sizes=(16, 32, 64), vector_n=1000,
        bottlenecks=BottleneckSizes(elementwise=(2**10, 2**12, 2**14), rows=64, cols=128, d=256,
                                    small_batch=4, mlp_tokens=64, mlp_d=128, launch_numel=1024,
                                    launch_ops=8),
        linear=LinearSizes(d=64, batches=(1, 8, 64), square=(32, 64)),
        attention=AttentionSizes(
            checks=((1, 4, 2, 17, 33, 16, True), (1, 2, 1, 40, 40, 32, False), (2, 2, 2, 65, 50, 64, True)),
            sweep=None, steps_S=None, softmax_widths=(), softmax_bytes=0),
    ),
    # 16 GB-class GPUs (T4, L4, Colab's free tier): the sweeps stop at 1 GiB buffers.
    "gpu-small": Profile(
        "gpu-small", live=True, copy_sizes=_pow2_range(2**14, 2**30),
        matmul_sizes=(256, 512, 1024, 2048, 4096), vector_n=2**24,
        bottlenecks=BottleneckSizes(elementwise=_GPU_ELEMENTWISE, rows=8192, cols=4096, d=8192,
                                    small_batch=16, mlp_tokens=2048, mlp_d=2048, launch_numel=1024,
                                    launch_ops=100),
        linear=LinearSizes(d=4096, batches=tuple(2**i for i in range(13)), square=(1024, 2048, 4096)),
        attention=AttentionSizes(
            checks=_GPU_ATTENTION_CHECKS,
            sweep=AttentionSweepSizes(seq_lens=tuple(2**p for p in range(9, 13)), B=1, H=16, D=128),
            steps_S=2048, softmax_widths=_SOFTMAX_WIDTHS, softmax_bytes=2**26),
        prefill_decode=PrefillDecodeSizes("llama-3.2-1b", lengths=(128, 512, 2048),
                                          batches=(1, 4, 16, 64), context=512),
        # the bench's shape (B = 16, H = 32, D = 128, 4k tokens): 1 GiB of MHA cache in 16-bit
        gqa_speed=GqaSpeedSizes(batch=16, heads=32, head_dim=128, context=4096,
                                kv_heads=(32, 8, 1)),
    ),
    # 40 GB and up (A100, H100, H200, B200).
    "gpu-large": Profile(
        "gpu-large", live=True, copy_sizes=_pow2_range(2**14, 2**31),
        matmul_sizes=(256, 512, 1024, 2048, 4096, 8192), vector_n=2**26,
        bottlenecks=BottleneckSizes(elementwise=_GPU_ELEMENTWISE, rows=8192, cols=4096, d=8192,
                                    small_batch=16, mlp_tokens=4096, mlp_d=4096, launch_numel=1024,
                                    launch_ops=100),
        linear=LinearSizes(d=8192, batches=tuple(2**i for i in range(13)), square=(1024, 4096, 8192)),
        attention=AttentionSizes(
            checks=_GPU_ATTENTION_CHECKS,
            sweep=AttentionSweepSizes(seq_lens=tuple(2**p for p in range(9, 14)), B=1, H=32, D=128),
            steps_S=4096, softmax_widths=_SOFTMAX_WIDTHS, softmax_bytes=2**28),
        prefill_decode=PrefillDecodeSizes("llama-3.2-1b", lengths=(128, 512, 2048, 8192),
                                          batches=(1, 8, 64, 256), context=512),
        gqa_speed=GqaSpeedSizes(batch=16, heads=32, head_dim=128, context=4096,
                                kv_heads=(32, 16, 8, 4, 2, 1)),
    ),
}


def profile() -> Profile:
    """The profile for this machine; ``INFER_LIB_PROFILE`` (cpu, gpu-small, gpu-large) overrides it."""
    forced = os.environ.get("INFER_LIB_PROFILE")
    if forced:
        if forced not in PROFILES:
            raise ValueError(
                f"INFER_LIB_PROFILE={forced!r} is not a profile; choose one of {sorted(PROFILES)}"
            )
        chosen = PROFILES[forced]
        if chosen.live and not HAS_GPU:
            raise ValueError(f"INFER_LIB_PROFILE={forced!r} needs a CUDA GPU and this machine has none")
        return chosen
    if not HAS_GPU:
        return PROFILES["cpu"]
    mem_gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    return PROFILES["gpu-large" if mem_gib >= 32 else "gpu-small"]
