"""Every Triton kernel of infer_lib/kernels compiles for Colab's GPUs without one here.

tools/compile_targets.py compiles each kernel for sm_75 (T4: float16, 64 KB of shared memory
per block) and sm_89 (L4: bfloat16, 99 KB) with Triton's bundled ptxas, in a subprocess without
TRITON_INTERPRET (this process has it set, so its kernels are the interpreter's). What the test
covers (``--quick``, about two minutes on 2 cores): every launched ``@triton.jit`` kernel; for
the tuned kernels (matmul, matmul_splitk, int8_matmul, flash_attention, decode_attention,
paged_decode_attention) the fixed configuration of each representative shape and the tuning
candidate with the most shared memory; for the others the configuration their launcher
computes at several widths. Each compiles, and the shared memory Triton allocated fits the
target. `python tools/compile_targets.py --target 75 --target 89` (without --quick) compiles
every candidate, causal attention included.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "compile_targets.py"

#: Pruning gaps known today: (target, tuning list, dtype, shape) where _tuning's estimate rules out
#: every configuration of a tuning list, leaving the tuner only the fixed fallback. None: on a T4,
#: flash attention at D = 128 keeps its 64×32 two-stage configuration (48 KB).
KNOWN_GAPS: set = set()


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = os.environ.get("TRITON_CACHE_DIR") or str(Path.home() / ".triton" / "cache")
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("compile") / "result.json"
    proc = subprocess.run([sys.executable, str(TOOL), "--target", "75", "--target", "89", "--quick",
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT,
                          env=_env(out.parent), timeout=900)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    result["returncode"], result["stdout"] = proc.returncode, proc.stdout
    return result


def test_every_kernel_compiles_for_t4_and_l4(compiled) -> None:
    bad = [f"sm_{r['capability']} {r['kernel']} {r['dtype']} {r['what']} {r['constexprs']}: {r['error']}"
           for r in compiled["results"] if not r["ok"]]
    assert not bad, "\n".join(bad)
    assert compiled["returncode"] == 0, compiled["stdout"][-3000:]
    assert not compiled["uncovered"], f"kernels without a compilation case: {compiled['uncovered']}"
    for cap, dtype in ((75, "float16"), (89, "bfloat16")):
        done = {r["kernel"] for r in compiled["results"] if r["capability"] == cap and r["dtype"] == dtype}
        assert done == set(compiled["kernels"]), (cap, set(compiled["kernels"]) - done)
    assert len(compiled["kernels"]) >= 16     # the 12 kernel files hold 16 launched kernels


def test_shared_memory_fits_the_target(compiled) -> None:
    limits = {t["capability"]: t["max_smem"] for t in compiled["targets"]}
    assert limits == {75: 64 * 1024, 89: 99 * 1024}
    for r in compiled["results"]:
        assert r["shared"] is not None and 0 <= r["shared"] <= limits[r["capability"]], r


def test_pruning_keeps_a_candidate_on_t4_and_l4(compiled) -> None:
    gaps = {(p["target"], p["configs"], p["dtype"], p["what"]) for p in compiled["pruning"]
            if p["listed"] and not p["ok"]}
    assert gaps == KNOWN_GAPS, f"new gaps: {gaps - KNOWN_GAPS}; fixed (remove from KNOWN_GAPS): {KNOWN_GAPS - gaps}"
    tuned = {p["configs"] for p in compiled["pruning"] if p["listed"]}
    assert {"matmul", "matmul_splitk", "int8_matmul", "flash_attention", "decode_attention",
            "paged_decode_attention"} <= tuned


def _run_in_subprocess(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, env=_env(tmp_path), timeout=600)


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """An oversized tile is refused for its shared memory; the specialisation follows Triton's."""
    proc = _run_in_subprocess("""
        import json, sys
        sys.path.insert(0, "tools")
        import compile_targets as ct
        tuning, mods = ct._import_kernels()
        kernels = ct.jit_kernels(mods)
        fn = kernels["matmul_kernel._matmul_kernel"]
        values = dict(a_ptr="*bf16", b_ptr="*bf16", c_ptr="*bf16", M=4096, N=4096, K=4096, stride_am=4096,
                      stride_ak=1, stride_bk=4096, stride_bn=1, stride_cm=4096, stride_cn=1, BLOCK_M=256,
                      BLOCK_N=256, BLOCK_K=64, GROUP_M=8, UPCAST=False, INPUT_PRECISION="tf32")
        sig, consts, attrs = ct.signature(fn, values)
        case = ct.Case("matmul_kernel._matmul_kernel", "oversized", "bfloat16", values, 8, 4, "test")
        ct._STATE.update(cases={89: [case]}, kernels=kernels)
        res = ct._compile_one((0, 89))
        try:
            ct.signature(fn, {**values, "nonsense": 1})
            unknown = None
        except ValueError as exc:
            unknown = str(exc)
        print(json.dumps({"sig": sig, "consts": consts, "attrs": sorted(k[0] for k in attrs),
                          "names": fn.arg_names, "ok": res.ok, "shared": res.shared, "error": res.error,
                          "unknown": unknown}))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    names = out["names"]
    assert out["sig"]["a_ptr"] == "*bf16" and names.index("a_ptr") in out["attrs"]
    assert out["sig"]["M"] == "i32" and names.index("M") not in out["attrs"]   # do_not_specialize
    assert out["sig"]["N"] == "i32" and names.index("N") in out["attrs"]       # divisible by 16
    assert out["sig"]["stride_ak"] == "constexpr" and out["consts"]["stride_ak"] == 1
    assert out["consts"]["BLOCK_M"] == 256
    assert "nonsense" in out["unknown"]
    assert not out["ok"] and out["shared"] > 99 * 1024, out
    assert "shared memory" in out["error"] and "L4" in out["error"]


def test_refuses_interpreter_kernels(tmp_path: Path) -> None:
    proc = _run_in_subprocess("""
        import os, sys
        os.environ["TRITON_INTERPRET"] = "1"
        import infer_lib.kernels   # built for the interpreter
        sys.path.insert(0, "tools")
        import compile_targets as ct
        ct._import_kernels()
    """, tmp_path)
    assert proc.returncode != 0 and "interpreter" in (proc.stdout + proc.stderr)
