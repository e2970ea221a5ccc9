"""The setup check every participant runs first: ``python -m infer_lib.check``.

It answers, one line each, what the course needs to know about this machine: Python;
PyTorch and whether it is a CUDA build; Triton (installed or not, compiling or
interpreting); the GPU, its compute capability and memory against what the chapters
need; the working dtype; one Triton kernel and one ``tl.dot`` kernel run and checked
against their PyTorch references; the optional packages of single chapters; the
Jupyter pieces the notebooks import. Each line is a ``Result(status, title, detail, fix)``
with status ✅ (fine), ⚠️ (the course runs, with less: say what) or ❌ (something the
course needs is broken: the fix says what to do).

``run()`` returns the lines; ``main()`` prints them, then a summary with the fix of every
⚠️ and ❌ line, and exits 1 if a line is ❌, else 0. Every probe is wrapped: an exception
becomes a ❌ line carrying its reason, so the check itself never crashes. It takes seconds
on a CPU (the two kernels run in Triton's interpreter on small inputs) and on a GPU (where
the two kernels are compiled, or read from Triton's cache).

The memory the chapters need is derived from the package, not typed: the largest model a
chapter builds live is chapter 5's Llama-3.2-1B sweep (``device.Profile.prefill_decode``),
so the need is its weights in 16 bit plus the KV cache of the sweep's largest batch at its
context (``memory_need``).

References: Triton's supported hardware, "NVIDIA GPUs (Compute Capability 8.0+)"
(https://github.com/triton-lang/triton#compatibility); bf16 tensor cores from compute
capability 8.0 (``device.supports_bf16``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import math
import platform
import re
import shutil
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from . import device

OK, WARN, FAIL = "✅", "⚠️", "❌"
STATUSES = (OK, WARN, FAIL)

#: The compute capability Triton supports (its README, "Compatibility"); older GPUs (the T4 is
#: sm_75) run the kernels best-effort.
TRITON_MIN_CAPABILITY = (8, 0)

#: (atol, rtol) of a kernel against its fp32 reference, per dtype (the tests' tolerances); a
#: matmul's atol is scaled by sqrt(K), the typical size of its outputs on unit-normal inputs.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 1.6e-2)}
#: the matmul checked: M past the split-K kernel's rows (``_tuning.SMALL_M``), so the tiled
#: kernel's ``tl.dot`` runs; odd sizes, so every edge tile is masked; far below the work at which
#: a shape is tuned, so nothing is timed
MATMUL_SHAPE = (97, 75, 53)   # (M, K, N)

COLAB_GPU_FIX = ("Colab: Runtime → Change runtime type → Hardware accelerator: a GPU (T4 is free) → "
                 "Save, then run again from the top.")
LAPTOP_GPU_NOTE = ("Nothing to fix for a laptop run; to compile the kernels and time them live, open "
                   "the chapter in Colab with a GPU runtime (its badge) or use the workshop's GPU server.")


class Result(NamedTuple):
    """One line of the check: ``status`` (✅, ⚠️ or ❌), what was checked (``title``), what was
    found (``detail``), and for ⚠️ and ❌ what to do about it (``fix``)."""

    status: str
    title: str
    detail: str
    fix: str = ""


def in_colab() -> bool:
    """Whether this runs in Google Colab (in a notebook, or a shell command of one)."""
    return "google.colab" in sys.modules or device.installed("google.colab")


def _gpu_fix() -> str:
    return COLAB_GPU_FIX if in_colab() else LAPTOP_GPU_NOTE


def _has_nvidia_driver() -> bool:
    """An NVIDIA driver on this machine (``nvidia-smi`` on the PATH), whatever torch sees."""
    return shutil.which("nvidia-smi") is not None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


# ------------------------------------------------------------------------------------------
# What the chapters need
# ------------------------------------------------------------------------------------------

def _metadata_field(name: str) -> list[str]:
    """A field of infer-lib's installed metadata (all its values); empty where not installed."""
    try:
        return importlib.metadata.metadata("infer-lib").get_all(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []


def required_python() -> tuple[int, int]:
    """The oldest Python the package supports: ``Requires-Python`` of its metadata, else of
    ``pyproject.toml`` in a checkout run without installing."""
    spec = next(iter(_metadata_field("Requires-Python")), None)
    if spec is None:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        m = re.search(r'^requires-python\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
        spec = m.group(1) if m else ""
    m = re.search(r">=\s*(\d+)\.(\d+)", spec)
    if not m:
        raise ValueError(f"cannot read the oldest supported Python from {spec!r}")
    return int(m.group(1)), int(m.group(2))


def extra_numpy_bound(extra: str) -> tuple[int, ...] | None:
    """The ``numpy<X.Y`` bound an extra of the package declares (``cuda-kernels``: numba-cuda up to
    0.30.4 breaks on a GPU with NumPy 2.5), or None."""
    for req in _metadata_field("Requires-Dist"):
        m = re.match(r"numpy\s*<\s*([\d.]+)\s*;\s*extra\s*==\s*[\"']([\w-]+)[\"']", req)
        if m and m.group(2) == extra:
            return tuple(int(p) for p in m.group(1).split("."))
    return None


@dataclass(frozen=True)
class MemoryNeed:
    """The GPU memory of the chapters' largest live run: chapter 5's sweep of ``preset`` in
    ``dtype``, its weights plus the KV cache of its longest sequence (``cache_batch`` sequences
    of ``cache_tokens`` positions)."""

    profile: str
    preset: str
    dtype: torch.dtype
    weights_bytes: int
    cache_batch: int
    cache_tokens: int
    cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.cache_bytes

    def describe(self) -> str:
        return (f"{self.preset} in {device.dtype_name(self.dtype)}: {_gib(self.weights_bytes)} of "
                f"weights + {_gib(self.cache_bytes)} of KV cache ({self.cache_batch} × "
                f"{self.cache_tokens} tokens) = {_gib(self.total_bytes)}")


def memory_need(profile: device.Profile | None = None) -> MemoryNeed:
    """What the largest model a chapter builds live takes in GPU memory, at least.

    Chapter 5 runs ``prefill_decode.run`` on ``profile.prefill_decode``: a model of that preset
    in the machine's 16-bit dtype, prompts of up to ``max(lengths)`` tokens (batch 1), and
    decoding steps of up to ``max(batches)`` sequences whose caches hold ``context + 1``
    positions (the step writes one more token). The need is the weights plus the larger of
    those caches; activations add a few hundred MB on top. ``profile`` defaults to this GPU's
    (``device.profile()``), and without a GPU to the smallest GPU profile (what a 16 GB-class
    GPU such as Colab's T4 runs)."""
    from .model.config import ModelConfig   # here: a failure becomes the probe's ❌ line

    if profile is None:
        live = [p for p in device.PROFILES.values() if p.prefill_decode is not None]
        profile = device.profile() if device.HAS_GPU else min(
            live, key=lambda p: memory_need(p).total_bytes)
    sizes = profile.prefill_decode
    if sizes is None:
        raise ValueError(f"profile {profile.name!r} builds no model live (prefill_decode is None)")
    config = ModelConfig.from_preset(sizes.preset)
    dtype = device.default_dtype() if device.HAS_GPU else torch.bfloat16
    element = torch.empty((), dtype=dtype).element_size()
    decode_tokens = max(sizes.batches) * (sizes.context + 1)
    batch, tokens = ((max(sizes.batches), sizes.context + 1) if decode_tokens >= max(sizes.lengths)
                     else (1, max(sizes.lengths)))
    return MemoryNeed(profile=profile.name, preset=sizes.preset, dtype=dtype,
                      weights_bytes=config.num_params() * element, cache_batch=batch,
                      cache_tokens=tokens,
                      cache_bytes=config.kv_cache_bytes_per_token(dtype) * batch * tokens)


# ------------------------------------------------------------------------------------------
# The probes: each returns its Result; run() turns an exception into a ❌ line
# ------------------------------------------------------------------------------------------

def probe_python(title: str) -> Result:
    have, need = sys.version_info[:2], required_python()
    text = f"{platform.python_version()} ({platform.python_implementation()}, {platform.system()})"
    if have < need:
        return Result(FAIL, title, f"{text}; infer_lib needs Python {need[0]}.{need[1]} or newer",
                      f"Install Python {need[0]}.{need[1]}+ (Colab's is recent enough) and make a "
                      "fresh virtual environment.")
    return Result(OK, title, f"{text}; the course needs {need[0]}.{need[1]} or newer")


def probe_torch(title: str) -> Result:
    cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    build = f"CUDA {cuda} build" if cuda else f"ROCm {hip} build" if hip else "CPU-only build"
    text = f"torch {torch.__version__}, {build}"
    if hip:
        return Result(WARN, title, f"{text}: the course is written and measured for NVIDIA GPUs; on "
                      "AMD, Triton kernels may compile but nothing here is tested there",
                      "Use an NVIDIA GPU (Colab, or the workshop's server) for the measured path.")
    if not cuda and _has_nvidia_driver():
        return Result(WARN, title, f"{text}, but this machine has an NVIDIA driver (nvidia-smi): torch "
                      "cannot use the GPU, so everything runs on the CPU",
                      "Install a CUDA build of torch (the command for your CUDA version is on "
                      "https://pytorch.org/get-started/locally/), then run this check again.")
    if cuda and not device.HAS_GPU:
        where = (" although nvidia-smi is there: the driver may be older than this CUDA needs "
                 "(nvidia-smi prints the newest CUDA its driver supports)") if _has_nvidia_driver() else ""
        return Result(OK, title, f"{text}; it sees no GPU{where}")
    return Result(OK, title, text)


def probe_triton(title: str) -> Result:
    if not device.HAS_TRITON:
        what = ("Triton not installed: infer_lib.kernels exports the PyTorch references under the "
                "kernels' names, so every chapter runs and its numbers are right, but no Triton kernel "
                "runs (cells that need Triton itself say they are skipped); you read the kernels' "
                "source instead of running it")
        if platform.system() == "Darwin":
            return Result(WARN, title, f"{what}. macOS has no Triton wheels, so this is expected on a Mac",
                          "To run the kernels, use Colab (any runtime: without a GPU, Triton's interpreter "
                          "runs them) or Linux/WSL with `pip install triton`.")
        if platform.system() == "Windows":
            return Result(WARN, title, f"{what}. Triton publishes no Windows wheels",
                          "Run the course in WSL2 (Linux), where `pip install torch` brings Triton, or "
                          "in Colab.")
        return Result(WARN, title, what, "`pip install triton` (a CUDA build of torch on Linux brings the "
                      "Triton it was built with: `pip install torch` is the safer fix).")
    version = device.triton_version()
    mode = ("kernels run in the interpreter on the CPU: the same kernels, the same answers, tiny sizes, "
            "nothing timed" if device.INTERPRET else "kernels compile for the GPU")
    return Result(OK, title, f"triton {version}; {mode}")


def probe_gpu(title: str) -> Result:
    if not device.HAS_GPU:
        runs = ("Triton kernels run in its interpreter" if device.HAS_TRITON else
                "the PyTorch references run on the CPU")
        return Result(WARN, title, f"no CUDA GPU: {runs} on tiny problem sizes; timing cells show the "
                      "measurements shipped with the course instead of timing this machine", _gpu_fix())
    from . import hardware

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    spec = hardware.detect()
    in_table = spec is not None and spec.match != ()
    text = (f"{props.name}, compute capability {props.major}.{props.minor} (sm_{props.major}{props.minor}), "
            f"{props.multi_processor_count} SMs, {_gib(props.total_memory)}; "
            + (f"the spec table's row {spec.key!r}" if in_table else
               "not in the spec table: peaks and bandwidth unknown, measured in chapter 1"))
    if (props.major, props.minor) < TRITON_MIN_CAPABILITY:
        need = ".".join(map(str, TRITON_MIN_CAPABILITY))
        return Result(WARN, title, f"{text}. Triton supports compute capability {need} and newer: "
                      "here its kernels are best-effort (the kernel lines below say whether they ran)",
                      f"The course runs, in fp16. For every kernel: a GPU of compute capability {need}+ "
                      "(Colab's L4 or A100 where your plan offers them, or the workshop's server).")
    return Result(OK, title, text)


def probe_gpu_memory(title: str) -> Result:
    from . import hardware

    if device.HAS_GPU and device.profile().prefill_decode is None:
        free, total = torch.cuda.mem_get_info()
        return Result(OK, title, f"{_gib(free)} free of {_gib(total)}; profile {device.profile().name!r} "
                      "(INFER_LIB_PROFILE) builds no model live, so nothing large is held")
    need = memory_need()
    what = f"chapter 5's live run needs {need.describe()}, plus activations"
    if not device.HAS_GPU:
        return Result(WARN, title, f"no GPU to check; on a GPU, {what}", "See the GPU line.")
    free, total = torch.cuda.mem_get_info()
    text = f"{_gib(free)} free of {_gib(total)}; {what}"
    if total < need.total_bytes:
        return Result(FAIL, title, f"{text}: this GPU is too small for chapter 5's live cells",
                      f"Use a GPU with at least {_gib(need.total_bytes)} plus room to spare (Colab's "
                      f"free T4 has {hardware.SPECS['t4'].memory_GB:.0f} GB), or run without it: "
                      "INFER_LIB_PROFILE=cpu.")
    if free < need.total_bytes:
        return Result(WARN, title, f"{text}: {_gib(total - free)} is in use already (other programs, or "
                      "earlier cells of this one)",
                      "Close other notebooks or restart their kernels (Colab: Runtime → Restart "
                      "session); `nvidia-smi` lists who holds GPU memory.")
    return Result(OK, title, text)


def probe_dtype(title: str) -> Result:
    dtype = device.dtype_name(device.default_dtype())
    if not device.HAS_GPU:
        return Result(OK, title, f"{dtype}: the CPU computes in fp32 (exact and fast enough at the CPU "
                      "sizes); 16-bit types are used on GPUs")
    cap = device.capability()
    if device.supports_bf16():
        return Result(OK, title, f"{dtype}: sm_{cap[0]}{cap[1]} has bf16 tensor cores, as the shipped "
                      "measurements used")
    return Result(WARN, title, f"{dtype}: sm_{cap[0]}{cap[1]} has no bf16 tensor cores (they start at "
                  "compute capability 8.0), so chapters compute in fp16; fp16 overflows past 65504, "
                  "where bf16 would not, and the shipped measurements are in bf16",
                  "Nothing to fix: chapters choose fp16 themselves (device.default_dtype()). For bf16, "
                  "a GPU of compute capability 8.0+.")


def _where_kernels_run() -> str:
    if not device.HAS_TRITON:
        return "the PyTorch reference (Triton not installed)"
    return "Triton's interpreter" if device.INTERPRET else "compiled for the GPU"


def _checked(title: str, run: Callable[[], tuple[torch.Tensor, torch.Tensor]], shape: str,
             dtype: torch.dtype, atol: float, rtol: float) -> Result:
    start = time.perf_counter()
    with warnings.catch_warnings():   # without Triton the launchers say so: the Triton line does
        warnings.filterwarnings("ignore", message="Triton is not installed")
        got, want = run()
    if device.HAS_GPU:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    err = (got.float() - want.float()).abs().max().item()
    where = f"{_where_kernels_run()}, {shape} {device.dtype_name(dtype)}, first call {seconds:.1f} s"
    try:
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    except AssertionError as e:
        summary = str(e).strip().splitlines()[0]
        return Result(FAIL, title, f"{where}: differs from its reference (largest difference {err:.3g}; "
                      f"{summary})", "Restart the Python kernel and run this again (a kernel edited in "
                      "infer_lib after the Python kernel started is stale until then); if it stays, "
                      "report this line with the machine's line at the top.")
    status = OK if device.HAS_TRITON else WARN
    fix = "" if device.HAS_TRITON else "See the Triton line."
    return Result(status, title, f"{where}: matches its reference (largest difference {err:.2g})", fix)


def probe_vector_add(title: str) -> Result:
    from .kernels import vector_add, vector_add_ref

    dtype, n = device.default_dtype(), device.profile().vector_n + 1   # one past: a masked block
    x = torch.randn(n, device=device.DEVICE, dtype=dtype)
    y = torch.randn(n, device=device.DEVICE, dtype=dtype)
    atol, rtol = TOLERANCES[dtype]
    return _checked(title, lambda: (vector_add(x, y), vector_add_ref(x, y)), f"n = {n:,}", dtype, atol, rtol)


def probe_matmul(title: str) -> Result:
    from .kernels import matmul, matmul_ref

    dtype, (M, K, N) = device.default_dtype(), MATMUL_SHAPE
    a = torch.randn(M, K, device=device.DEVICE, dtype=dtype)
    b = torch.randn(K, N, device=device.DEVICE, dtype=dtype)
    atol, rtol = TOLERANCES[dtype]
    with torch.no_grad():
        return _checked(title, lambda: (matmul(a, b), matmul_ref(a, b)), f"({M}×{K}) @ ({K}×{N})",
                        dtype, atol * math.sqrt(K), rtol)


def _optional(title: str, dist: str, modules: tuple[str, ...], used_for: str, pip: str) -> Result:
    version = _version(dist)
    if version is None or not all(device.installed(m) for m in modules):
        return Result(WARN, title, f"not installed: what needs it ({used_for}) is skipped, saying so",
                      f"`{pip}`, then restart the Python kernel (Colab: Runtime → Restart session).")
    return Result(OK, title, f"{dist} {version}, for {used_for}")


def probe_numba_cuda(title: str) -> Result:
    result = _optional(title, "numba-cuda", ("numba", "numba_cuda"),
                       "chapter 8's CUDA kernels written in Python", "pip install numba-cuda")
    if result.status != OK:
        return result
    where = "compiled for the GPU" if device.HAS_GPU else "run in Numba's CUDA simulator (no GPU)"
    bound = extra_numpy_bound("cuda-kernels")
    numpy_version = _version("numpy")
    if device.HAS_GPU and bound and numpy_version:
        have = tuple(int(p) for p in re.findall(r"\d+", numpy_version)[:len(bound)])
        if have >= bound:
            text = ".".join(map(str, bound))
            return Result(WARN, title, f"{result.detail}, but with NumPy {numpy_version} it cannot compile "
                          f"for a GPU (the package's extra cuda-kernels asks for numpy<{text})",
                          f"`pip install 'numpy<{text}'`, then restart the Python kernel.")
    return Result(OK, title, f"{result.detail}, {where}")


def probe_jax(title: str) -> Result:
    result = _optional(title, "jax", ("jax", "jaxlib"), "chapter 8's RMSNorm in Pallas",
                       "pip install jax")
    if result.status != OK:
        return result
    if not device.HAS_GPU:
        return Result(OK, title, f"{result.detail}, run in Pallas' interpret mode (no GPU)")
    plugins = [m for m in ("jax_cuda13_plugin", "jax_cuda12_plugin") if device.installed(m)]
    if not plugins:
        return Result(WARN, title, f"{result.detail}, but this JAX is a CPU build: on this GPU the Pallas "
                      "kernel runs in interpret mode", "`pip install 'jax[cuda13]'` (or jax[cuda12], "
                      "matching your driver), then restart the Python kernel.")
    return Result(OK, title, f"{result.detail}, with {plugins[0]}")


def probe_transformers(title: str) -> Result:
    return _optional(title, "transformers", ("transformers",),
                     "the Hugging Face peer of chapter 9 and of the fast_decode and serving experiments",
                     "pip install transformers")


#: what the chapters import to run in Jupyter: (module, why); the first group is required
JUPYTER_REQUIRED = (("IPython", "IPython.display in every chapter"),
                    ("ipykernel", "the Python kernel Jupyter runs the chapters in"),
                    ("matplotlib", "every figure"), ("pandas", "every table"))
JUPYTER_OPTIONAL = (("ipywidgets", "the interactive explorers of chapters 2 and 6"),)


def probe_jupyter(title: str) -> Result:
    inside_jupyter = "ipykernel" in sys.modules   # asked before this probe imports it
    failed, found = [], []
    for module, why in JUPYTER_REQUIRED:
        try:
            importlib.import_module(module)
            found.append(module)
        except Exception as e:   # a broken install is as bad as a missing one
            failed.append(f"{module} ({why}): {type(e).__name__}: {e}")
    missing_optional = [f"{m} ({why})" for m, why in JUPYTER_OPTIONAL if not device.installed(m)]
    front_end = [d for d in ("jupyterlab", "notebook") if _version(d)]
    if failed:
        names = " ".join(f.split(" ", 1)[0] for f in failed)
        return Result(FAIL, title, "cannot import " + "; ".join(failed),
                      f"`pip install {names}`, then restart the Python kernel.")
    text = f"{', '.join(found)} import"
    notes, fixes = [], []
    if missing_optional:
        notes.append(f"missing: {', '.join(missing_optional)}")
        fixes.append(f"`pip install {' '.join(m.split(' ', 1)[0] for m in missing_optional)}`")
    if not front_end and not in_colab() and not inside_jupyter:
        notes.append("no JupyterLab or Notebook to open the chapters in")
        fixes.append("`pip install jupyterlab` (in a clone: `make lab`)")
    if notes:
        return Result(WARN, title, f"{text}; {'; '.join(notes)}", "; ".join(fixes) + ".")
    return Result(OK, title, text + (f"; {front_end[0]} {_version(front_end[0])}" if front_end else ""))


#: The lines of the check, in order: (title, name of the probe function). Names, not functions,
#: so a test can replace a probe (``monkeypatch.setattr(check, "probe_gpu", ...)``).
PROBES: tuple[tuple[str, str], ...] = (
    ("Python", "probe_python"),
    ("PyTorch", "probe_torch"),
    ("Triton", "probe_triton"),
    ("GPU", "probe_gpu"),
    ("GPU memory", "probe_gpu_memory"),
    ("Working dtype", "probe_dtype"),
    ("Kernel: vector_add", "probe_vector_add"),
    ("Kernel with tl.dot: matmul", "probe_matmul"),
    ("numba-cuda (optional)", "probe_numba_cuda"),
    ("JAX (optional)", "probe_jax"),
    ("transformers (optional)", "probe_transformers"),
    ("Jupyter", "probe_jupyter"),
)


def run_probe(title: str, probe: Callable[[str], Result]) -> Result:
    """``probe(title)``, its exception turned into a ❌ line with the reason."""
    try:
        result = probe(title)
        if not isinstance(result, Result) or result.status not in STATUSES:
            raise TypeError(f"the probe returned {result!r}, not a Result")
        return result
    except Exception as e:   # never crash: the reason is the line
        reason = f"{type(e).__name__}: {e}".strip()
        return Result(FAIL, title, f"the check failed: {reason}",
                      "Read the reason; after fixing what it names, restart the Python kernel and run "
                      "this again. If it is unclear, report it with the line above.")


def run() -> list[Result]:
    """Every probe of ``PROBES``, in order: the check's lines."""
    module = sys.modules[__name__]
    return [run_probe(title, getattr(module, name)) for title, name in PROBES]


def exit_status(results: list[Result]) -> int:
    """1 if a line is ❌, else 0 (⚠️ lines leave the course runnable)."""
    return 1 if any(r.status == FAIL for r in results) else 0


def _wrap(text: str, first: str, indent: int, width: int) -> str:
    return textwrap.fill(text, width, initial_indent=first, subsequent_indent=" " * indent,
                         break_long_words=False, break_on_hyphens=False)


def report(results: list[Result], *, seconds: float | None = None, width: int = 90) -> str:
    """The lines, then the summary: counts, and the fix of every ⚠️ and ❌ line."""
    out = [_wrap(device.describe(), "", 0, width), ""]
    out += [_wrap(r.detail, f"{r.status} {r.title}: ", 3, width) for r in results]
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    took = f" ({seconds:.0f} s)" if seconds is not None else ""
    out += ["", f"Summary{took}: {counts[OK]} {OK}  {counts[WARN]} {WARN}  {counts[FAIL]} {FAIL}"]
    to_fix = [r for r in results if r.status != OK]
    if not to_fix:
        out.append("Everything the course uses is here. Start with chapter 1.")
    else:
        out.append("The course runs." if not counts[FAIL] else
                   "Fix the ❌ lines first: the course needs them.")
        out += [_wrap(r.fix or "(no fix given)", f"{r.status} {r.title} → ", 3, width)
                for r in sorted(to_fix, key=lambda r: r.status != FAIL)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infer_lib.check",
                                 description="The course's setup check: what this machine runs, and "
                                             "the fix for what it does not. Exits 1 if a line is ❌.")
    ap.add_argument("--width", type=int, default=90, help="wrap lines at this many columns")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    results = run()
    print(report(results, seconds=time.perf_counter() - start, width=args.width))
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
