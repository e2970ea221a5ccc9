"""Tests of infer_lib.experiments.bottlenecks: without a GPU every measurement refuses; with one, tiny
runs give positive, finite numbers; and the shipped H100 measurement file has the layout
chapter 2 reads."""

import json
import math

import pytest
import torch

from infer_lib import device, hardware, measure, roofline
from infer_lib.experiments import bottlenecks

GPU_ONLY = [
    ("elementwise_sweep", lambda: bottlenecks.elementwise_sweep([1024])),
    ("matmul_sweep", lambda: bottlenecks.matmul_sweep([16])),
    ("launch_overhead", lambda: bottlenecks.launch_overhead(numel=16, n_ops=2, calls=4)),
    ("representative_ops", lambda: bottlenecks.representative_ops(rows=4, cols=8, d=16, small_batch=2)),
    ("profile_table", lambda: bottlenecks.profile_table(tokens=8, d=16)),
    ("bottlenecks.run", lambda: bottlenecks.run()),
]


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# ----------------------------------------------------------------------------
# Without a GPU: everything that would time must refuse
# ----------------------------------------------------------------------------

@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on machines without a GPU")
@pytest.mark.parametrize("what, call", GPU_ONLY, ids=[w for w, _ in GPU_ONLY])
def test_measurements_refuse_without_gpu(what, call):
    with pytest.raises(RuntimeError, match=rf"{what} needs a CUDA GPU"):
        call()


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on machines without a GPU")
def test_main_exits_2_without_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bottlenecks.main(["--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------
# Runs anywhere: sizes, the ops' byte and FLOP counts, the CPU profile, the validator
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(device.PROFILES))
def test_sizes_for_every_profile(name):
    sz = device.PROFILES[name].bottlenecks
    assert list(sz.elementwise) == sorted(sz.elementwise)
    # The largest GELU input stays at or under 1 GiB in fp32 (2 GiB moved): fits a 16 GB GPU.
    assert max(sz.elementwise) * 4 <= 2**30
    assert sz.small_batch < sz.d and sz.launch_ops > 1


def test_op_cases_count_what_the_docstrings_say():
    dtype = torch.bfloat16
    cases = {op.name: (kind, op) for kind, op, _ in bottlenecks._op_cases(dtype, 8, 16, 32, 2)}
    assert list(cases) == ["add 8×16", "gelu 8×16", "silu 8×16", "softmax 8×16", "layer_norm 8×16",
                           "rms_norm 8×16", "row sum 8×16", "matmul 2×32×32", "matmul 32×32×32"]
    kind, add = cases["add 8×16"]
    assert kind == "elementwise" and (add.flops, add.bytes) == (8 * 16, 3 * 8 * 16 * 2)
    kind, softmax = cases["softmax 8×16"]
    assert kind == "reduction" and (softmax.flops, softmax.bytes) == (5 * 8 * 16, 2 * 8 * 16 * 2)
    _, row_sum = cases["row sum 8×16"]
    assert row_sum.bytes == (8 * 16 + 8) * 2
    kind, mm = cases["matmul 2×32×32"]
    assert kind == "matmul" and mm == roofline.matmul(2, 32, 32, dtype, name="matmul 2×32×32")


def test_op_cases_run_on_the_cpu():
    # The functions the GPU times, checked for shape errors on tiny CPU tensors (no timing).
    if device.HAS_GPU:
        pytest.skip("the GPU tests below run the same cases for real")
    for _, op, make in bottlenecks._op_cases(torch.float32, 4, 8, 16, 2):
        out = make()()
        assert isinstance(out, torch.Tensor) and out.numel() > 0, op.name


def test_as_op_round_trips():
    op = roofline.matmul(16, 64, 64, torch.bfloat16, name="mm")
    record = {"name": op.name, "kind": "matmul", "flops": op.flops, "bytes": op.bytes, "us": 1.0}
    assert bottlenecks.as_op(record) == op


def test_cpu_profile_table_is_labelled_cpu():
    table = bottlenecks.cpu_profile_table(tokens=8, d=16, iters=2)
    assert "Self CPU" in table and "aten::addmm" in table and "aten::gelu" in table


def test_parse_profile_table_reads_a_cpu_table_back():
    rows = bottlenecks.parse_profile_table(bottlenecks.cpu_profile_table(tokens=8, d=16, iters=3))
    assert rows["aten::gelu"]["# of Calls"] == 3 and rows["aten::addmm"]["# of Calls"] == 6
    assert rows["aten::gelu"]["Self CPU"] > 0          # a time, in µs
    assert 0 < rows["aten::gelu"]["Self CPU %"] <= 100
    with pytest.raises(ValueError, match="not a torch.profiler table"):
        bottlenecks.parse_profile_table("no table here")


def _good_doc():
    return {
        "provenance": measure.provenance(), "dtype": "bfloat16",
        "elementwise": [{"n": 1, "bytes": 4, "us": 1.0, "GBps": 0.004}],
        "matmul": [{"n": 2, "flops": 16, "bytes": 24, "us": 1.0, "TFLOPs": 1.6e-5}],
        "launch_overhead": {k: 1.0 for k in bottlenecks.LAUNCH_KEYS},
        "ops": [{"name": "add", "kind": "elementwise", "flops": 1, "bytes": 6, "us": 1.0}],
        "profile_table": "Name ...",
    }


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.pop("ops"), "missing top-level key 'ops'"),
    (lambda d: d["provenance"].pop("gpu_key"), "provenance lacks 'gpu_key'"),
    (lambda d: d["matmul"][0].update(us=float("nan")), r"matmul\[0\]\.us must be a finite number > 0"),
    (lambda d: d["launch_overhead"].update(graph_us=0), "launch_overhead.graph_us"),
    (lambda d: d.update(dtype="float64"), "dtype 'float64'"),
    (lambda d: d["ops"][0].update(name=""), r"ops\[0\] lacks a name"),
    (lambda d: d.update(profile_table="  "), "profile_table must be a non-empty string"),
])
def test_validate_names_what_is_wrong(breakage, message):
    bottlenecks.validate(_good_doc())
    doc = _good_doc()
    breakage(doc)
    with pytest.raises(ValueError, match=message):
        bottlenecks.validate(doc)


# ----------------------------------------------------------------------------
# With a GPU: tiny runs
# ----------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not device.HAS_GPU, reason="needs a CUDA GPU")


@needs_gpu
def test_tiny_sweeps_on_gpu():
    dtype = device.default_dtype()
    ew = bottlenecks.elementwise_sweep([1000, 4096], dtype)
    assert [r["n"] for r in ew] == [1000, 4096]
    assert [r["bytes"] for r in ew] == [2 * 1000 * dtype.itemsize, 2 * 4096 * dtype.itemsize]
    assert all(_finite_positive(r["us"]) and _finite_positive(r["GBps"]) for r in ew)
    mm = bottlenecks.matmul_sweep([64, 100], dtype)
    assert [r["flops"] for r in mm] == [2 * 64**3, 2 * 100**3]
    assert all(_finite_positive(r["us"]) and _finite_positive(r["TFLOPs"]) for r in mm)


@needs_gpu
def test_launch_overhead_on_gpu():
    lo = bottlenecks.launch_overhead(numel=256, n_ops=10, calls=50)
    for k in bottlenecks.LAUNCH_KEYS:
        assert _finite_positive(lo[k]), (k, lo[k])
    assert lo["n_ops"] == 10 and lo["numel"] == 256


@needs_gpu
def test_representative_ops_and_profile_on_gpu():
    records = bottlenecks.representative_ops(rows=64, cols=128, d=256, small_batch=4)
    assert len(records) == 9
    for r in records:
        assert _finite_positive(r["us"]) and bottlenecks.as_op(r).intensity > 0
    table = bottlenecks.profile_table(tokens=64, d=128, iters=2)
    assert "CUDA" in table and "addmm" in table


@needs_gpu
def test_main_writes_the_file_on_gpu(tmp_path):
    bottlenecks.main(["--out-dir", str(tmp_path), "--profile", "cpu"])
    doc = json.loads((tmp_path / f"bottlenecks_{measure.gpu_key()}.json").read_text())
    bottlenecks.validate(doc)
    assert doc["provenance"]["gpu_key"] == measure.gpu_key()
    assert [r["n"] for r in doc["elementwise"]] == list(device.PROFILES["cpu"].bottlenecks.elementwise)
    assert [r["n"] for r in doc["matmul"]] == list(device.PROFILES["cpu"].matmul_sizes)


# ----------------------------------------------------------------------------
# The shipped reference measurement (chapter 2 reads it on machines without a GPU)
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    return measure.load_reference("bottlenecks")


def test_shipped_file_has_the_layout(shipped):
    bottlenecks.validate(shipped)
    prov = shipped["provenance"]
    assert prov["gpu_key"] == measure.REFERENCE_GPU and prov["interpreted"] is False
    for k in ("gpu", "capability", "driver", "cuda", "torch", "triton", "python", "date"):
        assert prov.get(k), k
    assert [r["n"] for r in shipped["elementwise"]] == sorted(r["n"] for r in shipped["elementwise"])
    kinds = {r.get("kind") for r in shipped["ops"]}
    assert {"elementwise", "reduction", "matmul"} <= kinds
    rows = bottlenecks.parse_profile_table(shipped["profile_table"])
    iters = shipped["profile_block"]["iters"]
    assert rows["aten::gelu"]["# of Calls"] == iters and rows["aten::addmm"]["# of Calls"] == 2 * iters
    assert rows["aten::addmm"]["Self CUDA"] > rows["aten::gelu"]["Self CUDA"] > 0   # the matmuls dominate


def test_shipped_measurements_are_physical(shipped):
    spec = hardware.SPECS[shipped["provenance"]["gpu_key"]]
    dtype = getattr(torch, shipped["dtype"])
    # Nothing beats the datasheet: not HBM bandwidth for the largest elementwise op ...
    big = max(shipped["elementwise"], key=lambda r: r["n"])
    assert big["GBps"] < spec.bandwidth_GBps
    assert big["GBps"] == pytest.approx(big["bytes"] / big["us"] / 1e3, rel=1e-3)
    # ... nor the dense peak for any matmul.
    peak = hardware.peak_tflops(spec, dtype)
    for r in shipped["matmul"]:
        assert r["TFLOPs"] < peak
        assert r["TFLOPs"] == pytest.approx(r["flops"] / r["us"] / 1e6, rel=1e-3)
    # Each op no faster than its roofline time at datasheet ceilings.
    ceiling_flops, ceiling_bw = roofline.ceilings(spec, dtype)
    for r in shipped["ops"]:
        assert r["us"] * 1e-6 >= roofline.roofline_time(bottlenecks.as_op(r), ceiling_flops, ceiling_bw), r
    # A launch costs more than the tiny op's bytes at full bandwidth, by orders of magnitude.
    lo = shipped["launch_overhead"]
    assert lo["batched_us"] < lo["kernel_us"]
    assert lo["kernel_us"] > 100 * lo["bytes"] / (spec.bandwidth_GBps * 1e3)
