"""Tests of infer_lib.hardware: the spec table's sanity, GPU-name matching,
peaks by dtype, the display helpers, detection — and that it measures nothing:
the timing lives in infer_lib.measure, which may import hardware, never the
other way round."""

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from infer_lib import device, hardware

KEYS = ["v100", "t4", "a100_40gb", "a100_80gb", "h100_sxm", "h100_pcie", "l4", "h200", "b200"]
SPECS = list(hardware.SPECS.values())


def test_keys_in_launch_order():
    assert list(hardware.SPECS) == KEYS
    years = [spec.year for spec in SPECS]
    assert years == sorted(years)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_row_is_sane(spec):
    assert spec.key in hardware.SPECS and hardware.SPECS[spec.key] is spec
    assert re.fullmatch(r"\d+\.\d", spec.compute_capability)
    assert 2015 <= spec.year <= 2026
    assert 20 <= spec.sms <= 200
    assert 8 <= spec.memory_GB <= 300
    assert 100 <= spec.bandwidth_GBps <= 20000
    assert 1 <= spec.l2_MB <= 200
    assert 48 <= spec.smem_per_sm_KB <= 256
    assert 16 <= spec.pcie_GBps <= 256
    assert spec.nvlink_GBps is None or 100 <= spec.nvlink_GBps <= 3600
    assert 1 <= spec.fp32_TFLOPs <= 200
    assert spec.fp16_TFLOPs >= 2 * spec.fp32_TFLOPs  # tensor cores beat plain FP32
    # Ampere (8.0) brought TF32 and BF16 tensor cores; older chips have neither.
    pre_ampere = spec.capability < (8, 0)
    assert (spec.bf16_TFLOPs is None) == pre_ampere
    assert (spec.tf32_TFLOPs is None) == pre_ampere
    if not pre_ampere:
        assert spec.bf16_TFLOPs == spec.fp16_TFLOPs
        assert spec.fp32_TFLOPs < spec.tf32_TFLOPs < spec.fp16_TFLOPs
    assert any(url.startswith("https://") for _, url in spec.sources)
    assert all(title for title, _ in spec.sources)
    assert spec.match and all(w == w.lower() for w in spec.match)
    assert spec.notes and spec.name and spec.architecture and spec.form_factor


def test_flops_grew_faster_than_bandwidth():
    # The chapter's point: V100 → B200, 16-bit FLOP/s outgrew bandwidth
    # (the V100 has no bf16, so compare fp16, which equals bf16 where both exist).
    v100, b200 = hardware.SPECS["v100"], hardware.SPECS["b200"]
    flops_growth = b200.fp16_TFLOPs / v100.fp16_TFLOPs
    bandwidth_growth = b200.bandwidth_GBps / v100.bandwidth_GBps
    assert flops_growth / bandwidth_growth > 1
    a100, h100 = hardware.SPECS["a100_80gb"], hardware.SPECS["h100_sxm"]
    assert (h100.bf16_TFLOPs / a100.bf16_TFLOPs) > (h100.bandwidth_GBps / a100.bandwidth_GBps)


@pytest.mark.parametrize("device_name, key", [
    ("Tesla V100-SXM2-32GB", "v100"),
    ("Tesla T4", "t4"),
    ("NVIDIA A100-SXM4-40GB", "a100_40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100_80gb"),
    ("NVIDIA H100 80GB HBM3", "h100_sxm"),
    ("NVIDIA H100 PCIe", "h100_pcie"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA B200", "b200"),
])
def test_match_name(device_name, key):
    assert hardware.match_name(device_name).key == key


@pytest.mark.parametrize("device_name", [
    "NVIDIA GeForce RTX 4090",
    "NVIDIA L40S",         # "l4" must match a whole word only
    "NVIDIA GB200",        # likewise "b200"
    "NVIDIA H100 NVL",     # neither the SXM nor the PCIe H100 of the table
    "NVIDIA H200 NVL",     # the PCIe H200: slower than the SXM row
    "NVIDIA A100 80GB PCIe",  # 1935 GB/s: not the SXM4 row
    "Tesla V100-PCIE-16GB",
    "",
])
def test_match_name_unknown(device_name):
    assert hardware.match_name(device_name) is None


def test_peak_tflops():
    h100 = hardware.SPECS["h100_sxm"]
    assert hardware.peak_tflops(h100, torch.bfloat16) == h100.bf16_TFLOPs
    assert hardware.peak_tflops(h100, torch.float16) == h100.fp16_TFLOPs
    assert hardware.peak_tflops(h100, torch.float32) == h100.fp32_TFLOPs
    assert hardware.peak_tflops(h100, "tf32") == h100.tf32_TFLOPs
    assert h100.peak_tflops(torch.bfloat16) == h100.bf16_TFLOPs


def test_peak_tflops_missing_dtype_raises():
    t4 = hardware.SPECS["t4"]
    assert hardware.peak_tflops(t4, torch.float16) == 65.0
    with pytest.raises(ValueError, match="bf16"):
        hardware.peak_tflops(t4, torch.bfloat16)
    with pytest.raises(ValueError, match="tf32"):
        hardware.peak_tflops(hardware.SPECS["v100"], "tf32")
    with pytest.raises(ValueError, match="dtype"):
        hardware.peak_tflops(t4, torch.int8)


def test_spec_table():
    table = hardware.spec_table()
    assert len(table) == len(hardware.SPECS)
    assert list(table.index) == KEYS
    for column in ("HBM bandwidth (GB/s)", "BF16 dense (TFLOP/s)", "source"):
        assert column in table.columns
    assert table.loc["h100_sxm", "HBM bandwidth (GB/s)"] == 3350.0
    assert table.loc["a100_40gb", "source"] == hardware.SPECS["a100_40gb"].sources[0][0]
    assert list(hardware.spec_table(["b200", "v100"]).index) == ["b200", "v100"]
    with pytest.raises(KeyError, match="x999"):
        hardware.spec_table(["x999"])


def test_sources_markdown():
    md = hardware.sources_markdown()
    lines = md.splitlines()
    assert all(line.startswith("- ") for line in lines)
    assert len(lines) == len(set(lines))
    for spec in SPECS:
        for title, url in spec.sources:
            assert title in md and url in md


def test_spec_from_properties():
    # A GPU outside the table, as torch.cuda.get_device_properties describes it.
    props = SimpleNamespace(name="NVIDIA RTX PRO 6000 Blackwell", major=12, minor=0,
                            total_memory=96 * 2**30, multi_processor_count=188,
                            L2_cache_size=128 * 2**20, shared_memory_per_multiprocessor=100 * 2**10)
    spec = hardware.spec_from_properties(props)
    assert spec.key == "nvidia_rtx_pro_6000_blackwell"
    assert (spec.sms, spec.compute_capability, spec.l2_MB, spec.smem_per_sm_KB) == (188, "12.0", 128, 100)
    assert spec.memory_GB == pytest.approx(96.0)          # GiB, the table's unit for capacity
    assert spec.bf16_TFLOPs is None and spec.bandwidth_GBps is None
    assert spec.sources == (("torch.cuda.get_device_properties", ""),)
    with pytest.raises(ValueError, match="unknown"):
        hardware.peak_tflops(spec, torch.bfloat16)


# ----------------------------------------------------------------------------
# hardware describes, measure measures: the arrow points one way
# ----------------------------------------------------------------------------

def test_hardware_does_not_import_measure():
    code = ("import json, sys; import infer_lib.hardware; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('infer_lib'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "infer_lib.hardware" in loaded and "infer_lib.measure" not in loaded, loaded
    assert not any(m.startswith(("infer_lib.bench", "infer_lib.experiments")) for m in loaded), loaded


def test_hardware_has_no_timing_code():
    assert not any(hasattr(hardware, name) for name in ("measure_copy_bandwidth", "measure_matmul_flops", "main"))


@pytest.mark.skipif(device.HAS_GPU, reason="checks detection on a machine without a GPU")
def test_detect_without_gpu():
    assert hardware.detect() is None


@pytest.mark.skipif(not device.HAS_GPU, reason="needs a CUDA GPU")
def test_detect_matches_the_driver():
    spec = hardware.detect()
    assert spec is not None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    # The table's SM count and capability must be what this GPU reports.
    assert spec.sms == props.multi_processor_count
    assert spec.capability == (props.major, props.minor)
