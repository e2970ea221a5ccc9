"""Which block sizes each kernel runs with: configurations, pruning and the tuned-config cache.

A kernel file reads like a tutorial — math, reference, ``@triton.jit`` kernel,
launcher. Everything about *which* configuration to run lives here, once, with
one mechanism for every kernel:

* **Configuration lists per architecture class**, not per card: ``"hopper"``
  (sm_90 and newer data-centre parts: H100, H200, B200; about 227 KB of shared
  memory per block), ``"ampere"`` (sm_80, the A100: 163 KB) and ``"small_smem"``
  (everything with about 100 KB or less: T4, L4, RTX cards, V100). What holds
  on one Hopper card is then likely to hold on the other.
* **Pruning** by the device's shared memory (``max_shared_memory``, the one
  place that asks the driver) and by the problem's shape: a configuration whose
  software pipeline does not fit is never compiled, so a T4 never tries an
  H100's tiles.
* **A cache of tuned picks** keyed on *bucketed* shapes (``bucket``: the next
  power of two), so a new prompt length reuses the pick of its bucket instead of
  timing a dozen configurations again.
* **Timing** of the candidates with Triton's own ``do_bench_cudagraph``: the
  kernel replayed from a CUDA graph, so the Python launch path does not hide the
  differences between configurations of a small, fast problem.

In Triton's CPU interpreter nothing is timed (the interpreter's speed says
nothing about a GPU): each kernel runs its ``interpreter`` configuration, whose
small tiles give the tests' tiny inputs several tiles and masked edges.

This module imports no kernel and nothing above ``infer_lib.kernels``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
import triton

from .. import device

# ----------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------

#: CUDA's limit on the second and third grid dimensions; the first allows 2**31 − 1.
MAX_GRID_YZ = 65535


def arch_class(capability: tuple[int, int] | None) -> str:
    """``"hopper"``, ``"ampere"`` or ``"small_smem"`` for a compute capability (None: the interpreter)."""
    if capability is None:
        return "interpreter"
    if capability >= (9, 0) and capability[0] != 12:   # sm_120 (RTX 50) has ~100 KB per block
        return "hopper"
    if capability == (8, 0):
        return "ampere"
    return "small_smem"


def max_shared_memory(index: int | None = None) -> int:
    """Shared memory one program may use on CUDA device ``index`` (default: the current one), in bytes:
    227 KB on an H100 or H200, 163 KB on an A100, 99 KB on an L4, 64 KB on a T4.
    Without a GPU (the interpreter) there is no limit to respect: a very large number."""
    if not device.HAS_GPU:
        return 1 << 30
    return _max_shared_memory(torch.cuda.current_device() if index is None else index)


@functools.lru_cache(maxsize=None)
def _max_shared_memory(index: int) -> int:
    try:
        return int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])
    except Exception:  # a Triton without this helper: ask PyTorch
        props = torch.cuda.get_device_properties(index)
        return int(getattr(props, "shared_memory_per_block_optin", 48 * 1024))


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers on the host. Not ``triton.cdiv``: in recent Triton that is a
    constexpr function whose call from Python costs about 10 µs (it unwraps its arguments), and
    a launcher computes several per call."""
    return -(-a // b)


def bucket(n: int) -> int:
    """The cache bucket of a length: the next power of two (1, 2, 4, …).

    Plain integer arithmetic: every launch computes a key, and ``triton.next_power_of_2``
    costs a few µs more per call on a slow host (it unwraps ``constexpr`` arguments)."""
    return 1 << (max(1, int(n)) - 1).bit_length()


# ----------------------------------------------------------------------------
# Configurations and their checks
# ----------------------------------------------------------------------------

def _is_pow2(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0 and (x & (x - 1)) == 0


def check_config(op: str, config, blocks: dict[str, int], counts: tuple[str, ...] = ()) -> None:
    """Refuse a hand-written ``triton.Config`` with a message that names the bad value.

    ``blocks`` maps each block-size key to its smallest allowed value (block
    sizes must be powers of two: ``tl.arange`` needs them, and ``tl.dot`` needs
    at least 16 along each side); ``counts`` are keys that must be integers ≥ 1.
    """
    if not isinstance(config, triton.Config):
        raise TypeError(f"{op}: config must be a triton.Config, got {type(config).__name__}")
    kw = config.kwargs
    missing = [k for k in (*blocks, *counts) if k not in kw]
    if missing:
        raise ValueError(f"{op}: config must set {', '.join((*blocks, *counts))}; it lacks {', '.join(missing)}")
    for k, least in blocks.items():
        v = kw[k]
        if not _is_pow2(v) or v < least:
            raise ValueError(f"{op}: config {k}={v!r} must be a power of two ≥ {least}")
    for k in counts:
        v = kw[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{op}: config {k}={v!r} must be an integer ≥ 1")
    if not _is_pow2(config.num_warps) or config.num_warps > 32:
        raise ValueError(f"{op}: config num_warps={config.num_warps!r} must be a power of two from 1 to 32")
    if not isinstance(config.num_stages, int) or isinstance(config.num_stages, bool) or config.num_stages < 1:
        raise ValueError(f"{op}: config num_stages={config.num_stages!r} must be an integer ≥ 1")


@dataclass
class KernelConfigs:
    """The configurations of one kernel and how to choose among them.

    ``lists`` maps an architecture class to the configurations worth timing
    there (``"default"`` serves classes without their own list);
    ``smem_bytes(config, element_size, shape)`` estimates a configuration's
    shared memory; ``fits(config, shape)`` says whether its tiles suit the
    problem's (bucketed) shape; ``fallbacks`` are tried in order for problems
    not worth timing (the first that fits the shared memory wins);
    ``interpreter`` is what the CPU interpreter runs.
    """

    name: str
    lists: dict[str, list[triton.Config]]
    smem_bytes: Callable[[triton.Config, int, dict], int]
    fallbacks: list[triton.Config]
    interpreter: triton.Config
    fits: Callable[[triton.Config, dict], bool] = lambda config, shape: True
    #: picks of the tuner: key -> configuration
    cache: dict[tuple, triton.Config] = field(default_factory=dict)

    def config_list(self, capability: tuple[int, int] | None) -> list[triton.Config]:
        cls = arch_class(capability)
        return self.lists.get(cls, self.lists["default"])

    def candidates(self, capability, max_smem: int, element_size: int, shape: dict) -> list[triton.Config]:
        """The configurations worth timing: the class's list, minus those whose pipeline
        overflows ``max_smem`` bytes and (where some remain) those too large for the shape.
        Never empty: if nothing fits, the fixed choice remains."""
        fitting = [c for c in self.config_list(capability) if self.smem_bytes(c, element_size, shape) <= max_smem]
        if not fitting:
            return [self.fixed(element_size, shape, max_smem)]
        return [c for c in fitting if self.fits(c, shape)] or fitting

    def fixed(self, element_size: int, shape: dict, max_smem: int | None = None) -> triton.Config:
        """The configuration of an untuned launch: the interpreter's, or the first fallback that fits."""
        if device.INTERPRET:
            return self.interpreter
        limit = max_shared_memory() if max_smem is None else max_smem
        for c in self.fallbacks:
            if self.smem_bytes(c, element_size, shape) <= limit:
                return c
        return self.fallbacks[-1]

    def choose(self, key: tuple, launch: Callable[[triton.Config], object], *, tune: bool,
               element_size: int, shape: dict) -> triton.Config:
        """The configuration to launch: tuned (and cached under ``key``) when ``tune`` is set on a
        GPU, otherwise the fixed choice. ``launch(config)`` runs the kernel once with ``config``.

        Tuning times every candidate with ``triton.testing.do_bench_cudagraph``; a candidate that
        does not compile on this GPU (out of shared memory or registers) is skipped. The caller
        launches the returned configuration itself: timing leaves the output in an unknown state.
        """
        if not tune or device.INTERPRET:
            return self.fixed(element_size, shape)
        picked = self.cache.get(key)
        if picked is not None:
            return picked
        index = torch.cuda.current_device()
        candidates = self.candidates(device.capability(), max_shared_memory(index), element_size, shape)
        best, best_ms = None, float("inf")
        for config in candidates:
            try:
                ms = triton.testing.do_bench_cudagraph(lambda: launch(config), rep=20, return_mode="median")
            except triton.runtime.errors.OutOfResources:
                continue
            if ms < best_ms:
                best, best_ms = config, ms
        if best is None:
            best = self.fixed(element_size, shape)
        self.cache[key] = best
        return best


# ----------------------------------------------------------------------------
# matmul (chapter 3)
# ----------------------------------------------------------------------------

def _mm(bm: int, bn: int, bk: int, stages: int, warps: int, group_m: int = 8) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_stages=stages, num_warps=warps)


def _mm_smem(config: triton.Config, element_size: int, shape: dict | None = None) -> int:
    """``num_stages`` buffers of one ``BLOCK_M × BLOCK_K`` slab of a and one ``BLOCK_K × BLOCK_N`` slab of b."""
    kw = config.kwargs
    return config.num_stages * (kw["BLOCK_M"] * kw["BLOCK_K"] + kw["BLOCK_K"] * kw["BLOCK_N"]) * element_size


def _mm_fits(config: triton.Config, shape: dict) -> bool:
    # A tile taller (wider) than the problem rounded up to a power of two computes
    # mostly padding; 64 rows and columns are always allowed (the smallest Hopper tile).
    kw = config.kwargs
    return kw["BLOCK_M"] <= max(64, bucket(shape["M"])) and kw["BLOCK_N"] <= max(64, bucket(shape["N"]))


MATMUL = KernelConfigs(
    name="matmul",
    lists={
        # sm_90: a 128×256 tile with 8 warps (two warpgroups) keeps wgmma fed; 64-row
        # tiles serve skinny, decode-like problems, where 128 rows would be mostly padding.
        "hopper": [
            _mm(128, 256, 64, 3, 8), _mm(256, 128, 64, 3, 8), _mm(128, 256, 64, 4, 8),
            _mm(128, 128, 64, 4, 4), _mm(128, 128, 64, 4, 8), _mm(128, 128, 64, 5, 8),
            _mm(128, 128, 128, 3, 8), _mm(128, 64, 64, 4, 4), _mm(64, 128, 64, 4, 4),
            _mm(64, 64, 128, 4, 4), _mm(64, 128, 128, 3, 4),
        ],
        # sm_80 (A100): the configurations of Triton's matmul tutorial.
        "ampere": [
            _mm(128, 256, 64, 3, 8), _mm(64, 256, 32, 4, 4), _mm(128, 128, 64, 3, 4),
            _mm(128, 128, 32, 4, 4), _mm(128, 64, 32, 4, 4), _mm(64, 128, 32, 4, 4),
            _mm(128, 32, 32, 4, 4), _mm(64, 64, 64, 4, 4), _mm(64, 32, 32, 5, 2),
        ],
        # ≤ 100 KB of shared memory per block.
        "small_smem": [
            _mm(128, 128, 32, 2, 4), _mm(128, 64, 32, 3, 4), _mm(64, 128, 32, 3, 4),
            _mm(64, 64, 32, 4, 4), _mm(32, 64, 32, 4, 2),
        ],
    },
    smem_bytes=_mm_smem,
    fits=_mm_fits,
    # 64×64×32 with 3 stages fits every GPU of the course, even in fp32 (48 KB).
    fallbacks=[_mm(64, 64, 32, 3, 4)],
    interpreter=_mm(32, 32, 32, 1, 4),
)
MATMUL.lists["default"] = MATMUL.lists["small_smem"]
# A Hopper also times the Ampere and small-shared-memory configurations of 64×64 tiles and more
# (smaller ones leave a warpgroup's wgmma half idle): the pre-refactor autotuner timed all
# three lists and ran 4096³ at 661/628 TFLOP/s (bf16/fp16) on the H200, against 607/591 with
# the Hopper list alone (2026-12-01/02, tools/TUNING_NOTES.md). Which of them wins there is
# still to be measured.
MATMUL.lists["hopper"] = list({str(c): c for c in MATMUL.lists["hopper"] + [
    c for c in MATMUL.lists["ampere"] + MATMUL.lists["small_smem"]
    if min(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) >= 64]}.values())

#: Products with ``M·N·K`` below this (256³) are not tuned: they take a few µs,
#: mostly launch latency, and timing a dozen configurations would cost far more
#: than the best one could save.
MATMUL_TUNE_MIN_WORK = 256**3

#: What a hand-written ``matmul(config=...)`` must set, with each block's minimum.
MATMUL_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
MATMUL_COUNTS = ("GROUP_M",)


# ----------------------------------------------------------------------------
# flash_attention (chapter 4)
# ----------------------------------------------------------------------------

def _fa(bm: int, bn: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


def _fa_smem(config: triton.Config, element_size: int, shape: dict) -> int:
    """The q tile plus ``num_stages`` buffers of a k and a v tile."""
    bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    return (bm + 2 * max(config.num_stages, 1) * bn) * shape["D"] * element_size


FLASH_ATTENTION = KernelConfigs(
    name="flash_attention",
    lists={
        # Chosen on the H100; smaller GPUs keep those whose tiles fit. 128×128 tiles
        # need 8 warps: with 4, ptxas (sm_90, triton 3.7.1) spills registers at D = 64 and 128.
        # 64×32 over 2 stages (48 KB at D = 128 in 16 bits) is the one that fits a T4's 64 KB.
        "default": [_fa(128, 64, w, s) for w in (4, 8) for s in (2, 3, 4)]
                   + [_fa(128, 128, 8, s) for s in (2, 3, 4)]
                   + [_fa(64, 64, 4, s) for s in (2, 3)] + [_fa(64, 32, 4, 2)],
    },
    smem_bytes=_fa_smem,
    fallbacks=[_fa(64, 64, 4, 2), _fa(64, 32, 4, 2), _fa(32, 32, 4, 1), _fa(16, 16, 4, 1)],
    # 32×32 tiles still give tiny test inputs several tiles to mask.
    interpreter=_fa(32, 32, 4, 1),
)

#: fp32 attention runs its matmuls as exact fp32 FMAs (no tensor cores): small
#: tiles, or the registers spill (checked with ptxas for sm_80 and sm_90 at D = 128).
#: Correct, not fast; never tuned.
FLASH_ATTENTION_FP32 = KernelConfigs(
    name="flash_attention_fp32",
    lists={"default": []},
    smem_bytes=_fa_smem,
    fallbacks=[_fa(16, 32, 4, 2), _fa(16, 16, 4, 1)],
    interpreter=FLASH_ATTENTION.interpreter,
)

#: Attention with fewer than this many scores per head (``S_q · S_k``) is not
#: tuned: short prompts take the first fitting fallback instead of paying for
#: compiling and timing every configuration.
FLASH_ATTENTION_TUNE_MIN_SCORES = 1024 * 1024


# ----------------------------------------------------------------------------
# softmax (chapter 4)
# ----------------------------------------------------------------------------

#: Widest row (in entries) that the one-pass kernel keeps whole on chip; wider rows
#: take the online, two-pass kernel. 32768 values over 16 warps (512 threads) are
#: 64 fp32 values a thread: ptxas (sm_90, triton 3.7.1) gives 128 registers and
#: no spills, in 16-bit and fp32 alike.
SOFTMAX_MAX_FUSED_BLOCK = 32768

#: The online kernel's loop over a wide row: BLOCK entries per step.
SOFTMAX_ONLINE = triton.Config({"BLOCK": 8192}, num_warps=16)


#: Rows at least this wide (in entries) run persistent and software-pipelined (see softmax_config).
SOFTMAX_PERSISTENT_MIN_BLOCK = 32768
#: Row buffers in flight per program on that path: the row being reduced and the next two.
SOFTMAX_PERSISTENT_STAGES = 3


def softmax_config(n_cols: int, element_size: int, max_smem: int | None = None) -> triton.Config:
    """``BLOCK``, ``ROWS``, ``num_warps`` and ``num_stages`` of the one-pass kernel.

    Narrow rows are packed several to a tile of about 4 KB of input, so that each
    program has enough loads in flight to cover HBM latency; wide rows get one row
    and up to 16 warps. On an H200 (2026-12-01, tools/TUNING_NOTES.md) 1024-wide
    fp16 rows ran at 0.985× a same-size copy with 2 rows over 4 warps, against
    0.88× with 8 rows over 8 warps (16 KB tiles); 4096 and wider were within 1%
    either way.

    The widest rows (``SOFTMAX_PERSISTENT_MIN_BLOCK``) need 64 fp32 registers a
    thread even over 16 warps: one program fills an SM's register file, and
    while it reduces and writes its row nothing is being read. ``num_stages`` > 1
    then tells the launcher to run one program per SM, each looping over rows
    with the next ``num_stages − 1`` rows already on their way into shared
    memory (Triton's software pipeline). On the H200 that lifted 32768-wide rows
    from 0.71× to 0.89–0.90× a copy (2026-12-02). It needs ``num_stages`` row
    buffers of shared memory (192 KB in 16-bit), so it is chosen only where they fit
    in ``max_smem`` (default: the current device's) — not for fp32 rows, nor on GPUs
    with less shared memory than a Hopper.
    """
    block = max(16, bucket(n_cols))
    if block >= SOFTMAX_PERSISTENT_MIN_BLOCK:
        limit = max_shared_memory() if max_smem is None else max_smem
        # + 16 KB for the reductions' scratch
        if SOFTMAX_PERSISTENT_STAGES * block * element_size + 16 * 1024 <= limit:
            return triton.Config({"BLOCK": block, "ROWS": 1}, num_warps=32,
                                 num_stages=SOFTMAX_PERSISTENT_STAGES)
    rows = max(1, min(64, 4096 // (block * element_size)))
    elems = rows * block
    num_warps = 4 if elems <= 2048 else 8 if elems <= 8192 else 16
    return triton.Config({"BLOCK": block, "ROWS": rows}, num_warps=num_warps, num_stages=1)


def sm_count(index: int | None = None) -> int:
    """Streaming multiprocessors of CUDA device ``index`` (default: the current one): 132 on an
    H100 SXM or H200. Without a GPU (the interpreter) 3, so that persistent launches loop."""
    if not device.HAS_GPU:
        return 3
    return _sm_count(torch.cuda.current_device() if index is None else index)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


# ----------------------------------------------------------------------------
# decode_attention (chapter 5)
# ----------------------------------------------------------------------------

def _da(block_n: int, stages: int, warps: int = 4) -> triton.Config:
    return triton.Config({"BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


def _da_smem(config: triton.Config, element_size: int, shape: dict) -> int:
    """``num_stages`` buffers of one K and one V tile, ``BLOCK_N × D`` each."""
    return max(config.num_stages, 1) * 2 * config.kwargs["BLOCK_N"] * shape["D"] * element_size


DECODE_ATTENTION = KernelConfigs(
    name="decode_attention",
    lists={
        # (BLOCK_N, num_stages, num_warps): the configurations within 2% of the best for at
        # least one of the benchmark's shapes (bf16, D = 128: GQA B16 and B64 at 4k, MHA B16,
        # MQA B16, B1 at 32k, a ragged B16 up to 8k), out of 27 timed on an H200 — the whole
        # step, GPU time from CUDA-graph replays, 2026-12-02 (tools/TUNING_NOTES.md). A decode
        # step streams the cache; 2 warps suffice for the 16-row tiles of a GQA group.
        "hopper": [_da(64, 3, 4), _da(64, 2, 2), _da(64, 3, 2), _da(64, 4, 2), _da(64, 4, 4),
                   _da(64, 3, 8), _da(32, 3, 2), _da(32, 4, 2), _da(32, 3, 4), _da(128, 2, 4),
                   _da(128, 2, 8), _da(128, 3, 8)],
        "default": [_da(bn, s, 4) for bn in (32, 64) for s in (2, 3)],
    },
    smem_bytes=_da_smem,
    # 64 keys a step over 4 warps, two K and two V tiles in flight, smaller where that does
    # not fit (a T4's 64 KB with fp32 at D = 128).
    fallbacks=[_da(64, 2), _da(32, 2), _da(16, 1)],
    # 16 keys a step: the tests' short caches span several steps and several splits.
    interpreter=_da(16, 1),
)

#: Caches smaller than this (K and V bytes, ``2 · B · H_kv · S_max · D · element size``) are
#: not tuned: their step takes a few µs and the fallback serves.
DECODE_ATTENTION_TUNE_MIN_BYTES = 16 * 2**20


# ----------------------------------------------------------------------------
# vector_add (chapter 1)
# ----------------------------------------------------------------------------

#: 4096 elements per program: 16 KB of fp32 loads in flight per operand, enough
#: to keep an SM's memory pipeline busy.
VECTOR_ADD = triton.Config({"BLOCK_SIZE": 4096}, num_warps=4)


# ----------------------------------------------------------------------------
# matmul_splitk: decode shapes, M ≤ SMALL_M
# ----------------------------------------------------------------------------

#: The row counts the split-K kernel is made for: a decoding step's tokens, up to 64.
SMALL_M = 64


def _sk(bm: int, bn: int, bk: int, split: int, stages: int, warps: int = 4) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split},
                         num_stages=stages, num_warps=warps)


def _sk_fits(config: triton.Config, shape: dict) -> bool:
    # One row tile covers all M rows (16 at least, what tl.dot needs): rows are
    # cheap (they come from L2), the weights are what must not be read twice.
    return config.kwargs["BLOCK_M"] == min(SMALL_M, max(16, bucket(shape["M"])))


#: Per row tile: (BLOCK_N, BLOCK_K, SPLIT_K, num_stages, num_warps). From a sweep of
#: 72-108 configurations per row tile at K = N = 8192, bf16, on an H200 (GPU time from
#: CUDA-graph replays, 2026-12-02, tools/TUNING_NOTES.md): each row tile's winners and
#: the configurations within 2% of them. One token (M = 1) wants short, wide slabs split
#: four ways — 256 programs, two per SM; from 2 to 64 tokens one long slab per column tile
#: of 64 (no split, 128 programs) with deep pipelines streams best. The split-8 entries
#: serve weights with few columns (N = 2048: 32 column tiles), where only a split gives
#: enough programs.
_SPLITK_HOPPER = {
    16: [(256, 64, 4, 3, 8), (128, 64, 4, 3, 4), (64, 256, 1, 3, 4), (64, 256, 1, 4, 4),
         (64, 256, 1, 5, 4), (64, 128, 1, 5, 4), (128, 128, 1, 5, 4), (128, 256, 2, 3, 4),
         (64, 128, 8, 3, 4)],
    32: [(64, 128, 1, 5, 4), (64, 256, 1, 3, 4), (64, 256, 1, 4, 4), (64, 128, 1, 4, 4),
         (128, 128, 2, 3, 4), (64, 128, 8, 3, 4)],
    64: [(64, 256, 1, 3, 4), (64, 128, 1, 4, 4), (64, 128, 1, 5, 4), (128, 128, 1, 4, 4),
         (64, 128, 4, 3, 4)],
}

SPLITK_MATMUL = KernelConfigs(
    name="matmul_splitk",
    lists={
        "hopper": [_sk(bm, bn, bk, split, stages, warps)
                   for bm, rows in _SPLITK_HOPPER.items() for bn, bk, split, stages, warps in rows],
        # Other GPUs: the same shapes of tile with shallower pipelines, pruned by shared memory.
        "default": [_sk(bm, bn, bk, split, stages)
                    for bm in (16, 32, 64)
                    for bn, bk, split, stages in ((64, 128, 1, 3), (64, 128, 2, 3), (128, 64, 4, 3),
                                                  (64, 128, 4, 3), (64, 64, 1, 4), (64, 128, 8, 3))],
    },
    smem_bytes=_mm_smem,
    fits=_sk_fits,
    fallbacks=[_sk(16, 64, 64, 1, 3), _sk(16, 32, 32, 1, 2)],
    # Several K slices even for the tests' tiny K: the reduction path runs in the interpreter too.
    interpreter=_sk(16, 32, 32, 4, 1),
)

SPLITK_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
SPLITK_COUNTS = ("SPLIT_K",)


# ----------------------------------------------------------------------------
# int8_matmul: int8 weights dequantised in registers, decode shapes first
# ----------------------------------------------------------------------------
# Not yet measured on a GPU: the lists below carry the split-K kernel's measured shapes
# over to one-byte weights (the same bytes of weights a step: twice the BLOCK_K or BLOCK_N),
# untimed. The tuner picks among them per bucketed shape; the GPU run that times them
# will say which to keep (tools/TUNING_NOTES.md).

def _i8(bm: int, bn: int, bk: int, split: int, stages: int, warps: int = 4) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split},
                         num_stages=stages, num_warps=warps)


def _i8_smem(config: triton.Config, element_size: int, shape: dict | None = None) -> int:
    """``num_stages`` buffers of one ``BLOCK_M × BLOCK_K`` slab of ``a`` (``element_size`` bytes)
    and one ``BLOCK_K × BLOCK_N`` slab of int8 weights (1 byte), plus one dequantised slab of
    weights in ``a``'s type, the operand ``tl.dot`` reads."""
    kw = config.kwargs
    slab_w = kw["BLOCK_K"] * kw["BLOCK_N"]
    return config.num_stages * (kw["BLOCK_M"] * kw["BLOCK_K"] * element_size + slab_w) + slab_w * element_size


def _i8_fits(config: triton.Config, shape: dict) -> bool:
    kw = config.kwargs
    if shape["M"] <= SMALL_M:
        # Decode: one row tile covers all M rows (16 at least, what tl.dot needs), so the
        # weights are read once.
        return kw["BLOCK_M"] == max(16, bucket(shape["M"]))
    # More rows: tall tiles and no split (partials of SPLIT_K · M · N fp32 would grow with M).
    return kw["BLOCK_M"] >= SMALL_M and kw["SPLIT_K"] == 1


#: Per row tile: (BLOCK_N, BLOCK_K, SPLIT_K, num_stages, num_warps), from _SPLITK_HOPPER's
#: winners with the slabs of weights kept at about the same bytes; a few splits for weights
#: with few columns. Rows past SMALL_M ("prefill"): 64- and 128-row tiles without a split.
_INT8_HOPPER = {
    16: [(256, 128, 4, 3, 8), (128, 128, 4, 3, 4), (128, 256, 2, 3, 4), (64, 256, 1, 4, 4),
         (64, 512, 1, 3, 4), (128, 256, 1, 4, 4), (64, 256, 2, 4, 4), (64, 256, 8, 3, 4)],
    32: [(64, 256, 1, 4, 4), (64, 512, 1, 2, 4), (128, 256, 1, 3, 4), (128, 128, 2, 4, 4),
         (64, 256, 8, 3, 4)],
    64: [(64, 256, 1, 3, 4), (64, 256, 1, 4, 8), (128, 128, 1, 4, 4), (128, 256, 1, 2, 8),
         (64, 256, 4, 3, 4), (64, 128, 1, 3, 4)],
    128: [(128, 128, 1, 3, 8), (256, 64, 1, 3, 8), (128, 64, 1, 4, 4)],
}

INT8_MATMUL = KernelConfigs(
    name="int8_matmul",
    lists={
        "hopper": [_i8(bm, bn, bk, split, stages, warps)
                   for bm, rows in _INT8_HOPPER.items() for bn, bk, split, stages, warps in rows],
        # Other GPUs: the same shapes of tile with shallower pipelines, pruned by shared
        # memory; the 64×64 slabs in two stages fit a T4's 64 KB even in fp32.
        "default": [_i8(bm, bn, bk, split, stages)
                    for bm in (16, 32, 64)
                    for bn, bk, split, stages in ((64, 256, 1, 3), (128, 128, 1, 3), (128, 128, 4, 3),
                                                  (64, 256, 4, 3), (64, 128, 8, 3), (64, 64, 1, 2),
                                                  (64, 64, 4, 2))]
                   + [_i8(128, 128, 64, 1, 3, 8), _i8(64, 128, 128, 1, 3)],
    },
    smem_bytes=_i8_smem,
    fits=_i8_fits,
    fallbacks=[_i8(16, 64, 128, 2, 3), _i8(16, 32, 64, 1, 2)],
    # Several K slices even for the tests' tiny K: the reduction path runs in the interpreter too.
    interpreter=_i8(16, 32, 32, 4, 1),
)

INT8_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
INT8_COUNTS = ("SPLIT_K",)


# ----------------------------------------------------------------------------
# rms_norm and add_rms_norm (row normalisations), swiglu (elementwise)
# ----------------------------------------------------------------------------
# Not yet measured on a GPU: the rule below is softmax's (measured for softmax on the H200,
# tools/TUNING_NOTES.md), carried over untimed. These kernels are not tuned: like softmax's,
# they are memory-bound with one sensible tiling per row width, and the bench run that
# adds them will say whether the guess holds.

#: Registers, not shared memory, bound a row kernel that keeps its rows whole: the one-pass
#: kernels run ``num_stages=1`` and not persistent, so their only shared memory is the
#: reductions' scratch (one fp32 per warp and row, ≤ 4 KB). At most this many fp32 values of
#: a tile per thread: ``add_rms_norm`` holds two such tiles for a moment (``x`` and
#: ``residual`` before their sum), so ≤ 64 live values — half of what softmax keeps at 32768
#: entries without spilling (ptxas, sm_90) and well inside the 255 registers a thread may
#: have on every GPU of the course, so no card needs its own list.
NORM_MAX_VALUES_PER_THREAD = 32

#: Widest row (in entries) the one-pass kernels hold whole in registers: 16 warps of 32
#: threads, ``NORM_MAX_VALUES_PER_THREAD`` values each. Every model width up to 16384
#: (Llama 3 405B) fits; wider rows take the looped kernels (two passes over the row).
NORM_MAX_FUSED_BLOCK = 16 * 32 * NORM_MAX_VALUES_PER_THREAD

#: The looped kernels' step over a row wider than ``NORM_MAX_FUSED_BLOCK``: 8 fp32 values a
#: thread. Not yet measured on a GPU.
NORM_LOOP = triton.Config({"BLOCK": 4096}, num_warps=16)


def norm_config(n_cols: int, element_size: int) -> triton.Config:
    """``BLOCK``, ``ROWS`` and ``num_warps`` of the one-pass row kernels (``rms_norm``,
    ``add_rms_norm``) for rows of ``n_cols`` ≤ ``NORM_MAX_FUSED_BLOCK`` entries.

    On a GPU (untimed guess, see above): ``BLOCK`` is the row rounded up to a power of two;
    narrow rows are packed several to a tile of about 4 KB of input, so that each program has
    loads in flight; the warps grow with the tile so that no thread holds more than
    ``NORM_MAX_VALUES_PER_THREAD`` fp32 values.

    In the interpreter (nothing is timed there): four rows a tile up to 1024 entries, so the
    tests' short row counts leave padding rows in the last tile, and one row a tile above.
    """
    if n_cols > NORM_MAX_FUSED_BLOCK:
        raise ValueError(f"norm_config: rows of {n_cols} entries are wider than NORM_MAX_FUSED_BLOCK="
                         f"{NORM_MAX_FUSED_BLOCK}; they take the looped kernel (NORM_LOOP)")
    block = max(16, bucket(n_cols))
    if device.INTERPRET:
        return triton.Config({"BLOCK": block, "ROWS": 4 if block <= 1024 else 1}, num_warps=1, num_stages=1)
    rows = max(1, min(64, 4096 // (block * element_size)))
    elems = rows * block
    num_warps = 4 if elems <= 2048 else 8 if elems <= 8192 else 16
    return triton.Config({"BLOCK": block, "ROWS": rows}, num_warps=num_warps, num_stages=1)


#: swiglu: 2048 elements per program over 8 warps (8 per thread). From a sweep on an H200
#: (bf16, 16384 rows of 4096 and of 8192, 2026-12-02; scratch timing, do_bench median): 0.95 and
#: 1.00 of the copy bandwidth, against 0.92 and 0.97 with 4096 over 4 warps (the previous
#: choice) and 0.96 and 1.00 for torch.compile's kernel in the same process; 1024 over 4 warps
#: was as good, 8192-element programs worse. The bench of record confirms it or not.
SWIGLU = triton.Config({"BLOCK": 2048}, num_warps=8)
#: The interpreter's: 256 elements per program, so the tests' tiny inputs span several
#: programs and a masked tail.
SWIGLU_INTERPRETER = triton.Config({"BLOCK": 256}, num_warps=1)


def swiglu_config() -> triton.Config:
    """``SWIGLU`` on a GPU, ``SWIGLU_INTERPRETER`` in the interpreter."""
    return SWIGLU_INTERPRETER if device.INTERPRET else SWIGLU


# ----------------------------------------------------------------------------
# paged_decode_attention (appendix: serving)
# ----------------------------------------------------------------------------
# The kernel is decode_attention's with the keys read through a block table. Timed on an H200
# (bf16, D = 64, blocks of 16 and 64 tokens in random order, B·S from 256·640 to 4·32768, the
# whole step from CUDA-graph replays, 2026-12-02; tools/TUNING_NOTES.md): these seven tilings
# held every shape's best within 2%, and the best split count was larger than decode_attention's
# two programs per SM where B · H_kv is small (4 × 8 heads at 32k keys: 18–36 splits, 4–9 programs
# per SM, 0.97× the contiguous kernel, against 0.79× at 9) — the indirection adds a dependent load
# to each step, and more programs in flight hide it. So the split count is tuned with the tile:
# ``PROGRAMS_PER_SM`` (not a kernel argument) sets the programs split_layout aims for.

def _pda(block_n: int, stages: int, warps: int, per_sm: int = 2) -> triton.Config:
    return triton.Config({"BLOCK_N": block_n, "PROGRAMS_PER_SM": per_sm}, num_warps=warps, num_stages=stages)


PAGED_DECODE_ATTENTION = KernelConfigs(
    name="paged_decode_attention",
    lists={
        "hopper": [_pda(bn, st, w, per_sm) for bn, st, w in ((16, 3, 2), (64, 3, 4), (32, 3, 2), (64, 3, 2),
                                                             (32, 3, 4), (32, 4, 2), (64, 4, 4))
                   for per_sm in (2, 4, 8)],
        "default": [_pda(bn, s, 4, per_sm) for bn in (16, 32, 64) for s in (2, 3) for per_sm in (2, 4)],
    },
    smem_bytes=_da_smem,           # the same K and V tiles in flight; the table is read through L1
    fallbacks=DECODE_ATTENTION.fallbacks,
    # 16 keys a step: tiles inside a block of 16 or 64 tokens, across blocks of fewer
    interpreter=_da(16, 1),
)

#: As ``DECODE_ATTENTION_TUNE_MIN_BYTES``, counting the bytes the table can address
#: (``2 · B · H_kv · max_blocks · BLOCK · D · element size``).
PAGED_DECODE_ATTENTION_TUNE_MIN_BYTES = DECODE_ATTENTION_TUNE_MIN_BYTES
