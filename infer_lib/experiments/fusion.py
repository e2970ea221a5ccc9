"""What kernel fusion buys: three memory-bound operations, unfused, compiled and ours.

For ``rms_norm``, ``add_rms_norm`` (residual add + RMSNorm, returning both the sum ``h``
and its norm) and ``swiglu`` (``silu(gate) · up``), in bf16 (fp16 on a GPU without bf16),
on 16384 rows of 4096 and of 8192 columns:

* **eager** — PyTorch unfused: ``F.rms_norm(x)``; ``h = x + r; F.rms_norm(h)``;
  ``F.silu(g) * u``: one kernel per operation, each intermediate written to HBM and
  read back;
* **compiled** — ``torch.compile`` of the same function (Inductor fuses it into Triton
  kernels; their source is saved, one string per operation, from
  ``torch._inductor.utils.run_and_get_code``);
* **ours** — ``infer_lib.kernels.rms_norm``, ``add_rms_norm``, ``swiglu``.

Each output is checked against the eager one (``torch.testing.assert_close``) before
anything is timed. Times are GPU time, the median of CUDA-graph replays
(``measure.bench_us_hot``); GB/s counts the bytes the operation must move (``fused_bytes``)
and is held to the copy bandwidth measured in the same run (``measure.copy_bandwidth``).
``unfused_bytes`` counts what the eager composition moves, intermediates' round trips
included, so a chapter can plot bytes fused against unfused.

    python -m infer_lib.experiments.fusion --out-dir DIR

writes ``DIR/fusion_<gpu>.json``. ``run(smoke=True)`` runs the plumbing on any machine at
tiny sizes with a wall clock (the Triton kernels in the interpreter) and skips
``torch.compile`` (on the CPU it would emit C++ and compile for minutes): its records
have no ``compiled`` entry, which only a smoke file may lack. Never a measurement.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from .. import device, measure
from .. import kernels as K
from . import model_cli

TIMING = ("GPU time: median of CUDA-graph replays (measure.bench_us_hot), L2 left warm; GB/s on "
          "fused_bytes; copy bandwidth: measure.copy_bandwidth (1 GiB) in the same run")
SMOKE_TIMING = "wall clock of one call (smoke run on the CPU): plumbing only, not a measurement"
ROWS = 16384
COLS = (4096, 8192)
SMOKE_ROWS, SMOKE_COLS = 4, (64, 96)
EPS = 1e-6
OPS = ("rms_norm", "add_rms_norm", "swiglu")
IMPLS = ("eager", "compiled", "ours")
#: (atol, rtol) of the check against eager, as tests/conftest.py: TOLERANCES
TOLERANCES = {torch.bfloat16: (1e-2, 1.6e-2), torch.float16: (1e-3, 2e-3), torch.float32: (1e-5, 1e-5)}
#: the generated source kept per operation, in characters
CODE_CAP = 20_000

_IMPL_NUMBERS = ("us", "GBps", "fraction_of_copy")
_RECORD_KEYS = ("op", "dtype", "elements_read", "elements_written", "unfused_note")
_BASE_NUMBERS = ("rows", "cols", "fused_bytes", "unfused_bytes",
                 *(f"{impl}.{n}" for impl in ("eager", "ours") for n in _IMPL_NUMBERS))

#: fusion_<gpu>.json as measured on a GPU: every record has all three implementations and the
#: file the code torch.compile generated (or a note saying why it has none)
SCHEMA = measure.Schema(
    "fusion file",
    keys=("timing", "params", "copy", "records", "generated_code", "generated_code_note"),
    numbers=("copy.bytes", "copy.us", "copy.GBps"),
    records=(measure.Records("records", keys=_RECORD_KEYS,
                             numbers=(*_BASE_NUMBERS, *(f"compiled.{n}" for n in _IMPL_NUMBERS))),),
)
#: a smoke file (provenance.smoke true): torch.compile skipped, so no ``compiled`` entries
SMOKE_SCHEMA = measure.Schema(
    "fusion smoke file",
    keys=SCHEMA.keys,
    numbers=SCHEMA.numbers,
    records=(measure.Records("records", keys=_RECORD_KEYS, numbers=_BASE_NUMBERS),),
)


def validate(doc: dict) -> None:
    """Check a fusion file: ``SMOKE_SCHEMA`` when its provenance says smoke, else ``SCHEMA``, and the
    generated code is a dict of one string per operation, or None with a note."""
    smoke = isinstance(doc, dict) and isinstance(doc.get("provenance"), dict) and doc["provenance"].get("smoke") is True
    measure.validate(doc, SMOKE_SCHEMA if smoke else SCHEMA)
    code = doc["generated_code"]
    if code is None:
        if not (isinstance(doc["generated_code_note"], str) and doc["generated_code_note"]):
            raise ValueError("fusion file: generated_code is None without a note saying why")
    elif not (isinstance(code, dict) and set(code) <= set(OPS) and all(isinstance(v, str) for v in code.values())):
        raise ValueError(f"fusion file: generated_code must map operations {OPS} to source strings")
    for i, r in enumerate(doc["records"]):
        if r["op"] not in OPS:
            raise ValueError(f"fusion file: records[{i}].op is {r['op']!r}, not one of {OPS}")


# ----------------------------------------------------------------------------
# The operations: eager (unfused), their bytes, ours
# ----------------------------------------------------------------------------

def eager_rms_norm(x, w):
    return F.rms_norm(x, (x.shape[-1],), w, EPS)


def eager_add_rms_norm(x, r, w):
    h = x + r                       # h written to HBM ...
    return h, F.rms_norm(h, (h.shape[-1],), w, EPS)   # ... and read back


def eager_swiglu(g, u):
    return F.silu(g) * u            # silu(g) written to HBM, then read back by the product


EAGER = {"rms_norm": eager_rms_norm, "add_rms_norm": eager_add_rms_norm, "swiglu": eager_swiglu}
OURS = {"rms_norm": lambda x, w: K.rms_norm(x, w, EPS),
        "add_rms_norm": lambda x, r, w: K.add_rms_norm(x, r, w, EPS),
        "swiglu": lambda g, u: K.swiglu(g, u)}
#: per operation: (row-sized tensors read, written) by the fused kernel, by the eager
#: composition (intermediates counted each time they cross HBM), and what the latter does
TRAFFIC = {
    "rms_norm": ((1, 1), (1, 1), "F.rms_norm is one kernel: read x, write out (as fused)"),
    "add_rms_norm": ((2, 2), (3, 2), "x + r reads x, r and writes h; F.rms_norm reads h again "
                                     "and writes out"),
    "swiglu": ((2, 1), (3, 2), "F.silu reads g and writes silu(g); the product reads silu(g) "
                               "and u and writes out"),
}
#: operations that read a weight vector of one element per column
WEIGHTED = {"rms_norm", "add_rms_norm"}


def traffic_bytes(op: str, rows: int, cols: int, itemsize: int) -> dict:
    """HBM bytes of ``op`` on ``rows × cols`` elements of ``itemsize`` bytes: ``fused_bytes`` (each
    input read once, each output written once, the weight vector once) and ``unfused_bytes``
    (the eager composition, every intermediate written and read back; the weight once)."""
    (fr, fw), (ur, uw), note = TRAFFIC[op]
    n = rows * cols * itemsize
    weight = cols * itemsize if op in WEIGHTED else 0
    return {"elements_read": fr * rows * cols, "elements_written": fw * rows * cols,
            "fused_bytes": (fr + fw) * n + weight, "unfused_bytes": (ur + uw) * n + weight,
            "unfused_note": note}


def make_inputs(op: str, rows: int, cols: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Fresh random inputs of ``op`` on this machine's device (never zeros)."""
    dev = device.DEVICE
    x = torch.randn(rows, cols, dtype=dtype, device=dev)
    if op == "rms_norm":
        return x, 1 + 0.1 * torch.randn(cols, dtype=dtype, device=dev)
    if op == "add_rms_norm":
        return x, torch.randn_like(x), 1 + 0.1 * torch.randn(cols, dtype=dtype, device=dev)
    return x, torch.randn_like(x)


def check_against_eager(got, want, dtype, what: str) -> None:
    """Raise unless ``got`` (one tensor or a tuple) matches eager PyTorch's ``want`` within the
    tolerance of ``dtype`` (``TOLERANCES``); ``what`` names the implementation in the message."""
    atol, rtol = TOLERANCES[dtype]
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    if len(got) != len(want):
        raise AssertionError(f"{what}: {len(got)} outputs, eager has {len(want)}")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m: f"{what} differs from eager: {m}")


# ----------------------------------------------------------------------------
# torch.compile's generated code
# ----------------------------------------------------------------------------

def _run_and_get_code():
    """``torch._inductor.utils.run_and_get_code`` where this torch has it, else None."""
    try:
        from torch._inductor.utils import run_and_get_code
    except ImportError:
        return None
    return run_and_get_code


def triton_kernels(text: str) -> list[str]:
    """The ``@triton.jit`` kernels of a module Inductor generated: each from its decorator to
    the end of the source string that holds it."""
    return [k.rstrip() for k in re.findall(r"@triton\.jit.*?(?='''|\"\"\")", text, flags=re.S)]


def trim_code(text: str, cap: int = CODE_CAP) -> str:
    """The generated module, at most ``cap`` characters: whole if it fits, else only its Triton
    kernel definitions (from each ``@triton.jit`` to the end of its source string), cut at ``cap``."""
    if len(text) <= cap:
        return text
    kernels = triton_kernels(text)
    body = "\n\n".join(kernels) if kernels else text
    if len(body) > cap:
        marker = "\n# ... [trimmed to the first %d characters]\n" % cap
        body = body[:cap - len(marker)] + marker
    return body


# ----------------------------------------------------------------------------
# One measurement
# ----------------------------------------------------------------------------

def _impl(us: float, nbytes: int, copy_GBps: float) -> dict:
    GBps = nbytes / us / 1e3
    return {"us": measure.sig(us), "GBps": measure.sig(GBps), "fraction_of_copy": measure.sig(GBps / copy_GBps, 4)}


def fusion_record(op: str, rows: int, cols: int, dtype: torch.dtype, copy_GBps: float, *,
                  smoke: bool = False, code: dict | None = None) -> dict:
    """``op`` on ``rows × cols``: eager, compiled (not in smoke) and ours, each checked against eager
    and timed. ``code``, if given, receives the source torch.compile generated for ``op``."""
    if not smoke:
        measure._require_gpu("fusion.fusion_record")
    args = make_inputs(op, rows, cols, dtype)
    record = {"op": op, "rows": int(rows), "cols": int(cols), "dtype": device.dtype_name(dtype),
              **traffic_bytes(op, rows, cols, dtype.itemsize)}
    timer = measure.timer(smoke)
    eager, ours = EAGER[op], OURS[op]
    with torch.no_grad():
        want = eager(*args)
        check_against_eager(ours(*args), want, dtype, f"ours ({op}, {rows}x{cols})")
        record["eager"] = _impl(timer(lambda: eager(*args)), record["fused_bytes"], copy_GBps)
        if not smoke:
            compiled = torch.compile(eager, dynamic=False, fullgraph=True)
            get_code = _run_and_get_code()
            if code is not None and get_code is not None:
                import contextlib

                import torch._inductor.config as inductor_config

                # a fresh compile, not a cache hit, so the generated module is seen
                fresh = (inductor_config.patch(force_disable_caches=True)
                         if hasattr(inductor_config, "force_disable_caches") else contextlib.nullcontext())
                with fresh:
                    got, sources = get_code(compiled, *args)
                code[op] = trim_code("\n\n".join(sources))
            else:
                got = compiled(*args)
            check_against_eager(got, want, dtype, f"torch.compile ({op}, {rows}x{cols})")
            record["compiled"] = _impl(timer(lambda: compiled(*args)), record["fused_bytes"], copy_GBps)
        record["ours"] = _impl(timer(lambda: ours(*args)), record["fused_bytes"], copy_GBps)
    return record


def run(preset: str | None = None, *, rows: int = ROWS, cols=COLS, smoke: bool = False) -> dict:
    """The payload of ``fusion_<gpu>.json`` (GPU only, or ``smoke``: tiny sizes, wall clock, no
    torch.compile). ``preset`` is ignored (the command line's ``--preset`` is for model experiments)."""
    if not smoke:
        measure._require_gpu("fusion.run")
    if smoke:
        rows, cols = SMOKE_ROWS, SMOKE_COLS
    dtype = torch.bfloat16 if device.supports_bf16() else torch.float16
    copy = (measure.copy_bandwidth(2**16, smoke=True) if smoke else measure.copy_bandwidth())
    code: dict[str, str] = {}
    records = []
    for op in OPS:
        for i, c in enumerate(cols):
            # the generated code of the first width, one string per operation
            records.append(fusion_record(op, rows, c, dtype, copy["GBps"], smoke=smoke,
                                         code=code if i == 0 else None))
    if smoke:
        generated, note = None, "smoke run: torch.compile skipped (on the CPU it emits C++, not Triton)"
    elif _run_and_get_code() is None:
        generated, note = None, (f"torch {torch.__version__} has no torch._inductor.utils.run_and_get_code: "
                                 "generated code not saved")
    else:
        generated, note = code, (f"torch._inductor.utils.run_and_get_code at {rows}x{cols[0]}, caches off; "
                                 f"trimmed to the @triton.jit kernels where over {CODE_CAP} characters")
    doc = {"provenance": {**measure.provenance(), "smoke": smoke},
           "timing": SMOKE_TIMING if smoke else TIMING,
           "params": {"rows": int(rows), "cols": [int(c) for c in cols], "dtype": device.dtype_name(dtype),
                      "eps": EPS, "ops": list(OPS), "impls": list(IMPLS) if not smoke else ["eager", "ours"]},
           "copy": copy, "records": records,
           "generated_code": generated, "generated_code_note": note}
    validate(doc)
    return doc


def _report(doc: dict) -> None:
    print(f"copy {doc['copy']['GBps']:.0f} GB/s")
    for r in doc["records"]:
        parts = [f"{impl} {r[impl]['GBps']:7.0f} GB/s ({r[impl]['fraction_of_copy']:.2f})"
                 for impl in IMPLS if impl in r]
        print(f"{r['op']:>12} {r['rows']}x{r['cols']:<5} " + "  ".join(parts))


def main(argv=None) -> None:
    """``python -m infer_lib.experiments.fusion --out-dir DIR``."""
    model_cli(argv, topic="fusion", run=run, schema=SCHEMA, report=_report,
              description="Time rms_norm, add_rms_norm and swiglu unfused (eager), under torch.compile "
                          "and as our fused kernels, against the copy bandwidth",
              why_gpu="CPU timings say nothing about a GPU's memory traffic, and torch.compile "
                      "emits Triton only for a GPU.")


if __name__ == "__main__":
    main()
