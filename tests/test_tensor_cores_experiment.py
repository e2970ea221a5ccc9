"""The tensor-core experiment (infer_lib.experiments.tensor_cores): its plumbing on any machine (tiny
matrices, wall clock), the TF32 flag restored, the peaks it reads, and its refusal to time a CPU."""

import subprocess
import sys

import pytest
import torch

from infer_lib import device, hardware, measure
from infer_lib.experiments import tensor_cores


def test_smoke_run_follows_the_layout():
    doc = tensor_cores.run(smoke=True)
    tensor_cores.validate(doc)
    assert doc["provenance"]["smoke"] is True and doc["timing"] == tensor_cores.SMOKE_TIMING
    assert list(doc["records"]) == list(tensor_cores.precisions())
    assert {"fp32", "tf32", "fp16"} <= set(doc["records"])
    for name, records in doc["records"].items():
        assert [r["n"] for r in records] == list(tensor_cores.SMOKE_SIZES)
        for r in records:
            assert r["TFLOPs"] == pytest.approx(2 * r["n"] ** 3 / r["us"] / 1e6, rel=1e-3)
            assert r["peak_TFLOPs"] is None and r["fraction_of_peak"] is None   # smoke: no peak
    assert [r["allow_tf32"] for r in doc["records"]["tf32"]] == [True, True]
    assert doc["records"]["fp32"][0]["dtype"] == doc["records"]["tf32"][0]["dtype"] == "float32"


def test_the_tf32_flag_is_restored():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for start in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = start
            tensor_cores.matmul_record(8, "tf32", smoke=True)
            tensor_cores.matmul_record(8, "fp32", smoke=True)
            assert torch.backends.cuda.matmul.allow_tf32 is start
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_each_precision_is_held_to_its_own_peak():
    h100 = hardware.SPECS["h100_sxm"]
    assert tensor_cores.peak(h100, "fp32") == h100.fp32_TFLOPs
    assert tensor_cores.peak(h100, "tf32") == h100.tf32_TFLOPs != h100.fp32_TFLOPs
    assert tensor_cores.peak(h100, "bf16") == h100.bf16_TFLOPs
    assert tensor_cores.peak(None, "fp16") is None
    no_tf32 = next(s for s in hardware.SPECS.values() if s.tf32_TFLOPs is None)
    assert tensor_cores.peak(no_tf32, "tf32") is None


def test_validate_demands_peaks_of_a_measured_file_of_a_known_gpu():
    doc = tensor_cores.run(smoke=True)
    doc["provenance"].update(smoke=False, gpu_key="h100_sxm")
    with pytest.raises(ValueError, match=r"records.fp32\[0\].peak_TFLOPs must be a finite number > 0"):
        tensor_cores.validate(doc)
    for name, records in doc["records"].items():
        for r in records:
            r.update(peak_TFLOPs=100.0, fraction_of_peak=0.5)
    tensor_cores.validate(doc)
    doc["records"]["fp16"][0]["precision"] = "bf16"
    with pytest.raises(ValueError, match=r"records.fp16\[0\] is not a fp16 record"):
        tensor_cores.validate(doc)


@pytest.mark.skipif(device.HAS_GPU, reason="on a GPU the command measures")
def test_the_command_refuses_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "infer_lib.experiments.tensor_cores", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr
    assert not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        tensor_cores.run()


@pytest.mark.skipif(not device.HAS_GPU, reason="GPU timings")
def test_small_matrices_on_the_gpu():
    doc = tensor_cores.run(sizes=(256,))
    tensor_cores.validate(doc)
    measure.validate(doc, tensor_cores.SCHEMA)
