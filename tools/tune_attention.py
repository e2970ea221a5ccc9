"""Time every FlashAttention configuration and softmax variant on this GPU, next to PyTorch.

    python tools/tune_attention.py --out tune_attention.json

Part 1, ``flash_attention`` (bf16; fp16 where there is no bf16), at the bench
shapes B=4 H=32 S=4096 D=128 and B=8 H=16 S=4096 D=64, causal and not:

1. launches the jitted kernel with each configuration of this GPU's list in
   ``kernels/_tuning.py`` (``FLASH_ATTENTION.config_list``), bypassing the tuner
   (``flash_attention_kernel._launch(..., config)``); a configuration whose
   pipeline overflows the shared memory (``FLASH_ATTENTION.smem_bytes``) is
   reported as pruned; checks the result against SDPA and times it;
2. times ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch picks
   its backend) on the same inputs;
3. calls the public ``flash_attention``, lets the tuner pick (its choice, cached
   in ``_tuning.FLASH_ATTENTION.cache`` under the bucketed shape, is printed),
   and times that.

Part 2, ``softmax`` (fp16 and bf16) at widths 1024, 4096, 16384, 32768, rows
filling 256 MiB: the heuristic the launcher uses (``default``), then
``_softmax_kernel`` with other rows-per-program (``r``) and warp (``w``) counts,
persistent grids (``p`` programs per SM with ``s`` pipeline stages) and, for
the two widest rows, the two-pass online kernel — next to ``torch.softmax``
and a copy of the same bytes (``measure.copy_bandwidth``). The rows × warps sweep
runs in fp16; bf16 gets the default and a few persistent variants.

Times: medians of ``infer_lib.measure.bench_us`` (``triton.testing.do_bench``,
L2 flushed), µs. TFLOP/s = ``roofline.attention_flops`` / time; GB/s = one
read + one write of the data / time. ``xSDPA``, ``xtorch`` = peer time / our
time (above 1: faster than the peer); ``xcopy`` = our GB/s / copy GB/s. Each
kernel row also shows registers per thread, spills and shared memory; a config
that fails (e.g. out of shared memory) shows why and the run goes on.

Targets (CONTRIBUTING.md): flash_attention ≥ 0.75× SDPA; softmax ≥ 0.9× copy and
≥ 1.0× torch.softmax at every width. The JSON (``--out``) is rewritten after
every shape, so a run cut short keeps what it measured. Typical run on an
H100: 3–5 minutes, most of it compiling 4 × 14 attention configurations.
``--smoke`` runs the plumbing on the CPU at tiny sizes with two configurations
(timings meaningless).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import infer_lib  # noqa: E402,F401  (before triton)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from infer_lib import device, measure, roofline  # noqa: E402
from infer_lib.kernels import _tuning  # noqa: E402

# the modules, not the functions of the same names that infer_lib.kernels exports
fa = importlib.import_module("infer_lib.kernels.flash_attention_kernel")
sm = importlib.import_module("infer_lib.kernels.softmax_kernel")
fa_cases = importlib.import_module("infer_lib.bench.attention_cases")   # the bench shapes

ATTN_TARGET, SOFTMAX_COPY_TARGET, SOFTMAX_TORCH_TARGET = 0.75, 0.9, 1.0


def cfg_name(c: triton.Config) -> str:
    return f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']} w{c.num_warps} s{c.num_stages}"


def kernel_info(k) -> dict:
    """Registers, spills, shared memory of a compiled kernel (absent in the interpreter)."""
    info = {}
    for key, attr in (("regs", "n_regs"), ("spills", "n_spills")):
        if getattr(k, attr, None) is not None:
            info[key] = int(getattr(k, attr))
    meta = getattr(k, "metadata", None)
    if meta is not None and getattr(meta, "shared", None) is not None:
        info["smem"] = int(meta.shared)
    return info


def info_str(info: dict) -> str:
    if not info:
        return ""
    return f"regs {info.get('regs', '?')} spills {info.get('spills', '?')} smem {info.get('smem', 0) // 1024}K"


class Timer:
    def __init__(self, smoke: bool):
        self.smoke = smoke

    def __call__(self, fn) -> float:
        return measure.wall_us(fn, reps=1) if self.smoke else measure.bench_us(fn)


def tune_flash(args, time_us: Timer, results: dict, save) -> None:
    dtype = torch.bfloat16 if device.supports_bf16() else torch.float16
    shapes = [(1, 2, 256, 64), (1, 2, 192, 32)] if args.smoke else list(fa_cases.ATTENTION_SHAPES)
    configs = _tuning.FLASH_ATTENTION.config_list(device.capability())
    if args.smoke:
        configs = configs[:2]
    smem_limit = _tuning.max_shared_memory()
    rows = results.setdefault("flash_attention", [])
    best = results.setdefault("flash_attention_best", {})
    print(f"\n## flash_attention ({str(dtype).removeprefix('torch.')}), "
          f"{len(configs)} configs; shared memory per program: {smem_limit // 1024} KB")
    for B, H, S, D in shapes:
        q, k, v = (torch.randn(B, H, S, D, device=device.DEVICE, dtype=dtype) for _ in range(3))
        out = torch.empty_like(q)
        for causal in (False, True):
            label = f"B{B} H{H} S{S} D{D} {'causal' if causal else 'full'}"
            flops = roofline.attention_flops(B, H, S, S, D, causal)
            tflops = lambda us: flops / us / 1e6  # noqa: E731
            sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
            want = sdpa()
            sdpa_us = time_us(sdpa)
            print(f"\n### {label}\n{'impl':<28}{'µs':>10}{'TFLOP/s':>10}{'xSDPA':>8}   notes")
            print(f"{'SDPA':<28}{sdpa_us:10.1f}{tflops(sdpa_us):10.1f}{1.0:8.2f}")
            rows.append({"kernel": "flash_attention", "case": label, "impl": "SDPA", "us": sdpa_us,
                         "TFLOPs": tflops(sdpa_us)})
            scored = []
            for cfg in configs:
                name = cfg_name(cfg)
                smem_est = _tuning.FLASH_ATTENTION.smem_bytes(cfg, q.element_size(), {"D": D})
                if smem_est > smem_limit:
                    print(f"{name:<28}{'':>10}{'':>10}{'':>8}   pruned: needs ~{smem_est // 1024} KB shared memory")
                    rows.append({"kernel": "flash_attention", "case": label, "impl": name, "error": "pruned (smem)"})
                    continue
                try:
                    t0 = time.time()
                    handle = fa._launch(q, k, v, out, causal, D ** -0.5, cfg)
                    compile_s = time.time() - t0
                    torch.testing.assert_close(out, want, atol=2e-2, rtol=2e-2)
                    us = time_us(lambda c=cfg: fa._launch(q, k, v, out, causal, D ** -0.5, c))
                except Exception as e:  # noqa: BLE001  (report and go on: OutOfResources, mismatch, ...)
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0][:90] if str(e) else ''}"
                    print(f"{name:<28}{'':>10}{'':>10}{'':>8}   FAILED {msg}")
                    rows.append({"kernel": "flash_attention", "case": label, "impl": name, "error": msg})
                    continue
                info = kernel_info(handle)
                scored.append((us, name))
                print(f"{name:<28}{us:10.1f}{tflops(us):10.1f}{sdpa_us / us:8.2f}   {info_str(info)}"
                      f" (first call {compile_s:.1f} s)")
                rows.append({"kernel": "flash_attention", "case": label, "impl": name, "config": cfg.all_kwargs(),
                             "us": us, "TFLOPs": tflops(us), "x_sdpa": sdpa_us / us, **info})
            # the public entry point: tuned on the GPU for long sequences (tuning happens
            # here, outside the timing); its pick is cached under the bucketed shape
            fa.flash_attention(q, k, v, causal=causal)
            auto_us = time_us(lambda: fa.flash_attention(q, k, v, causal=causal))
            chosen = _tuning.FLASH_ATTENTION.cache.get(fa._tuning_key(q, S, causal))
            chosen_name = cfg_name(chosen) if chosen is not None else \
                "fixed " + cfg_name(_tuning.FLASH_ATTENTION.fixed(q.element_size(), {"D": D}))
            print(f"{'flash_attention (tuned)':<28}{auto_us:10.1f}{tflops(auto_us):10.1f}"
                  f"{sdpa_us / auto_us:8.2f}   picked {chosen_name}")
            rows.append({"kernel": "flash_attention", "case": label, "impl": "flash_attention (tuned)",
                         "picked": chosen_name, "us": auto_us, "TFLOPs": tflops(auto_us), "x_sdpa": sdpa_us / auto_us})
            if scored:
                us, name = min(scored)
                ratio = sdpa_us / us
                verdict = "meets" if ratio >= ATTN_TARGET else "MISSES"
                print(f"best: {name}  {tflops(us):.1f} TFLOP/s = {ratio:.2f}x SDPA ({verdict} the "
                      f"{ATTN_TARGET}x target)")
                best[label] = {"config": name, "us": us, "TFLOPs": tflops(us), "x_sdpa": ratio,
                               "sdpa_TFLOPs": tflops(sdpa_us)}
            save()
        del q, k, v, out


def softmax_variants(width: int, esize: int, n_sm: int, smoke: bool, full: bool) -> list[tuple[str, dict]]:
    """(name, launch arguments) for ``_softmax_kernel`` at this width, plus the online kernel for wide rows.

    ``full``: sweep rows × warps too (done for fp16; bf16 moves the same bytes and
    gets the launcher's default and its persistent variants only, to save time).
    """
    default = _tuning.softmax_config(width, esize)              # what the launcher runs
    block, d_rows, d_warps = default.kwargs["BLOCK"], default.kwargs["ROWS"], default.num_warps
    out = [(f"default r{d_rows} w{d_warps}", {"kind": "fused", "block": block, "rows": d_rows,
                                              "num_warps": d_warps})]
    if not full:
        return out + [(f"default p{p} s{s}", {"kind": "fused", "block": block, "rows": d_rows,
                                              "num_warps": d_warps, "num_stages": s, "programs": p * n_sm})
                      for p, s in ((1, 2), (2, 2), (4, 1))]
    for rows in (1, 2, 4, 8, 16):
        for warps in (4, 8, 16, 32):
            per_thread = rows * block // (32 * warps)
            if rows * block > sm.MAX_FUSED_BLOCK or not 4 <= per_thread <= 64:
                continue
            if (rows, warps) == (d_rows, d_warps):
                continue
            out.append((f"r{rows} w{warps}", {"kind": "fused", "block": block, "rows": rows, "num_warps": warps}))
    for per_sm in (1, 2, 4):
        for stages in (1, 2, 3):
            out.append((f"default p{per_sm} s{stages}", {"kind": "fused", "block": block, "rows": d_rows,
                                                        "num_warps": d_warps, "num_stages": stages,
                                                        "programs": per_sm * n_sm}))
    if width >= 16384 or smoke:
        for ob, w in ((4096, 8), (8192, 16), (16384, 16)):
            out.append((f"online b{ob} w{w}", {"kind": "online", "block": ob, "num_warps": w}))
    return out


def tune_softmax(args, time_us: Timer, results: dict, save) -> None:
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count if device.HAS_GPU else 4
    rows_out = results.setdefault("softmax", [])
    best = results.setdefault("softmax_best", {})
    dtypes = [dt for dt in (torch.float16, torch.bfloat16) if dt in device.kernel_dtypes()]
    widths = (1024, 4096) if args.smoke else fa_cases.SOFTMAX_WIDTHS
    print(f"\n## softmax, {n_sm} SMs")
    for dtype in dtypes:
        esize = torch.empty((), dtype=dtype).element_size()
        for width in widths:
            n_rows = 64 if args.smoke else fa_cases.SOFTMAX_BYTES // (width * esize)
            x = torch.randn(n_rows, width, device=device.DEVICE, dtype=dtype)
            out = torch.empty_like(x)
            nbytes = 2 * x.numel() * esize
            gbps = lambda us: nbytes / us / 1e3  # noqa: E731
            label = f"{n_rows}x{width} {str(dtype).removeprefix('torch.')}"
            want = torch.softmax(x, dim=-1)
            torch_us = time_us(lambda: torch.softmax(x, dim=-1))
            copy_us = measure.copy_bandwidth(x.numel() * esize, dtype, smoke=args.smoke)["us"]
            print(f"\n### {label} ({nbytes / 2**20:.0f} MiB moved)\n"
                  f"{'impl':<26}{'µs':>9}{'GB/s':>9}{'xcopy':>7}{'xtorch':>8}   notes")
            for name, us in (("copy (measure)", copy_us), ("torch.softmax", torch_us)):
                print(f"{name:<26}{us:9.1f}{gbps(us):9.0f}{copy_us / us:7.2f}{torch_us / us:8.2f}")
                rows_out.append({"kernel": "softmax", "case": label, "impl": name, "us": us, "GBps": gbps(us)})
            scored = []
            for name, kw in softmax_variants(width, esize, n_sm, args.smoke, full=dtype == dtypes[0]):
                kw = dict(kw)
                kind = kw.pop("kind")
                launch = (lambda kw=kw: sm._launch_online(x, out, **kw)) if kind == "online" else \
                         (lambda kw=kw: sm._launch_fused(x, out, **kw))
                try:
                    out.fill_(float("nan"))
                    handle = launch()
                    torch.testing.assert_close(out, want, atol=1e-3, rtol=1e-2)
                    us = time_us(launch)
                except Exception as e:  # noqa: BLE001
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0][:90] if str(e) else ''}"
                    print(f"{name:<26}{'':>9}{'':>9}{'':>7}{'':>8}   FAILED {msg}")
                    rows_out.append({"kernel": "softmax", "case": label, "impl": name, "error": msg})
                    continue
                info = kernel_info(handle)
                scored.append((us, name))
                print(f"{name:<26}{us:9.1f}{gbps(us):9.0f}{copy_us / us:7.2f}{torch_us / us:8.2f}   {info_str(info)}")
                rows_out.append({"kernel": "softmax", "case": label, "impl": name, "launch": kw, "us": us,
                                 "GBps": gbps(us), "x_copy": copy_us / us, "x_torch": torch_us / us, **info})
            if scored:
                us, name = min(scored)
                ok = copy_us / us >= SOFTMAX_COPY_TARGET and torch_us / us >= SOFTMAX_TORCH_TARGET
                print(f"best: {name}  {gbps(us):.0f} GB/s = {copy_us / us:.2f}x copy, {torch_us / us:.2f}x torch "
                      f"({'meets' if ok else 'MISSES'} the {SOFTMAX_COPY_TARGET}x copy / "
                      f"{SOFTMAX_TORCH_TARGET}x torch targets)")
                best[label] = {"impl": name, "us": us, "GBps": gbps(us), "x_copy": copy_us / us,
                               "x_torch": torch_us / us, "copy_GBps": gbps(copy_us), "torch_GBps": gbps(torch_us)}
            save()
            del x, out, want



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("tune_attention.json"), help="JSON file to write")
    ap.add_argument("--only", choices=("flash_attention", "softmax"), nargs="+",
                    default=["flash_attention", "softmax"], help="run only these parts")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, wall clock: tests the script on a CPU")
    args = ap.parse_args()
    if not device.HAS_GPU and not args.smoke:
        print("tune_attention: no CUDA GPU here; interpreter timings mean nothing (use --smoke to test the "
              "script itself)", file=sys.stderr)
        return 2
    print(f"# {device.describe()}", flush=True)
    results: dict = {"note": "times in µs (medians, L2 flushed); see tools/tune_attention.py",
                     "smoke": args.smoke}
    t_start = time.time()

    def save():
        measure.save({"provenance": measure.provenance(), **results}, args.out)

    time_us = Timer(args.smoke)
    try:
        if "flash_attention" in args.only:
            tune_flash(args, time_us, results, save)
        if "softmax" in args.only:
            tune_softmax(args, time_us, results, save)
    except Exception:  # noqa: BLE001  (keep what was measured)
        traceback.print_exc()
        save()
        return 1
    save()
    print(f"\n## summary ({time.time() - t_start:.0f} s)")
    for label, b in results.get("flash_attention_best", {}).items():
        print(f"flash_attention {label:<32} {b['config']:<18} {b['TFLOPs']:7.1f} TFLOP/s  "
              f"{b['x_sdpa']:.2f}x SDPA ({b['sdpa_TFLOPs']:.0f})")
    for label, b in results.get("softmax_best", {}).items():
        print(f"softmax {label:<28} {b['impl']:<22} {b['GBps']:6.0f} GB/s  {b['x_copy']:.2f}x copy  "
              f"{b['x_torch']:.2f}x torch ({b['torch_GBps']:.0f})")
    print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
