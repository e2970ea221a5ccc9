"""The fusion experiment (infer_lib.experiments.fusion): its plumbing on any machine (tiny rows, the
Triton kernels in the interpreter, no torch.compile, wall clock), the bytes it counts, the schema
that lets only a smoke file lack torch.compile, and its refusal to time a CPU."""

import copy
import subprocess
import sys

import pytest
import torch

from infer_lib import device, measure
from infer_lib.experiments import fusion


@pytest.fixture(scope="module")
def smoke_doc():
    return fusion.run(smoke=True)


def test_smoke_run_follows_the_layout(smoke_doc):
    doc = smoke_doc
    fusion.validate(doc)
    measure.validate(doc, fusion.SMOKE_SCHEMA)
    assert doc["provenance"]["smoke"] is True and doc["timing"] == fusion.SMOKE_TIMING
    assert [(r["op"], r["cols"]) for r in doc["records"]] == [
        (op, c) for op in fusion.OPS for c in fusion.SMOKE_COLS]
    for r in doc["records"]:
        assert "compiled" not in r and r["dtype"] == ("bfloat16" if device.supports_bf16() else "float16")
        for impl in ("eager", "ours"):
            assert r[impl]["GBps"] == pytest.approx(r["fused_bytes"] / r[impl]["us"] / 1e3, rel=1e-3)
            assert r[impl]["fraction_of_copy"] == pytest.approx(r[impl]["GBps"] / doc["copy"]["GBps"], rel=1e-3)
    assert doc["generated_code"] is None and "smoke" in doc["generated_code_note"]


def test_only_a_smoke_file_may_lack_torch_compile(smoke_doc):
    doc = copy.deepcopy(smoke_doc)
    doc["provenance"]["smoke"] = False
    with pytest.raises(ValueError, match=r"records\[0\] lacks 'compiled'"):
        fusion.validate(doc)
    for r in doc["records"]:
        r["compiled"] = dict(r["eager"])
    fusion.validate(doc)
    doc["generated_code"] = {"rms_norm": 3}
    with pytest.raises(ValueError, match="generated_code must map"):
        fusion.validate(doc)


def test_bytes_of_a_tiny_shape_by_hand():
    # 3 rows x 8 columns of bf16 (2 bytes): 24 elements, 48 bytes a tensor, a 16-byte weight
    rms = fusion.traffic_bytes("rms_norm", 3, 8, 2)
    assert (rms["fused_bytes"], rms["unfused_bytes"]) == (48 + 48 + 16, 48 + 48 + 16)
    add = fusion.traffic_bytes("add_rms_norm", 3, 8, 2)
    # fused: read x, r; write h, out.  unfused: + write h by the add and read h by the norm
    assert add["fused_bytes"] == 4 * 48 + 16 == 208
    assert add["unfused_bytes"] == (3 * 48) + (48 + 48) + 16 == 256
    swi = fusion.traffic_bytes("swiglu", 3, 8, 2)
    # fused: read g, u; write out.  unfused: silu reads g, writes s; the product reads s, u, writes out
    assert swi["fused_bytes"] == 3 * 48 == 144
    assert swi["unfused_bytes"] == (48 + 48) + (3 * 48) == 240
    assert (swi["elements_read"], swi["elements_written"]) == (48, 24)


def test_our_kernels_are_checked_against_eager(monkeypatch):
    monkeypatch.setitem(fusion.OURS, "swiglu", lambda g, u: torch.nn.functional.silu(g) * u + 1)
    with pytest.raises(AssertionError, match="ours .swiglu.*differs from eager"):
        fusion.fusion_record("swiglu", 2, 16, torch.bfloat16, 1.0, smoke=True)


def test_trim_code_keeps_the_kernels_of_a_huge_module():
    small = "def f():\n    pass\n"
    assert fusion.trim_code(small) == small
    kernel = "@triton.jit\ndef triton_red(x_ptr):\n    pass\n"
    module = "import torch\n" + "# filler\n" * 5000 + f"k = async_compile.triton('k', '''\n{kernel}''')\n"
    trimmed = fusion.trim_code(module, cap=1000)
    assert trimmed.strip() == kernel.strip()
    assert len(fusion.trim_code("x" * 50_000)) == fusion.CODE_CAP


@pytest.mark.skipif(device.HAS_GPU, reason="on a GPU the command measures")
def test_the_command_refuses_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "infer_lib.experiments.fusion", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr
    assert not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        fusion.run()


@pytest.mark.skipif(not device.HAS_GPU, reason="GPU timings and torch.compile's Triton")
def test_small_rows_on_the_gpu():
    doc = fusion.run(rows=256, cols=(512,))
    fusion.validate(doc)
    assert all("compiled" in r for r in doc["records"])
    if doc["generated_code"] is not None:
        assert set(doc["generated_code"]) == set(fusion.OPS)
        assert all("triton" in code for code in doc["generated_code"].values())
