"""Time every configuration of the matmul's list on this GPU, next to cuBLAS.

    python tools/tune_matmul.py --out tune_matmul.json

For bf16 and fp16 at 1024³, 4096³, 8192³ and the decode-like M=16, N=K=8192
(shapes are M×N×K: a is (M, K), b is (K, N)), it

1. launches the jitted kernel ``_matmul_kernel`` with each configuration of
   the list of this GPU's architecture class in ``kernels/_tuning.py``
   (``_tuning.MATMUL``; ``--list`` picks another class's list), bypassing the
   tuner, checks the result against cuBLAS and times it; each row says whether
   the tuner would consider the configuration for this shape (``candidate``) or
   prunes it (its shared-memory estimate exceeds the GPU's, or its tile is far
   larger than the problem);
2. times ``torch.matmul`` (cuBLAS) on the same inputs;
3. calls the public ``matmul(a, b)`` and lets the tuner pick (its choice is
   printed and timed too).

Times: medians of ``infer_lib.measure.bench_us`` (``triton.testing.do_bench``,
L2 flushed), µs. TFLOP/s = 2·M·N·K / time. ``xcuBLAS`` = cuBLAS time / our time
(above 1: faster than cuBLAS). Per configuration it also prints registers per
thread, spills, shared memory, and whether the PTX uses wgmma (Hopper tensor
cores); a config that fails to compile (e.g. out of shared memory) shows why.

The target: ≥ 0.85× cuBLAS in bf16 and fp16 at 4096³ and 8192³.
The JSON (``--out``; rewritten after every shape, so a run cut short keeps what
it measured) holds every row and the provenance block. Typical run on an H100:
2-4 minutes, most of it compiling 2 × 11 configurations.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import infer_lib  # noqa: E402,F401  (before triton)
import torch  # noqa: E402

from infer_lib import device, measure  # noqa: E402
from infer_lib.kernels import _tuning  # noqa: E402
import importlib  # noqa: E402

# the module, not the function of the same name that infer_lib.kernels exports
mm = importlib.import_module("infer_lib.kernels.matmul_kernel")
MATMUL = _tuning.MATMUL

SHAPES = {"1024^3": (1024, 1024, 1024), "4096^3": (4096, 4096, 4096), "8192^3": (8192, 8192, 8192),
          "M16": (16, 8192, 8192)}
TARGET_SHAPES = ("4096^3", "8192^3")
TARGET = 0.85
#: the architecture classes that have a list of their own in _tuning.MATMUL
LISTS = ("hopper", "ampere", "small_smem")
#: tolerance of a config's result against cuBLAS: atol per √K and rtol (as in the bench cases)
TOL = {torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)}


def cfg_name(c) -> str:
    k = c.kwargs
    return (f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} s{c.num_stages} w{c.num_warps} "
            f"g{k['GROUP_M']}")


def launch(cfg, a, b, c):
    """The jitted kernel with this config's meta-parameters, as the launcher would call it."""
    M, K = a.shape
    N = b.shape[1]
    return mm._matmul_kernel[mm._grid(M, N, cfg)](
        a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        **cfg.kwargs, **mm._kernel_flags(a.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def diagnostics(kernel) -> dict:
    """Registers, spills, shared memory and wgmma use of a compiled kernel (best effort)."""
    out = {}
    for key, attr in (("regs", "n_regs"), ("spills", "n_spills")):
        try:
            out[key] = int(getattr(kernel, attr))
        except Exception:
            pass
    try:
        out["smem_KiB"] = round(kernel.metadata.shared / 1024, 1)
    except Exception:
        pass
    try:
        out["wgmma"] = "wgmma" in kernel.asm["ptx"]
    except Exception:
        pass
    return out


def check(c, ref, K, dtype) -> tuple[bool, float]:
    """Within the bench tolerance of cuBLAS? Also the largest error in units of √K."""
    atol, rtol = TOL[dtype]
    err = (c.float() - ref.float()).abs()
    ok = bool((err <= atol * math.sqrt(K) + rtol * ref.float().abs()).all())
    return ok, float(err.max()) / math.sqrt(K)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file for every measurement")
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--dtypes", nargs="+", choices=["bfloat16", "float16"], default=["bfloat16", "float16"])
    ap.add_argument("--list", choices=["device", *LISTS], default="device",
                    help="which architecture class's configuration list to time "
                         "(default: the one this GPU's tuner times)")
    ap.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time per measurement")
    args = ap.parse_args(argv)

    if not device.HAS_GPU:
        print("tools/tune_matmul.py needs a CUDA GPU: the interpreter's timings mean nothing.", file=sys.stderr)
        return 2
    t_start = time.time()
    cap = device.capability()
    list_name = _tuning.arch_class(cap) if args.list == "device" else args.list
    configs = MATMUL.config_list(cap) if args.list == "device" else MATMUL.lists[list_name]
    max_smem = _tuning.max_shared_memory()
    print(f"# {device.describe()}")
    print(f"# {list_name} list: {len(configs)} configs; shared memory per block {max_smem // 1024} KiB; "
          f"bench_us median, L2 flushed, rep {args.rep_ms} ms")
    bench = lambda fn: measure.bench_us(fn, rep_ms=args.rep_ms)  # noqa: E731

    doc = {"provenance": measure.provenance(), "list": list_name, "rows": [], "summary": []}
    header = f"{'shape':<8} {'dtype':<9} {'config':<24} {'us':>9} {'TFLOP/s':>8} {'xcuBLAS':>8}  notes"
    print(header)
    print("-" * len(header))
    for dname in args.dtypes:
        dtype = getattr(torch, dname)
        if dtype == torch.bfloat16 and not device.supports_bf16():
            print(f"# skipping bfloat16: compute capability {cap} has no bf16 tensor cores")
            continue
        for sname in args.shapes:
            M, N, K = SHAPES[sname]
            flops = 2 * M * N * K
            tflops = lambda us: flops / us / 1e6  # noqa: E731
            a = torch.randn(M, K, device=device.DEVICE, dtype=dtype)
            b = torch.randn(K, N, device=device.DEVICE, dtype=dtype)
            ref = torch.matmul(a, b)
            cublas_us = bench(lambda: torch.matmul(a, b))
            print(f"{sname:<8} {dname:<9} {'cuBLAS (torch.matmul)':<24} {cublas_us:9.1f} "
                  f"{tflops(cublas_us):8.1f} {1.0:8.2f}", flush=True)
            rows = []
            shape = {"M": M, "N": N}
            candidates = MATMUL.candidates(cap, max_smem, dtype.itemsize, shape)
            for cfg in configs:
                row = {"shape": sname, "M": M, "N": N, "K": K, "dtype": dname, "config": cfg_name(cfg),
                       "kwargs": dict(cfg.kwargs), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                       "smem_estimate_KiB": MATMUL.smem_bytes(cfg, dtype.itemsize, shape) / 1024,
                       "candidate": cfg in candidates}
                c = torch.empty(M, N, device=device.DEVICE, dtype=dtype)
                try:
                    t0 = time.time()
                    kernel = launch(cfg, a, b, c)  # compiles on first use
                    torch.cuda.synchronize()
                    row["first_call_s"] = round(time.time() - t0, 2)
                    row.update(diagnostics(kernel))
                    row["correct"], row["max_err_per_sqrtK"] = check(c, ref, K, dtype)
                    us = bench(lambda: launch(cfg, a, b, c))
                    row.update(us=us, TFLOPs=tflops(us), vs_cublas=cublas_us / us)
                    notes = (f"regs {row.get('regs', '?')} spills {row.get('spills', '?')} "
                             f"smem {row.get('smem_KiB', '?')}K wgmma {row.get('wgmma', '?')} "
                             + ("candidate" if row["candidate"] else "pruned")
                             + ("" if row["correct"] else "  WRONG RESULT"))
                    print(f"{sname:<8} {dname:<9} {row['config']:<24} {us:9.1f} {row['TFLOPs']:8.1f} "
                          f"{row['vs_cublas']:8.2f}  {notes}", flush=True)
                except Exception as e:  # out of shared memory, compile error: report, go on
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
                    print(f"{sname:<8} {dname:<9} {row['config']:<24} {'failed':>9} {'':8} {'':8}  "
                          f"{row['error']}", flush=True)
                    if not isinstance(e, RuntimeError) and "OutOfResources" not in type(e).__name__:
                        traceback.print_exc(limit=2)
                rows.append(row)
                del c

            # What the tuner picks through the public launcher (it times its pruned list itself).
            auto = {"shape": sname, "dtype": dname}
            try:
                t0 = time.time()
                got = mm.matmul(a, b)
                torch.cuda.synchronize()
                auto["tune_s"] = round(time.time() - t0, 2)
                picked = mm.best_config(a, b)
                auto["picked"] = cfg_name(picked) if picked is not None else "none (not tuned)"
                auto["correct"], _ = check(got, ref, K, dtype)
                auto_us = bench(lambda: mm.matmul(a, b))
                auto.update(us=auto_us, TFLOPs=tflops(auto_us), vs_cublas=cublas_us / auto_us)
                print(f"{sname:<8} {dname:<9} {'tuned matmul()':<24} {auto_us:9.1f} {auto['TFLOPs']:8.1f} "
                      f"{auto['vs_cublas']:8.2f}  picked {auto['picked']} (tuning {auto['tune_s']} s)"
                      + ("" if auto["correct"] else "  WRONG RESULT"), flush=True)
            except Exception as e:
                auto["error"] = f"{type(e).__name__}: {e}"[:200]
                print(f"{sname:<8} {dname:<9} {'tuned matmul()':<24} failed: {auto['error']}", flush=True)

            ok_rows = [r for r in rows if "us" in r and r["correct"]]
            best = min(ok_rows, key=lambda r: r["us"]) if ok_rows else None
            doc["rows"].extend(rows)
            doc["summary"].append({
                "shape": sname, "M": M, "N": N, "K": K, "dtype": dname,
                "cublas_us": cublas_us, "cublas_TFLOPs": tflops(cublas_us),
                "best": None if best is None else {k: best[k] for k in ("config", "us", "TFLOPs", "vs_cublas")},
                "tuned": auto,
            })
            measure.save(doc, args.out)  # a run cut short keeps what it measured
            del a, b, ref
            torch.cuda.empty_cache()
        print("-" * len(header), flush=True)

    print(f"\n# best per shape (target: >= {TARGET:.2f}x cuBLAS at {', '.join(TARGET_SHAPES)})")
    print(f"{'shape':<8} {'dtype':<9} {'cuBLAS':>8} {'best config':<24} {'TFLOP/s':>8} {'x':>5}   "
          f"{'tuner picked':<24} {'TFLOP/s':>8} {'x':>5}  target")
    for s in doc["summary"]:
        best, auto = s["best"], s["tuned"]
        b_txt = (f"{best['config']:<24} {best['TFLOPs']:8.1f} {best['vs_cublas']:5.2f}" if best
                 else f"{'(none correct)':<24} {'':8} {'':5}")
        a_txt = (f"{auto.get('picked', '?'):<24} {auto['TFLOPs']:8.1f} {auto['vs_cublas']:5.2f}" if "us" in auto
                 else f"{'(failed)':<24} {'':8} {'':5}")
        target = ""
        if s["shape"] in TARGET_SHAPES and "us" in auto:
            target = "met" if auto["vs_cublas"] >= TARGET else "MISSED"
        print(f"{s['shape']:<8} {s['dtype']:<9} {s['cublas_TFLOPs']:8.1f} {b_txt}   {a_txt}  {target}")
    print(f"# {time.time() - t_start:.0f} s in all; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
