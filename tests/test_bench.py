import copy
import json
import subprocess
import sys

import pytest
import torch

from infer_lib import device, measure
from infer_lib.bench import validate
from infer_lib.bench.cases import CASES
from infer_lib.bench.core import SMOKE_TIMING, Case, limit_value, measure_limits, run_case


def _run(*args):
    return subprocess.run([sys.executable, "-m", "infer_lib.bench", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def smoke_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def test_smoke_runs_every_kernel_and_follows_the_layout(smoke_doc):
    validate(smoke_doc)
    assert smoke_doc["provenance"]["smoke"] is True and "commit" in smoke_doc["provenance"]
    assert smoke_doc["provenance"]["timing"] == SMOKE_TIMING
    assert all("eager_us" in e for r in smoke_doc["records"] for e in [r["ours"], *r["peers"]])
    assert {r["kernel"] for r in smoke_doc["records"]} == set(CASES)
    va = [r for r in smoke_doc["records"] if r["kernel"] == "vector_add"]
    assert all(r["peers"] and "torch.add" in r["speedup"] for r in va)


def test_records_hold_only_our_kernels_and_the_limits_hold_torch(smoke_doc):
    # PyTorch alone (a copy, cuBLAS) is never "ours": it is the limits, measured by measure's functions.
    assert not {"copy", "cublas"} & set(CASES)
    assert all(not r["ours"]["impl"].startswith("torch") for r in smoke_doc["records"])
    lim = smoke_doc["limits"]
    ceiling_copy = [r for r in lim["copy"] if r["bytes"] == lim["copy_bytes"]]
    assert ceiling_copy and ceiling_copy[0]["GBps"] == lim["copy_GBps"]
    for dtype, tflops in lim["matmul_TFLOPs"].items():
        assert [r["TFLOPs"] for r in lim["matmul"] if r["dtype"] == dtype and r["n"] == lim["matmul_n"]] == [tflops]
    assert {r["dtype"] for r in lim["matmul"]} == {device.dtype_name(dt) for dt in device.kernel_dtypes()}


def test_only_selects_kernels(tmp_path):
    out = tmp_path / "b.json"
    assert _run("--smoke", "--only", "vector_add", "--out", str(out)).returncode == 0
    doc = json.loads(out.read_text())
    validate(doc)
    assert {r["kernel"] for r in doc["records"]} == {"vector_add"}


@pytest.mark.parametrize("name", ["nonexistent", "copy", "cublas"])
def test_unknown_kernel_is_refused(name):
    proc = _run("--smoke", "--only", name)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_refuses_without_gpu():
    proc = _run()
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "--smoke" in proc.stderr


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_limits_refuse_without_gpu_outside_smoke():
    with pytest.raises(RuntimeError, match="copy_bandwidth needs a CUDA GPU"):
        measure_limits()


def test_limits_without_sweeps_are_the_ceilings_alone():
    lim = measure_limits(smoke=True, dtypes=(torch.float32,), sweeps=False)
    assert set(lim["matmul_TFLOPs"]) == {"float32"} and "copy" not in lim and "matmul" not in lim
    assert limit_value(lim, "copy") == lim["copy_GBps"]
    assert limit_value(lim, "matmul:float32") == lim["matmul_TFLOPs"]["float32"]
    with pytest.raises(ValueError, match="no limit 'matmul:float16': the limits are copy, matmul:float32"):
        limit_value(lim, "matmul:float16")


def _first(doc, kernel):
    return next(r for r in doc["records"] if r["kernel"] == kernel)


def _with_fraction(doc, kernel, factor):
    r = _first(doc, kernel)
    r["fraction_of_limit"] = measure.sig(r["fraction_of_limit"] * factor, 4)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.pop("limits"), "missing top-level key 'limits'"),
    (lambda d: d["provenance"].pop("triton"), "provenance lacks 'triton'"),
    (lambda d: d["provenance"].pop("timing"), "provenance lacks 'timing'"),
    (lambda d: d["limits"].pop("copy"), "limits lacks 'copy'"),
    (lambda d: d["limits"]["matmul"][0].update(us=float("nan")), r"limits.matmul\[0\].us must be a finite number"),
    (lambda d: d["limits"]["copy"][0].update(GBps=2 * d["limits"]["copy"][0]["GBps"]),
     r"limits.copy\[0\]: GBps does not follow from its time"),
    (lambda d: d["records"][0].update(unit="ms"), "unit 'ms'"),
    (lambda d: d["records"][0]["ours"].update(value=1e9), "does not follow from its time"),
    (lambda d: _first(d, "vector_add")["speedup"].update({"torch.add": 123.0}), "speedup over torch.add is wrong"),
    (lambda d: _first(d, "vector_add").pop("fraction_of_limit"), "lacks 'fraction_of_limit'"),
    (lambda d: _with_fraction(d, "vector_add", 1.5), "fraction_of_limit .* is not ours"),
    (lambda d: _with_fraction(d, "matmul", 0.5), "fraction_of_limit .* is not ours"),
    (lambda d: _first(d, "softmax").update(limit="matmul:float16"), "fraction_of_limit .* is not ours"),
    (lambda d: _first(d, "vector_add").update(limit="dram"), "no limit 'dram'"),
    (lambda d: _first(d, "matmul").update(limit="matmul:int8"), "no limit 'matmul:int8'"),
])
def test_validate_catches_broken_layouts(smoke_doc, breakage, message):
    doc = copy.deepcopy(smoke_doc)
    breakage(doc)
    with pytest.raises(ValueError, match=message):
        validate(doc)


# ----------------------------------------------------------------------------
# run_case: every peer is checked against ours before anything is timed
# ----------------------------------------------------------------------------

LIMITS = {"copy_GBps": 1.0, "matmul_TFLOPs": {"float32": 1.0}}


def _case(peers, ours=lambda: torch.ones(8), **kw):
    return Case(kernel="toy", case="8 ones", params={}, unit="GB/s", bytes=64, flops=8,
                ours=("ours", ours), peers=peers, **kw)


def test_run_case_names_the_second_peer_when_it_disagrees():
    timed = []
    peers = [("agrees", lambda: torch.ones(8)),
             ("disagrees", lambda: timed.append(1) or torch.full((8,), 2.0))]
    with pytest.raises(AssertionError, match=r"toy \[8 ones\] disagrees with disagrees"):
        run_case(_case(peers), LIMITS, smoke=True)
    assert len(timed) == 1, "a peer that disagrees must not be timed"


def test_run_case_uses_the_case_tolerances_and_first_tensors():
    close = [("within atol", lambda: torch.ones(8) + 1e-3),
             ("returns a tuple", lambda: (torch.ones(8), "extra"))]
    record = run_case(_case(close, atol=1e-2, rtol=0), LIMITS, smoke=True)
    assert [p["impl"] for p in record["peers"]] == ["within atol", "returns a tuple"]
    with pytest.raises(AssertionError, match="disagrees with within atol"):
        run_case(_case(close, atol=1e-5, rtol=0), LIMITS, smoke=True)


def test_run_case_refuses_an_unknown_limit_before_running_anything():
    ran = []
    with pytest.raises(ValueError, match="no limit 'matmul:bfloat16'"):
        run_case(_case([], ours=lambda: ran.append(1), limit="matmul:bfloat16"), LIMITS, smoke=True)
    assert not ran


def test_run_case_record_validates():
    record = run_case(_case([("peer", lambda: torch.ones(8))]), LIMITS, smoke=True)
    doc = {"provenance": {**measure.provenance(), "timing": SMOKE_TIMING},
           "limits": {**LIMITS, "copy_bytes": 64, "matmul_n": 2,
                      "copy": [{"bytes": 64, "us": 0.128, "GBps": 1.0}],
                      "matmul": [{"n": 2, "dtype": "float32", "us": 16e-6, "TFLOPs": 1.0}]},
           "records": [record]}
    validate(doc)
    assert record["fraction_of_limit"] == pytest.approx(record["ours"]["value"] / LIMITS["copy_GBps"], rel=1e-3)


# ----------------------------------------------------------------------------
# The shipped reference
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("gpu, name", [("h100_sxm", "NVIDIA H100"), ("h200", "NVIDIA H200")])
def test_shipped_reference_follows_the_layout(gpu, name):
    assert gpu in measure.SHIPPED_GPUS
    doc = measure.load_reference("bench", gpu)
    validate(doc)
    prov = doc["provenance"]
    assert prov["gpu"].startswith(name) and prov["capability"] == "9.0"
    assert not prov.get("smoke") and not prov["interpreted"]
    # The H100 run (2026-11-26) predates the kernels of chapters 6, 8 and 9; every later run has
    # every kernel that existed at its commit.
    later = {"decode_attention", "rms_norm", "add_rms_norm", "swiglu", "int8_matmul"}
    want = set(CASES) - (later if gpu == "h100_sxm" else set())
    assert {r["kernel"] for r in doc["records"]} == want, "rerun the bench on the GPU: a kernel is missing"
    # the limits' sweeps reach past the ceilings: buffers beyond 1 GiB, matrices up to 8192³
    lim = doc["limits"]
    assert max(r["bytes"] for r in lim["copy"]) > lim["copy_bytes"]
    assert {r["dtype"] for r in lim["matmul"]} == set(lim["matmul_TFLOPs"])
