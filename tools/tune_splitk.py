"""Time the split-K matmul's configurations on decode shapes, next to cuBLAS and the copy bandwidth.

    python tools/tune_splitk.py --out tune_splitk.json [--m 1 16 64] [--shapes 8192x8192 2048x8192]

For each weight shape ``K×N`` and each row count ``M`` (the tokens of a
decoding step), every configuration of ``_tuning.SPLITK_MATMUL`` whose row tile
suits ``M`` is launched with ``matmul_splitk(a, b, config=...)``, checked
against ``torch.matmul`` and timed; then the tuner's own pick (public
``matmul_splitk``) and ``torch.matmul`` (cuBLAS). The unit is the bandwidth at
which the weights are read, ``K·N·bytes / time`` in GB/s, against the copy
bandwidth measured in the same run (``xcopy``); ``xcublas`` = cuBLAS time / ours.

Times: medians of ``infer_lib.measure.bench_us`` (``triton.testing.do_bench``,
L2 flushed). The JSON (``--out``) is rewritten after every shape. ``--smoke``
runs the plumbing on the CPU at tiny sizes (timings meaningless).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import infer_lib  # noqa: E402,F401  (before triton)
import torch  # noqa: E402

from infer_lib import device, measure  # noqa: E402
from infer_lib.kernels import _tuning  # noqa: E402
from infer_lib.kernels.matmul_splitk_kernel import matmul_splitk  # noqa: E402


def name(c) -> str:
    k = c.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} split{k['SPLIT_K']} s{c.num_stages} w{c.num_warps}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("tune_splitk.json"))
    ap.add_argument("--m", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    ap.add_argument("--shapes", nargs="+", default=["8192x8192", "2048x2048", "2048x8192", "8192x2048"],
                    help="weight shapes KxN")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if not device.HAS_GPU and not args.smoke:
        print("tune_splitk: needs a CUDA GPU (or --smoke for the plumbing)", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if device.supports_bf16() else torch.float16
    if args.smoke:
        args.m, args.shapes, dtype = [1, 3], ["64x48"], torch.float32
    time_us = (lambda fn: measure.wall_us(fn, reps=1)) if args.smoke else measure.bench_us
    copy = None if args.smoke else measure.copy_bandwidth()["GBps"] if hasattr(measure, "copy_bandwidth") else None
    results = {"provenance": measure.provenance(), "copy_GBps": copy, "dtype": device.dtype_name(dtype), "shapes": []}
    print(f"# {device.describe()}\n# copy {copy} GB/s", flush=True)
    for shape in args.shapes:
        K, N = map(int, shape.split("x"))
        b = torch.randn(K, N, device=device.DEVICE, dtype=dtype)
        wbytes = K * N * b.element_size()
        for M in args.m:
            a = torch.randn(M, K, device=device.DEVICE, dtype=dtype)
            want = (a.float() @ b.float())
            rec = {"M": M, "K": K, "N": N, "configs": []}
            cands = _tuning.SPLITK_MATMUL.candidates(device.capability(), _tuning.max_shared_memory()
                                                     if device.HAS_GPU else 1 << 30, b.element_size(),
                                                     {"M": M, "N": N, "K": K})
            t0 = time.time()
            for cfg in cands:
                try:
                    got = matmul_splitk(a, b, config=cfg)
                    err = ((got.float() - want).norm() / want.norm()).item()
                    us = time_us(lambda: matmul_splitk(a, b, config=cfg))
                    rec["configs"].append({"config": name(cfg), "us": us, "GBps": wbytes / us / 1e3, "rel_err": err})
                except Exception as e:  # noqa: BLE001  (a config that does not compile: note it, go on)
                    rec["configs"].append({"config": name(cfg), "error": f"{type(e).__name__}: {str(e)[:120]}"})
            ok = [r for r in rec["configs"] if "us" in r]
            ok.sort(key=lambda r: r["us"])
            cublas_us = time_us(lambda: a @ b)
            matmul_splitk(a, b)                                   # the tuner's pick
            tuned_us = time_us(lambda: matmul_splitk(a, b))
            key = next(iter(k for k in _tuning.SPLITK_MATMUL.cache if k[1] == _tuning.bucket(M) and k[2] == N
                            and k[3] == K), None)
            rec.update(cublas_us=cublas_us, tuned_us=tuned_us,
                       tuned=name(_tuning.SPLITK_MATMUL.cache[key]) if key else None,
                       best=ok[:8], seconds=time.time() - t0)
            results["shapes"].append(rec)
            best = ok[0] if ok else None
            xc = (lambda us: f"{wbytes / us / 1e3 / copy:.2f}x copy" if copy else "")
            print(f"M={M:<3} K={K} N={N}: cuBLAS {cublas_us:.1f} us ({xc(cublas_us)}), tuned {tuned_us:.1f} us "
                  f"({xc(tuned_us)}, {cublas_us / tuned_us:.2f}x cuBLAS) [{rec['tuned']}]; best "
                  f"{best and best['config']} {best and round(best['us'], 1)} us; {len(ok)}/{len(cands)} ran, "
                  f"{time.time() - t0:.0f} s", flush=True)
            for r in ok[:4]:
                print(f"    {r['config']:<32} {r['us']:8.1f} us {r['GBps']:8.0f} GB/s  err {r['rel_err']:.1e}")
            args.out.write_text(json.dumps(results, indent=1))
        del b
    return 0


if __name__ == "__main__":
    sys.exit(main())
