"""Compile every Triton kernel of ``infer_lib/kernels`` for GPUs this machine does not have.

Usage::

    python tools/compile_targets.py --target 75 --target 89      # T4 and L4 (what Colab lends)
    python tools/compile_targets.py --target 75 --dtype float16 --json /tmp/sm75.json
    python tools/compile_targets.py --target 90 --kernel matmul   # one kernel file, for an H100

Triton compiles for a target it is not running on: ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", 75, 32))`` lowers the kernel and runs the ``ptxas`` Triton ships, with
no GPU and no driver. This tool does that for each kernel with the configurations its launcher
would pick on the target, so a kernel that cannot build for a reader's GPU is found here rather
than in a reader's Colab session:

* **dtypes**: the chapters' working dtype there (``device.default_dtype``): bfloat16 from sm_80,
  float16 before (a T4 has no bfloat16); ``--dtype float32`` adds what the tests also run;
* **configurations**: for the tuned kernels, every candidate ``kernels/_tuning.py`` keeps after
  pruning by the target's shared memory (``KernelConfigs.candidates(capability, max_smem, ...)``,
  on representative shapes) plus the fixed configuration of untuned launches
  (``KernelConfigs.fixed(..., max_smem)``); for the others the configuration their launcher
  computes (``softmax_config``, ``norm_config``, ``swiglu_config``, ``VECTOR_ADD``, ...);
* **checks**: the kernel compiles; the shared memory Triton allocated fits the target's
  per-block limit (a launch on the GPU would fail with ``OutOfResources`` otherwise); the
  block has at most 1024 threads. Reported beside them: what the pruning keeps of each tuning
  list per shape (a list pruned to nothing leaves the tuner only the fixed fallback: a "GAP",
  a failure with ``--require-candidates``), and register spills (local memory per thread,
  from the ``cuobjdump`` Triton ships): the kernel runs, slowly.

``--quick`` compiles, of each kernel's tuning candidates, only the one with the most shared
memory, beside every fixed configuration (what tests/test_compile_targets.py runs).

Run it WITHOUT ``TRITON_INTERPRET``: ``infer_lib`` sets that variable on a machine without a GPU,
and Triton then builds interpreter objects instead of compilable kernels. This tool imports
``infer_lib.device`` (which sets it), removes it again, and only then imports the kernel modules;
it stops with a message if the kernels were already built for the interpreter (for instance
when imported into a process that had imported them before). Uses only Triton APIs present
from Triton 3.6 on (``ASTSource(fn, signature, constexprs, attrs)``, ``GPUTarget``,
``triton.compile(src, target=..., options=...)``).

Exit status 0 when everything compiles and fits, 1 otherwise, 2 when it cannot run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Target:
    """A GPU to compile for: its compute capability and the shared memory one block may opt into
    (``cudaDevAttrMaxSharedMemoryPerBlockOptin``, what ``_tuning.max_shared_memory`` reads)."""
    capability: int
    gpu: str
    max_smem: int

    @property
    def cap(self) -> tuple[int, int]:
        return divmod(self.capability, 10)

    @property
    def has_bf16(self) -> bool:
        return self.capability >= 80


TARGETS = {
    75: Target(75, "T4 (Colab's free GPU)", 64 * 1024),
    80: Target(80, "A100", 163 * 1024),
    86: Target(86, "RTX 30xx / A10", 99 * 1024),
    89: Target(89, "L4", 99 * 1024),
    90: Target(90, "H100 / H200", 227 * 1024),
}

DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
MAX_THREADS = 1024


# --------------------------------------------------------------------------- the kernels, compilable

def _import_kernels():
    """The kernel modules, imported with TRITON_INTERPRET unset so that ``@triton.jit`` builds
    ``JITFunction`` objects (``infer_lib.device`` sets the variable when there is no GPU)."""
    import infer_lib.device  # noqa: F401  (sets TRITON_INTERPRET=1 without a GPU)
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from infer_lib.kernels import (_tuning, add_rms_norm_kernel, decode_attention_kernel,
                                   flash_attention_kernel, int8_matmul_kernel, matmul_kernel,
                                   matmul_splitk_kernel, paged_decode_attention_kernel, rms_norm_kernel,
                                   rope_cache_kernel, softmax_kernel, swiglu_kernel, vector_add_kernel)
    mods = {m.__name__.rsplit(".", 1)[-1]: m for m in (
        vector_add_kernel, softmax_kernel, matmul_kernel, matmul_splitk_kernel, int8_matmul_kernel,
        flash_attention_kernel, decode_attention_kernel, paged_decode_attention_kernel, rms_norm_kernel,
        add_rms_norm_kernel, swiglu_kernel, rope_cache_kernel)}
    jit = triton.runtime.jit.JITFunction
    for name, mod in mods.items():
        for attr, obj in vars(mod).items():
            if attr.startswith("_") and attr.endswith("_kernel") and not isinstance(obj, jit) \
                    and type(obj).__name__ == "InterpretedFunction":
                raise SystemExit(
                    f"compile_targets: {name}.{attr} was built for Triton's interpreter (TRITON_INTERPRET "
                    "was set when the kernels were imported); run this tool in a fresh process "
                    "without TRITON_INTERPRET")
    return _tuning, mods


def jit_kernels(mods) -> dict[str, object]:
    """Every launched ``@triton.jit`` kernel of the modules, ``module.name`` -> function (device
    helpers such as ``_attn_fwd_inner`` compile as part of the kernels that call them)."""
    import triton
    out = {}
    for mod_name, mod in mods.items():
        for attr, obj in vars(mod).items():
            if isinstance(obj, triton.runtime.jit.JITFunction) and attr.endswith("_kernel") \
                    and obj.fn.__module__ == mod.__name__:
                out[f"{mod_name}.{attr}"] = obj
    return out


# --------------------------------------------------------------------------- cases

@dataclass
class Case:
    """One compilation: a kernel, its argument values as a launch would pass them, a configuration."""
    kernel: str                 # "matmul_kernel._matmul_kernel"
    what: str                   # the launch it stands for, e.g. "M=4096 N=K=4096"
    dtype: str                  # torch dtype name of the data
    values: dict                # arg -> "*fp16" (pointer) | int | float | constexpr value
    num_warps: int
    num_stages: int
    source: str                 # where the configuration comes from
    estimate: int | None = None  # _tuning's shared-memory estimate, bytes
    variant: bool = False       # a second variant of the same code (causal masking): not in --quick

    def key(self, fn) -> tuple:
        """What Triton compiles: the specialised signature and the launch options (two launches
        that differ only in unspecialised integers compile to the same binary)."""
        sig, consts, attrs = signature(fn, self.values)
        return (self.kernel, json.dumps([sig, consts, sorted(attrs)], sort_keys=True, default=str),
                self.num_warps, self.num_stages)


@dataclass
class Pruning:
    """What the pruning of one tuning list keeps for one shape on one target."""
    target: int
    configs: str
    what: str
    dtype: str
    listed: int
    fit_smem: int
    candidates: int

    @property
    def ok(self) -> bool:
        return self.fit_smem > 0


def _cfg_text(cfg) -> str:
    kw = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{kw} warps={cfg.num_warps} stages={cfg.num_stages}"


@contextlib.contextmanager
def _as_compiled(tuning):
    """The launch-time choices of a GPU, asked here: ``device.INTERPRET`` False while the
    configuration functions run (they return the interpreter's tiny tiles otherwise)."""
    dev = tuning.device
    saved = dev.INTERPRET
    dev.INTERPRET = False
    try:
        yield
    finally:
        dev.INTERPRET = saved


def build_cases(target: Target, dtypes: list[str], tuning, mods) -> tuple[list[Case], list[Pruning]]:
    import torch

    cases: list[Case] = []
    prunings: list[Pruning] = []
    cap, smem = target.cap, target.max_smem

    def tuned(configs, esize: int, shape: dict, what: str, dtype: str):
        """The candidates the tuner times on this target, then the fixed configuration."""
        listed = configs.config_list(cap)
        fit = [c for c in listed if configs.smem_bytes(c, esize, shape) <= smem]
        cands = configs.candidates(cap, smem, esize, shape) if listed else []
        prunings.append(Pruning(target.capability, configs.name, what, dtype, len(listed), len(fit), len(cands)))
        with _as_compiled(tuning):
            fixed = configs.fixed(esize, shape, smem)
        out = [(c, "candidate") for c in cands]
        if all(_cfg_text(c) != _cfg_text(fixed) for c in cands):
            out.append((fixed, "fixed"))
        return [(c, src, configs.smem_bytes(c, esize, shape)) for c, src in out]

    for dtype in dtypes:
        tdt = getattr(torch, dtype)
        esize = tdt.itemsize
        p = "*" + DTYPE_NAMES[dtype]
        precision = "ieee" if dtype == "float32" else "tf32"   # fp32: torch's default "highest"

        # vector_add (chapter 1): one configuration
        cfg = tuning.VECTOR_ADD
        cases.append(Case("vector_add_kernel._vector_add_kernel", "n=2**24", dtype,
                          dict(x_ptr=p, y_ptr=p, out_ptr=p, n_elements=2**24, **cfg.kwargs),
                          cfg.num_warps, cfg.num_stages, "VECTOR_ADD"))

        # softmax: the one-pass kernel at the widths the chapters and the bench use, the online
        # kernel past SOFTMAX_MAX_FUSED_BLOCK
        for n_cols in (1000, 4096, 32768):
            cfg = tuning.softmax_config(n_cols, esize, max_smem=smem)
            cases.append(Case("softmax_kernel._softmax_kernel", f"rows of {n_cols}", dtype,
                              dict(x_ptr=p, out_ptr=p, n_rows=4096, n_cols=n_cols, stride_x=n_cols,
                                   stride_out=n_cols, BLOCK=cfg.kwargs["BLOCK"], ROWS=cfg.kwargs["ROWS"],
                                   NUM_STAGES=cfg.num_stages),
                              cfg.num_warps, cfg.num_stages, "softmax_config"))
        cfg = tuning.SOFTMAX_ONLINE
        cases.append(Case("softmax_kernel._softmax_online_kernel", "rows of 65536", dtype,
                          dict(x_ptr=p, out_ptr=p, n_cols=65536, stride_x=65536, stride_out=65536,
                               **cfg.kwargs), cfg.num_warps, cfg.num_stages, "SOFTMAX_ONLINE"))

        # matmul, tiled (M > SMALL_M)
        M = N = K = 4096
        for cfg, src, est in tuned(tuning.MATMUL, esize, {"M": M, "N": N}, f"M=N=K={M}", dtype):
            cases.append(Case("matmul_kernel._matmul_kernel", f"M=N=K={M}", dtype, dict(
                a_ptr=p, b_ptr=p, c_ptr=p, M=M, N=N, K=K, stride_am=K, stride_ak=1, stride_bk=N,
                stride_bn=1, stride_cm=N, stride_cn=1, **cfg.kwargs, UPCAST=False,
                INPUT_PRECISION=precision), cfg.num_warps, cfg.num_stages, f"MATMUL {src}", est))

        # matmul_splitk: decode shapes, one row tile per bucket of M
        for M in (1, 32, 64):
            shape = {"M": M, "N": N, "K": K}
            for cfg, src, est in tuned(tuning.SPLITK_MATMUL, esize, shape, f"M={M} N=K={N}", dtype):
                cases.append(Case("matmul_splitk_kernel._matmul_splitk_kernel", f"M={M} N=K={N}", dtype, dict(
                    a_ptr=p, b_ptr=p, c_ptr=p, partial_ptr="*fp32", count_ptr="*i32", M=M, N=N, K=K,
                    K_SPLIT=K // cfg.kwargs["SPLIT_K"], stride_am=K, stride_ak=1, stride_bk=N, stride_bn=1,
                    stride_cm=N, stride_cn=1, **cfg.kwargs, UPCAST=False, INPUT_PRECISION=precision),
                    cfg.num_warps, cfg.num_stages, f"SPLITK_MATMUL {src}", est))

        # int8_matmul: decode shapes and a prefill-like one
        for M in (1, 32, 64, 256):
            shape = {"M": M, "N": N, "K": K}
            for cfg, src, est in tuned(tuning.INT8_MATMUL, esize, shape, f"M={M} N=K={N}", dtype):
                cases.append(Case("int8_matmul_kernel._int8_matmul_kernel", f"M={M} N=K={N}", dtype, dict(
                    a_ptr=p, w_ptr="*i8", scale_ptr="*fp32", c_ptr=p, partial_ptr="*fp32", count_ptr="*i32",
                    M=M, N=N, K=K, K_SPLIT=K // cfg.kwargs["SPLIT_K"], stride_am=K, stride_ak=1,
                    stride_wk=N, stride_wn=1, stride_s=1, stride_cm=N, stride_cn=1, **cfg.kwargs,
                    UPCAST=False, INPUT_PRECISION=precision),
                    cfg.num_warps, cfg.num_stages, f"INT8_MATMUL {src}", est))

        # flash_attention: (B, H, S, D) contiguous, S = 4096; fp32 takes its own fixed list
        S, H = 4096, 32
        configs = tuning.FLASH_ATTENTION_FP32 if dtype == "float32" else tuning.FLASH_ATTENTION
        for D in (64, 128):
            strides = dict(zip("bhmd", (H * S * D, S * D, D, 1)))
            for cfg, src, est in tuned(configs, esize, {"D": D}, f"D={D}", dtype):
                for causal in (False, True):
                    values = dict(q_ptr=p, k_ptr=p, v_ptr=p, o_ptr=p, qk_scale=0.18)
                    for t in "qkvo":
                        values.update({f"stride_{t}{a}": strides[a if a != "n" else "m"]
                                       for a in ("b", "h", "m" if t in "qo" else "n", "d")})
                    values.update(H=H, GROUP=1, S_q=S, S_k=S, HEAD_DIM=D, IS_CAUSAL=causal, UPCAST=False,
                                  DOT_PRECISION="ieee" if dtype == "float32" else "tf32", **cfg.kwargs)
                    cases.append(Case("flash_attention_kernel._flash_attention_kernel",
                                      f"D={D} {'causal' if causal else 'full'}", dtype, values,
                                      cfg.num_warps, cfg.num_stages, f"{configs.name} {src}", est,
                                      variant=causal))

        # decode_attention and its combine; paged_decode_attention over blocks of 16 tokens
        B, H_kv, S_max = 16, 8, 4096
        for D in (64, 128):
            for group in (4, 32):            # GQA (16-row tiles) and MQA-like (32-row tiles)
                Hq = H_kv * group
                block_g = max(16, tuning.bucket(group))
                common = dict(HEAD_DIM=D, BLOCK_G=block_g, UPCAST=False,
                              DOT_PRECISION="ieee" if dtype == "float32" else "tf32")
                kv = dict(zip(("b", "h", "n", "d"), (H_kv * S_max * D, S_max * D, D, 1)))
                for cfg, src, est in tuned(tuning.DECODE_ATTENTION, esize, {"D": D},
                                           f"D={D} group={group}", dtype):
                    values = dict(q_ptr=p, k_ptr=p, v_ptr=p, seqlens_ptr="*i32", o_part_ptr="*fp32",
                                  m_part_ptr="*fp32", l_part_ptr="*fp32", qk_scale=0.18,
                                  stride_qb=Hq * D, stride_qh=D, stride_qd=1,
                                  **{f"stride_{t}{a}": kv[a] for t in "kv" for a in "bhnd"},
                                  H_kv=H_kv, GROUP=group, S_max=S_max, CHUNK=1024, NUM_SPLITS=4,
                                  BLOCK_N=cfg.kwargs["BLOCK_N"], **common)
                    cases.append(Case("decode_attention_kernel._decode_attention_kernel",
                                      f"D={D} group={group}", dtype, values, cfg.num_warps, cfg.num_stages,
                                      f"DECODE_ATTENTION {src}", est))
                page = 16
                blk = dict(zip(("blk", "h", "n", "d"), (H_kv * page * D, page * D, D, 1)))
                for cfg, src, est in tuned(tuning.PAGED_DECODE_ATTENTION, esize, {"D": D, "BLOCK": page},
                                           f"D={D} group={group} page={page}", dtype):
                    values = dict(q_ptr=p, k_ptr=p, v_ptr=p, table_ptr="*i32", seqlens_ptr="*i32",
                                  o_part_ptr="*fp32", m_part_ptr="*fp32", l_part_ptr="*fp32", qk_scale=0.18,
                                  stride_qb=Hq * D, stride_qh=D, stride_qd=1,
                                  **{f"stride_{t}{a}": blk[a] for t in "kv" for a in ("blk", "h", "n", "d")},
                                  stride_tb=S_max // page, stride_tj=1,
                                  H_kv=H_kv, GROUP=group, S_max=S_max, NUM_BLOCKS=B * S_max // page,
                                  CHUNK=1024, NUM_SPLITS=4, PAGE=page, BLOCK_N=cfg.kwargs["BLOCK_N"], **common)
                    cases.append(Case("paged_decode_attention_kernel._paged_decode_attention_kernel",
                                      f"D={D} group={group} page={page}", dtype, values, cfg.num_warps,
                                      cfg.num_stages, f"PAGED_DECODE_ATTENTION {src}", est))
            for splits in (1, 4, 64):
                cases.append(Case("decode_attention_kernel._decode_combine_kernel", f"D={D} splits={splits}",
                                  dtype, dict(o_part_ptr="*fp32", m_part_ptr="*fp32", l_part_ptr="*fp32",
                                              seqlens_ptr="*i32", o_ptr=p, stride_ob=32 * D, stride_oh=D,
                                              stride_od=1, H=32, S_max=S_max, CHUNK=S_max // splits,
                                              NUM_SPLITS=splits, HEAD_DIM=D,
                                              BLOCK_S=tuning.bucket(splits)), 4, 3, "decode_attention._launch"))

        # rms_norm and add_rms_norm: the one-pass kernels at model widths, the looped ones past them
        with _as_compiled(tuning):
            norm = {n: tuning.norm_config(n, esize) for n in (2048, 4096, 8192, tuning.NORM_MAX_FUSED_BLOCK)}
            swiglu = tuning.swiglu_config()
        for n_cols, cfg in norm.items():
            base = dict(n_rows=4096, n_cols=n_cols, stride_w=1, eps=1e-6, **cfg.kwargs)
            cases.append(Case("rms_norm_kernel._rms_norm_kernel", f"rows of {n_cols}", dtype,
                              dict(x_ptr=p, w_ptr=p, out_ptr=p, stride_x=n_cols, stride_out=n_cols, **base),
                              cfg.num_warps, cfg.num_stages, "norm_config"))
            cases.append(Case("add_rms_norm_kernel._add_rms_norm_kernel", f"rows of {n_cols}", dtype,
                              dict(x_ptr=p, res_ptr=p, w_ptr=p, h_ptr=p, out_ptr=p, stride_x=n_cols,
                                   stride_res=n_cols, stride_h=n_cols, stride_out=n_cols, **base),
                              cfg.num_warps, cfg.num_stages, "norm_config"))
        cfg, n_cols = tuning.NORM_LOOP, 2 * tuning.NORM_MAX_FUSED_BLOCK
        base = dict(n_cols=n_cols, stride_w=1, eps=1e-6, **cfg.kwargs)
        cases.append(Case("rms_norm_kernel._rms_norm_looped_kernel", f"rows of {n_cols}", dtype,
                          dict(x_ptr=p, w_ptr=p, out_ptr=p, stride_x=n_cols, stride_out=n_cols, **base),
                          cfg.num_warps, cfg.num_stages, "NORM_LOOP"))
        cases.append(Case("add_rms_norm_kernel._add_rms_norm_looped_kernel", f"rows of {n_cols}", dtype,
                          dict(x_ptr=p, res_ptr=p, w_ptr=p, h_ptr=p, out_ptr=p, stride_x=n_cols,
                               stride_res=n_cols, stride_h=n_cols, stride_out=n_cols, **base),
                          cfg.num_warps, cfg.num_stages, "NORM_LOOP"))

        # swiglu: contiguous inputs are one row
        cases.append(Case("swiglu_kernel._swiglu_kernel", "16384 x 4096, contiguous", dtype,
                          dict(gate_ptr=p, up_ptr=p, out_ptr=p, n_rows=1, n_cols=16384 * 4096,
                               stride_gate=16384 * 4096, stride_up=16384 * 4096, stride_out=16384 * 4096,
                               **swiglu.kwargs), swiglu.num_warps, swiglu.num_stages, "swiglu_config"))

        # rope_cache: q (B, S, H, D), k and v (B, S, H_kv, D), caches (B, H_kv, S_max, D)
        for D in (64, 128):
            B, S, H, H_kv, S_max = 4, 512, 32, 8, 4096
            cases.append(Case("rope_cache_kernel._rope_cache_kernel", f"D={D}", dtype, dict(
                q_ptr=p, k_ptr=p, v_ptr=p, cos_ptr="*fp32", sin_ptr="*fp32", pos_ptr="*i64", q_out_ptr=p,
                kc_ptr=p, vc_ptr=p, S=S, H=H, H_kv=H_kv,
                stride_qb=S * H * D, stride_qs=H * D, stride_qh=D,
                stride_kb=S * H_kv * D, stride_ks=H_kv * D, stride_kh=D,
                stride_vb=S * H_kv * D, stride_vs=H_kv * D, stride_vh=D,
                stride_cb=S * D, stride_cs=D,
                stride_kcb=H_kv * S_max * D, stride_kch=S_max * D, stride_kcs=D,
                stride_vcb=H_kv * S_max * D, stride_vch=S_max * D, stride_vcs=D,
                D=D, BLOCK_D=tuning.bucket(D)), 1, 3, "rope_cache launcher"))
    return cases, prunings


def select(cases: list[Case], kernels: dict, quick: bool) -> list[Case]:
    """One case per distinct compilation. ``quick``: of each kernel's tuning candidates (all
    shapes together) only the one with the most shared memory by ``_tuning``'s estimate — the
    first to overflow a small GPU — beside the fixed configuration of every shape, and no
    second variants of the same code (flash attention's causal masking)."""
    if quick:
        largest: dict[tuple, Case] = {}
        for c in cases:
            if c.source.endswith(" candidate") and not c.variant:
                group = (c.kernel, c.dtype)
                if group not in largest or (c.estimate or 0) > (largest[group].estimate or 0):
                    largest[group] = c
        keep = {id(c) for c in largest.values()}
        cases = [c for c in cases if not c.variant
                 and (not c.source.endswith(" candidate") or id(c) in keep)]
    unique: dict[tuple, Case] = {}
    for c in cases:
        unique.setdefault(c.key(kernels[c.kernel]), c)
    return list(unique.values())


# --------------------------------------------------------------------------- compiling

def signature(fn, values: dict) -> tuple[dict, dict, dict]:
    """``(signature, constexprs, attrs)`` for ``ASTSource`` from the values a launch passes,
    specialised the way Triton's launcher specialises them: a pointer (written ``"*fp16"``)
    16-byte aligned, an integer equal to 1 a constant, one divisible by 16 marked so — except
    for parameters in ``do_not_specialize``."""
    names = [p.name for p in fn.params]
    unknown = sorted(set(values) - set(names))
    missing = [n for n in names if n not in values]
    if unknown or missing:
        raise ValueError(f"{fn.__name__}: values for unknown parameters {unknown}, none for {missing}")
    sig, consts, attrs = {}, {}, {}
    aligned = [["tt.divisibility", 16]]
    for i, param in enumerate(fn.params):
        name, v = param.name, values[param.name]
        if param.is_constexpr:
            sig[name], consts[name] = "constexpr", v
        elif isinstance(v, str) and v.startswith("*"):
            sig[name] = v
            attrs[(i,)] = aligned
        elif isinstance(v, bool):
            raise TypeError(f"{fn.__name__}: {name} is a runtime bool; give the kernel a constexpr")
        elif isinstance(v, int):
            kind = "i32" if -2**31 <= v < 2**31 else "i64"
            if getattr(param, "do_not_specialize", False):
                sig[name] = kind
            elif v == 1:
                sig[name], consts[name] = "constexpr", 1
            else:
                sig[name] = kind
                if v % 16 == 0:
                    attrs[(i,)] = aligned
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot pass {name}={v!r}")
    return sig, consts, attrs


def _cuobjdump() -> str | None:
    try:
        import triton.backends.nvidia as nv
    except ImportError:
        return None
    path = Path(nv.__file__).parent / "bin" / "cuobjdump"
    return str(path) if path.is_file() else shutil.which("cuobjdump")


def resource_usage(cubin: bytes) -> dict:
    """Registers and local memory per thread of a cubin (``cuobjdump --dump-resource-usage``);
    empty where the tool is missing."""
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    usage = {}
    for token in out.split():
        if ":" in token:
            k, _, v = token.partition(":")
            if k in ("REG", "STACK", "LOCAL") and v.isdigit():
                usage[k.lower()] = int(v)
    return usage


@dataclass
class Result:
    case: Case
    capability: int
    ok: bool
    seconds: float
    shared: int | None = None
    regs: int | None = None
    stack: int | None = None
    error: str = ""
    warnings: list[str] = field(default_factory=list)


_STATE: dict = {}


def _compile_one(args: tuple[int, int]) -> Result:
    index, capability = args
    import triton
    from triton.backends.compiler import GPUTarget

    case = _STATE["cases"][capability][index]
    target = TARGETS[capability]
    fn = _STATE["kernels"][case.kernel]
    t0 = time.monotonic()
    res = Result(case, capability, ok=False, seconds=0.0)
    try:
        sig, consts, attrs = signature(fn, case.values)
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32),
                                  options={"num_warps": case.num_warps, "num_stages": case.num_stages})
    except Exception as exc:  # noqa: BLE001 — every compiler error is a finding
        text = f"{type(exc).__name__}: {exc}"
        res.error = "\n".join(line for line in text.splitlines() if line.strip())[-1500:]
        res.seconds = time.monotonic() - t0
        return res
    res.seconds = time.monotonic() - t0
    res.shared = int(compiled.metadata.shared)
    usage = resource_usage(compiled.asm["cubin"]) if "cubin" in compiled.asm else {}
    res.regs, res.stack = usage.get("reg"), usage.get("stack")
    problems = []
    if res.shared > target.max_smem:
        problems.append(f"needs {res.shared} bytes of shared memory, the {target.gpu} allows "
                        f"{target.max_smem} per block (a launch raises OutOfResources)")
    if case.num_warps * 32 > MAX_THREADS:
        problems.append(f"{case.num_warps} warps are {case.num_warps * 32} threads, over CUDA's {MAX_THREADS}")
    res.error = "; ".join(problems)
    res.ok = not problems
    if res.stack:
        res.warnings.append(f"{res.stack} bytes of local memory per thread (registers spill: slow)")
    return res


def run(targets: list[Target], dtypes_for, kernels_filter: list[str] | None, jobs: int,
        quick: bool = False, log=print) -> tuple[list[Result], list[Pruning], dict]:
    tuning, mods = _import_kernels()
    kernels = jit_kernels(mods)
    all_cases, prunings = {}, {}
    for t in targets:
        cases, prune = build_cases(t, dtypes_for(t), tuning, mods)
        cases = select(cases, kernels, quick)
        if kernels_filter:
            cases = [c for c in cases if any(c.kernel.split(".")[0].removesuffix("_kernel") == k
                                             or c.kernel.split(".")[1].strip("_") == k for k in kernels_filter)]
        all_cases[t.capability] = cases
        prunings[t.capability] = prune
    covered = {c.kernel for cs in all_cases.values() for c in cs}
    uncovered = sorted(set(kernels) - covered) if not kernels_filter else []
    _STATE.update(cases=all_cases, kernels=kernels)
    work = [(i, t.capability) for t in targets for i in range(len(all_cases[t.capability]))]
    log(f"compile_targets: {len(work)} compilations for "
        + ", ".join(f"sm_{t.capability} ({t.gpu}, {t.max_smem // 1024} KB shared memory per block)"
                    for t in targets) + f", {jobs} at a time")
    results: list[Result] = []
    if jobs > 1:
        import multiprocessing
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_compile_one, work, chunksize=1))
    else:
        results = [_compile_one(w) for w in work]
    return results, [p for t in targets for p in prunings[t.capability]], \
        {"uncovered": uncovered, "kernels": sorted(kernels)}


def report(results: list[Result], prunings: list[Pruning], extra: dict, targets: list[Target],
           verbose: bool, require_candidates: bool = False) -> int:
    failures = 0
    for t in targets:
        rs = [r for r in results if r.capability == t.capability]
        bad = [r for r in rs if not r.ok]
        print(f"\nsm_{t.capability} — {t.gpu}, {t.max_smem // 1024} KB shared memory per block: "
              f"{len(rs) - len(bad)} of {len(rs)} compilations ok")
        by_kernel: dict[str, list[Result]] = {}
        for r in rs:
            by_kernel.setdefault(r.case.kernel, []).append(r)
        for kernel, krs in by_kernel.items():
            nbad = sum(not r.ok for r in krs)
            top = max((r.shared or 0) for r in krs)
            spills = sum(bool(r.stack) for r in krs)
            dtypes = sorted({r.case.dtype for r in krs})
            print(f"  {'FAIL' if nbad else 'ok  '}  {kernel}: {len(krs)} configurations ({', '.join(dtypes)}), "
                  f"shared memory up to {top // 1024} KB"
                  + (f", {spills} spill registers" if spills else "")
                  + f", {sum(r.seconds for r in krs):.0f} s")
            for r in krs:
                cfg = f"{r.case.dtype} {r.case.what}: {r.case.source} " + ", ".join(
                    f"{k}={v}" for k, v in r.case.values.items() if k.isupper()) + \
                    f" warps={r.case.num_warps} stages={r.case.num_stages}"
                if not r.ok:
                    print(f"        FAIL  {cfg}\n              {r.error}")
                elif verbose:
                    est = f" (estimate {r.case.estimate})" if r.case.estimate is not None else ""
                    print(f"        ok    {cfg}: shared {r.shared}{est}, regs {r.regs}, stack {r.stack}"
                          + (f"  warn: {'; '.join(r.warnings)}" if r.warnings else ""))
            failures += nbad
        print(f"  pruning by {t.max_smem // 1024} KB of shared memory (configurations listed → fitting "
              "→ timed candidates for the shape):")
        seen = set()
        for p in prunings:
            line = f"{p.configs} {p.dtype} {p.what}: {p.listed} → {p.fit_smem} → {p.candidates}"
            if p.target == t.capability and p.listed and line not in seen:
                seen.add(line)
                print(f"  {'ok  ' if p.ok else 'GAP '}  {line}")
    empty = [p for p in prunings if not p.ok]
    for p in empty:
        if p.listed:
            print(f"{'FAIL' if require_candidates else 'GAP '}  pruning: {p.configs} keeps none of its "
                  f"{p.listed} configurations for {p.dtype} {p.what} on this target: the tuner has only "
                  "the fixed fallback to run")
            failures += require_candidates
    if extra["uncovered"]:
        print(f"FAIL  kernels with no compilation case in tools/compile_targets.py: {extra['uncovered']}")
        failures += len(extra["uncovered"])
    n = len(results)
    print(f"\ncompile_targets: {n} compilations, {sum(not r.ok for r in results)} failed, "
          f"{failures} failures in all")
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=int, action="append", choices=sorted(TARGETS),
                    help="compute capability as a number (75 = sm_75); repeat for several (default 75, 89)")
    ap.add_argument("--dtype", action="append", choices=list(DTYPE_NAMES),
                    help="data types (default: the chapters' working dtype on the target: bfloat16 from "
                         "sm_80, float16 before); bfloat16 is skipped on targets without it")
    ap.add_argument("--quick", action="store_true",
                    help="of each kernel's tuning candidates only the one with the most shared memory "
                         "(by _tuning's estimate), beside the fixed configurations; no causal variants")
    ap.add_argument("--kernel", action="append", metavar="NAME",
                    help="only this kernel file's kernels (e.g. matmul, softmax); repeatable")
    ap.add_argument("--require-candidates", action="store_true",
                    help="fail when pruning leaves a tuning list without any configuration for a shape")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compilations at once")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write every result here")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per compilation")
    args = ap.parse_args(argv)
    targets = [TARGETS[c] for c in (args.target or [75, 89])]

    def dtypes_for(t: Target) -> list[str]:
        wanted = args.dtype or ["bfloat16" if t.has_bf16 else "float16"]
        return [d for d in wanted if d != "bfloat16" or t.has_bf16]

    started = time.monotonic()
    try:
        results, prunings, extra = run(targets, dtypes_for, args.kernel, max(1, args.jobs), args.quick)
    except ImportError as exc:
        print(f"compile_targets: {exc} (needs torch and triton: make setup)", file=sys.stderr)
        return 2
    failures = report(results, prunings, extra, targets, args.verbose, args.require_candidates)
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({
            "targets": [asdict(t) for t in targets],
            "results": [{**{k: v for k, v in asdict(r).items() if k != "case"},
                         "kernel": r.case.kernel, "what": r.case.what, "dtype": r.case.dtype,
                         "source": r.case.source, "estimate": r.case.estimate,
                         "num_warps": r.case.num_warps, "num_stages": r.case.num_stages,
                         "constexprs": {k: v for k, v in r.case.values.items() if k.isupper()}}
                        for r in results],
            "pruning": [{**asdict(p), "ok": p.ok} for p in prunings],
            **extra, "failures": failures}, indent=1, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
