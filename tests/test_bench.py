import copy
import json
import subprocess
import sys

import pytest

from infer_lib import device, measure
from infer_lib.bench import validate
from infer_lib.bench.cases import CASES


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
    assert smoke_doc["provenance"]["smoke"] is True
    assert {r["kernel"] for r in smoke_doc["records"]} == set(CASES)
    va = [r for r in smoke_doc["records"] if r["kernel"] == "vector_add"]
    assert all(r["peers"] and "torch.add" in r["speedup"] for r in va)


def test_only_selects_kernels(tmp_path):
    out = tmp_path / "b.json"
    assert _run("--smoke", "--only", "vector_add", "--out", str(out)).returncode == 0
    assert {r["kernel"] for r in json.loads(out.read_text())["records"]} == {"vector_add"}


def test_unknown_kernel_is_refused():
    proc = _run("--smoke", "--only", "nonexistent")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_refuses_without_gpu():
    proc = _run()
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "--smoke" in proc.stderr


def _first(doc, kernel):
    return next(r for r in doc["records"] if r["kernel"] == kernel)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.pop("limits"), "missing top-level key 'limits'"),
    (lambda d: d["provenance"].pop("triton"), "provenance lacks 'triton'"),
    (lambda d: d["records"][0].update(unit="ms"), "unit 'ms'"),
    (lambda d: d["records"][0]["ours"].update(value=1e9), "does not follow from its time"),
    (lambda d: _first(d, "vector_add")["speedup"].update({"torch.add": 123.0}), "speedup over torch.add is wrong"),
    (lambda d: _first(d, "vector_add").pop("fraction_of_limit"), "lacks 'fraction_of_limit'"),
])
def test_validate_catches_broken_layouts(smoke_doc, breakage, message):
    doc = copy.deepcopy(smoke_doc)
    breakage(doc)
    with pytest.raises(ValueError, match=message):
        validate(doc)


def test_shipped_reference_follows_the_layout():
    doc = measure.load_reference("bench")
    validate(doc)
    prov = doc["provenance"]
    assert prov["gpu"].startswith("NVIDIA H100") and prov["capability"] == "9.0"
    assert not prov.get("smoke") and not prov["interpreted"]
    assert {r["kernel"] for r in doc["records"]} == set(CASES), "rerun the bench on the GPU: a kernel is missing"
