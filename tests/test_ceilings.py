"""Tests of infer_lib.experiments.ceilings: without a GPU it refuses and writes nothing; with one, a
tiny run writes both files in the layout of the shipped ones (which tests/test_measure.py validates)."""

import json

import pytest

from infer_lib import device, measure
from infer_lib.experiments import ceilings


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on machines without a GPU")
def test_refuses_without_gpu(tmp_path, capsys):
    for call in (lambda: ceilings.copy_file([2**12]), lambda: ceilings.matmul_file([16]), ceilings.run):
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            call()
    with pytest.raises(SystemExit) as exit_info:
        ceilings.main(["--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_matmul_dtypes_follow_the_gpu():
    names = [device.dtype_name(dt) for dt in ceilings.matmul_dtypes()]
    assert {"float16", "float32"} <= set(names) and ("bfloat16" in names) == device.supports_bf16()


@pytest.mark.skipif(not device.HAS_GPU, reason="needs a CUDA GPU")
def test_main_writes_both_files(tmp_path):
    ceilings.main(["--out-dir", str(tmp_path), "--profile", "cpu"])
    gpu = measure.gpu_key()
    copy = json.loads((tmp_path / f"copy_bandwidth_{gpu}.json").read_text())
    flops = json.loads((tmp_path / f"matmul_flops_{gpu}.json").read_text())
    measure.validate(copy, ceilings.COPY_SCHEMA)
    measure.validate(flops, ceilings.MATMUL_SCHEMA)
    assert copy["provenance"]["gpu_key"] == gpu
    assert [r["bytes"] for r in copy["records"]] == list(device.PROFILES["cpu"].copy_sizes)
    assert set(flops["records"]) == {device.dtype_name(dt) for dt in ceilings.matmul_dtypes()}
    # the same layout as the shipped files: the same fields in each record
    shipped = measure.load_reference("matmul_flops")
    assert set(next(iter(flops["records"].values()))[0]) == set(next(iter(shipped["records"].values()))[0])
    assert set(copy["records"][0]) == set(measure.load_reference("copy_bandwidth")["records"][0])
