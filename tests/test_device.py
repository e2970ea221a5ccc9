import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from infer_lib import device


def test_interpreter_matches_hardware():
    # Without a GPU the kernels must run in Triton's interpreter; with one, compiled.
    assert device.INTERPRET == (not device.HAS_GPU)
    assert (os.environ.get("TRITON_INTERPRET") == "1") == device.INTERPRET


def test_import_sets_interpreter_before_triton_in_a_fresh_process():
    code = ("import sys, os; import infer_lib; from infer_lib import device; "
            "print(device.HAS_GPU, os.environ.get('TRITON_INTERPRET'))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    has_gpu, interp = out.stdout.split()
    assert interp == ("None" if has_gpu == "True" else "1")


def test_default_dtype_follows_capability():
    dt = device.default_dtype()
    if not device.HAS_GPU:
        assert dt == torch.float32
    elif device.capability() >= (8, 0):
        assert dt == torch.bfloat16
    else:
        assert dt == torch.float16


def test_describe_names_versions():
    text = device.describe()
    assert torch.__version__ in text and "triton" in text
    assert ("interpreter" in text) == (not device.HAS_GPU)


def test_profile_default_and_override(monkeypatch):
    monkeypatch.delenv("INFER_LIB_PROFILE", raising=False)
    p = device.profile()
    assert p.live == device.HAS_GPU
    assert p.copy_sizes == tuple(sorted(p.copy_sizes)) and p.matmul_sizes
    monkeypatch.setenv("INFER_LIB_PROFILE", "cpu")
    assert device.profile().name == "cpu"
    monkeypatch.setenv("INFER_LIB_PROFILE", "huge")
    with pytest.raises(ValueError, match="not a profile"):
        device.profile()


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal of a GPU profile on a machine without a GPU")
def test_gpu_profile_refused_without_gpu(monkeypatch):
    monkeypatch.setenv("INFER_LIB_PROFILE", "gpu-large")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        device.profile()


def test_cpu_profile_is_tiny():
    p = device.PROFILES["cpu"]
    assert max(p.copy_sizes) <= 2**20 and max(p.matmul_sizes) <= 128 and p.vector_n <= 10_000
    assert max(p.bottlenecks.elementwise) <= 2**16 and p.bottlenecks.d <= 512
    assert p.linear.d <= 128 and max(p.linear.square) <= 128 and max(p.linear.batches) <= p.linear.d
    assert all(S_q * S_k <= 2**14 for _, _, _, S_q, S_k, _, _ in p.attention.checks)


@pytest.mark.parametrize("name", sorted(device.PROFILES))
def test_every_profile_has_every_chapters_sizes(name):
    p = device.PROFILES[name]
    assert p.name == name and not hasattr(p, "extra")
    for sizes in (p.copy_sizes, p.matmul_sizes, p.bottlenecks.elementwise, p.linear.batches, p.linear.square):
        assert sizes and list(sizes) == sorted(set(sizes)), (name, sizes)
    assert (p.attention.sweep is not None) == p.live


def test_gpu_profiles_grow_with_memory():
    small, large = device.PROFILES["gpu-small"], device.PROFILES["gpu-large"]
    assert max(small.copy_sizes) < max(large.copy_sizes) and max(small.matmul_sizes) < max(large.matmul_sizes)
    assert small.linear.d <= large.linear.d and small.attention.softmax_bytes <= large.attention.softmax_bytes
    assert max(small.attention.sweep.seq_lens) < max(large.attention.sweep.seq_lens)


# -- Numba's CUDA simulator (infer_lib.cuda_kernels) ---------------------------------------------

def _fresh(code: str, **env_set) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(env_set)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return out.stdout


def test_import_sets_cuda_simulator_without_gpu_and_imports_no_numba():
    code = ("import sys, os; import infer_lib; from infer_lib import device; "
            "print(device.HAS_GPU, os.environ.get('NUMBA_ENABLE_CUDASIM'), device.CUDA_SIMULATOR, "
            "any(m.split('.')[0] == 'numba' for m in sys.modules))")
    has_gpu, var, sim, numba_imported = _fresh(code).split()
    assert (var, sim) == (("None", "False") if has_gpu == "True" else ("1", "True"))
    assert numba_imported == "False"


@pytest.mark.parametrize("value, simulated", [("0", "False"), ("1", "True"), ("", "False")])
def test_cuda_simulator_variable_set_by_the_user_is_kept(value, simulated):
    code = ("import os; import infer_lib; from infer_lib import device; "
            "print(repr(os.environ['NUMBA_ENABLE_CUDASIM']), device.CUDA_SIMULATOR)")
    assert _fresh(code, NUMBA_ENABLE_CUDASIM=value).split() == [repr(value), simulated]


@pytest.mark.skipif(device.HAS_GPU, reason="the warning is for a machine without a GPU")
@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="numba-cuda is not installed")
def test_numba_cuda_imported_first_is_warned_about():
    code = ("import warnings; warnings.simplefilter('always'); import numba.cuda; "
            "import infer_lib; from numba.cuda.core import config; print(config.ENABLE_CUDASIM)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "numba.cuda was imported before infer_lib" in out.stderr and "restart" in out.stderr
    assert out.stdout.split() == ["0"]   # too late: numba.cuda already chose the driver


@pytest.mark.parametrize("name", sorted(device.PROFILES))
def test_gqa_speed_sizes_where_timings_are_live(name):
    """Chapter 7 measures decode attention against H_kv live on a GPU only; the head counts
    divide the query heads, MHA first and MQA last."""
    p = device.PROFILES[name]
    assert (p.gqa_speed is not None) == p.live
    if p.gqa_speed is not None:
        s = p.gqa_speed
        assert s.kv_heads[0] == s.heads and s.kv_heads[-1] == 1
        assert list(s.kv_heads) == sorted(s.kv_heads, reverse=True)
        assert all(s.heads % n == 0 for n in s.kv_heads)
