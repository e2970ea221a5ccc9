"""The block-size experiment (infer_lib.experiments.block_size): its plumbing in Numba's CUDA
simulator (a few hundred elements, wall clock), what it counts, and its refusal to time a CPU."""

import importlib.util
import subprocess
import sys

import pytest

from infer_lib import device, measure

if importlib.util.find_spec("numba_cuda") is None:
    pytest.skip("numba-cuda is not installed (pip install numba-cuda)", allow_module_level=True)

from infer_lib.experiments import block_size  # noqa: E402


def test_smoke_run_follows_the_layout():
    doc = block_size.run(smoke=True)
    measure.validate(doc, block_size.SCHEMA)
    assert doc["provenance"]["smoke"] is True and doc["timing"] == block_size.SMOKE_TIMING
    n = doc["params"]["n"]
    assert doc["params"]["bytes"] == block_size.nbytes(n) == 12 * n
    assert [r["threads_per_block"] for r in doc["records"]] == list(block_size.SMOKE_THREADS)
    for r in doc["records"] + [doc["triton"]]:
        assert r["GBps"] == pytest.approx(12 * n / r["us"] / 1e3, rel=1e-3)
    for r in doc["records"]:
        # the grid is rounded up to whole blocks: enough threads, less than a block to spare
        assert r["blocks"] * r["threads_per_block"] >= n > (r["blocks"] - 1) * r["threads_per_block"]


def test_a_record_without_its_numbers_fails_validation():
    doc = block_size.run(smoke=True)
    del doc["records"][0]["us"]
    with pytest.raises(ValueError, match="us"):
        measure.validate(doc, block_size.SCHEMA)


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_the_command_refuses_to_time_a_cpu(tmp_path):
    r = subprocess.run([sys.executable, "-m", "infer_lib.experiments.block_size", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr and "simulator" in r.stderr
    assert not list(tmp_path.iterdir())
