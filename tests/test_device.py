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
