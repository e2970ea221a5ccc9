"""infer_lib.cuda_kernels: numba-cuda kernels against NumPy.

Without a GPU they run in Numba's CUDA simulator, one Python thread per CUDA thread
(~0.1 ms each): sizes stay tiny. GPU-only behaviour is skipped with its reason.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from infer_lib import device

if importlib.util.find_spec("numba_cuda") is None:
    pytest.skip("numba-cuda is not installed (pip install numba-cuda)", allow_module_level=True)

from infer_lib import cuda_kernels as ck  # noqa: E402

GPU_ONLY = pytest.mark.skipif(not device.HAS_GPU, reason="needs a CUDA GPU: compiled numba-cuda kernels")
SIM_ONLY = pytest.mark.skipif(device.HAS_GPU, reason="checks Numba's CUDA simulator, used only without a GPU")


@pytest.fixture
def rng(request):
    # fresh random inputs for every test, reproducible from the test's name
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _run(code: str, env_drop=(), **env_set) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env.update(env_set)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


# -- where the kernels run ----------------------------------------------------------------------

def test_simulator_exactly_when_there_is_no_gpu():
    assert ck.SIMULATOR == (not device.HAS_GPU) == device.CUDA_SIMULATOR
    kernel_module = type(ck._vector_add_kernel).__module__
    assert kernel_module.startswith("numba.cuda.simulator") == ck.SIMULATOR, kernel_module
    assert ("simulator" in ck.describe()) == ck.SIMULATOR


def test_infer_lib_and_its_triton_kernels_do_not_import_numba():
    proc = _run("""
        import sys
        import infer_lib, infer_lib.kernels
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "numba_cuda", "llvmlite")))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_without_numba_cuda_the_module_says_what_to_install():
    # numba_cuda cannot be found, as where it is not installed
    proc = _run("""
        import importlib.util
        _real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, package=None: None if name == "numba_cuda" else _real(name, package)
        import infer_lib
        try:
            import infer_lib.cuda_kernels
        except ImportError as err:
            print("ImportError:", err)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "ImportError:" in proc.stdout and "pip install numba-cuda" in proc.stdout


# -- vector_add ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n, threads", [(1, 256), (1000, 256), (1000, 1000), (4099, 1024), (37, 32), (5, 1)])
def test_vector_add_matches_numpy(rng, n, threads):
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    out = ck.vector_add(x, y, threads_per_block=threads)
    assert out.dtype == np.float32 and out.shape == (n,)
    np.testing.assert_array_equal(out, ck.vector_add_ref(x, y))   # one float32 add: exact


def test_vector_add_empty_and_strided_inputs(rng):
    assert ck.vector_add(np.empty(0, np.float32), np.empty(0, np.float32)).shape == (0,)
    x = rng.standard_normal(40).astype(np.float32)[::2]      # not contiguous
    y = rng.standard_normal(20).astype(np.float32)
    np.testing.assert_array_equal(ck.vector_add(x, y, threads_per_block=8), x + y)


def test_vector_add_bad_input():
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match=r"shape \(10,\) but y has shape \(11,\)"):
        ck.vector_add(x, np.ones(11, np.float32))
    with pytest.raises(TypeError, match="y has dtype float64.*float32"):
        ck.vector_add(x, np.ones(10))
    with pytest.raises(ValueError, match="must be 1-D"):
        ck.vector_add(np.ones((2, 5), np.float32), np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match="must be a NumPy array, got list"):
        ck.vector_add([1.0] * 10, x)
    for bad in (0, 1025, 2048, -1):
        with pytest.raises(ValueError, match="outside 1..1024: CUDA allows at most 1024 threads per block"):
            ck.vector_add(x, x, threads_per_block=bad)
    with pytest.raises(TypeError, match="threads_per_block must be an int"):
        ck.vector_add(x, x, threads_per_block=256.0)


def test_torch_tensors_are_told_how_to_pass_numpy():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"NumPy array, got Tensor.*\.cpu\(\)\.numpy\(\)"):
        ck.vector_add(torch.ones(4), np.ones(4, np.float32))


# -- row_sum ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, cols, threads", [(1, 1, 1), (2, 37, 32), (3, 37, 128), (2, 300, 64),
                                                 (1, 300, 512), (4, 5, 2), (2, 0, 4)])
def test_row_sum_matches_numpy(rng, rows, cols, threads):
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    out = ck.row_sum(x, threads_per_block=threads)
    assert out.dtype == np.float32 and out.shape == (rows,)
    np.testing.assert_allclose(out, ck.row_sum_ref(x), rtol=1e-5, atol=1e-5 * max(cols, 1) ** 0.5)


def test_row_sum_integers_exactly(rng):
    # small integers add exactly in float32: any lost or doubled partial sum shows
    x = rng.integers(-100, 100, size=(3, 300)).astype(np.float32)
    np.testing.assert_array_equal(ck.row_sum(x, threads_per_block=64), x.sum(axis=1))


def test_row_sum_bad_input():
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match="must be a power of two"):
        ck.row_sum(x, threads_per_block=96)
    with pytest.raises(ValueError, match="outside 1..1024: CUDA allows at most 1024 threads per block"):
        ck.row_sum(x, threads_per_block=2048)
    with pytest.raises(ValueError, match="must be 2-D"):
        ck.row_sum(np.ones(8, np.float32))
    with pytest.raises(TypeError, match="dtype int64"):
        ck.row_sum(np.ones((2, 8), np.int64))
    assert ck.row_sum(np.empty((0, 8), np.float32)).shape == (0,)


# -- warp divergence ----------------------------------------------------------------------------

def test_divergence_by_lane_splits_every_warp():
    d = ck.warp_divergence_demo(64)
    t = d["thread"]
    np.testing.assert_array_equal(d["lane"], t % 32)
    np.testing.assert_array_equal(d["warp"], t // 32)
    np.testing.assert_array_equal(d["path"], t % 2)
    np.testing.assert_array_equal(d["value"], np.where(t % 2 == 0, 2 * t, -t))
    assert (d["paths_in_warp"] == 2).all()


def test_divergence_by_warp_keeps_warps_whole():
    d = ck.warp_divergence_demo(70, split="warp")       # a last, partial warp of 6 threads
    t = d["thread"]
    np.testing.assert_array_equal(d["path"], (t // 32) % 2)
    assert (d["paths_in_warp"] == 1).all()
    with pytest.raises(ValueError, match="split must be 'lane' or 'warp'"):
        ck.warp_divergence_demo(32, split="block")
    with pytest.raises(ValueError, match="at most 1024 threads per block"):
        ck.warp_divergence_demo(1025)


# -- past the limit -----------------------------------------------------------------------------

def test_launch_unchecked_within_the_limit():
    np.testing.assert_array_equal(ck.launch_unchecked(40), np.arange(40))


@SIM_ONLY
def test_simulator_does_not_enforce_the_thread_limit():
    # What the chapter must say: Numba's simulator runs 1025 threads in a block; a GPU refuses.
    out = ck.launch_unchecked(ck.MAX_THREADS_PER_BLOCK + 1)
    np.testing.assert_array_equal(out, np.arange(ck.MAX_THREADS_PER_BLOCK + 1))


@GPU_ONLY
def test_gpu_refuses_more_than_1024_threads():
    with pytest.raises(Exception, match="INVALID_VALUE"):
        ck.launch_unchecked(ck.MAX_THREADS_PER_BLOCK + 1)
