"""infer_lib.pallas_kernels: the Pallas RMSNorm against its NumPy reference and the Triton
kernel file's PyTorch reference.

Without a GPU the kernel runs in Pallas' interpret mode, and every new shape compiles the
interpreter's loop (~0.1-0.4 s): sizes and shape counts stay small. Interpret mode starts
every float output as NaN (jax 0.10's ``pallas_call`` interpreter), so an element the kernel
forgets to write fails the comparison, as the ``poisoned_outputs`` fixture does for torch.
GPU-only behaviour is skipped with its reason.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings
import zlib

import numpy as np
import pytest
import torch

from conftest import TOLERANCES, assert_close_with_nans

if importlib.util.find_spec("jax") is None:
    pytest.skip("jax is not installed (pip install jax, or the extra infer-lib[pallas])",
                allow_module_level=True)

from infer_lib import pallas_kernels as pk  # noqa: E402  (sets XLA_PYTHON_CLIENT_PREALLOCATE first)
from infer_lib.kernels import rms_norm_ref as torch_rms_norm_ref  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

GPU_ONLY = pytest.mark.skipif(pk.INTERPRET,
                              reason="needs a GPU Pallas compiles for (compute capability 8.0+)")
DTYPES = [pytest.param(dt, id=jnp.dtype(dt).name) for dt in (jnp.float32, jnp.float16, jnp.bfloat16)]
TORCH_DTYPE = {jnp.dtype(jnp.float32): torch.float32, jnp.dtype(jnp.float16): torch.float16,
               jnp.dtype(jnp.bfloat16): torch.bfloat16}


@pytest.fixture
def rng(request):
    # fresh random inputs for every test, reproducible from the test's name
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def to_torch(a) -> torch.Tensor:
    """A NumPy or JAX array as a CPU tensor of the same dtype (bf16 through its bits)."""
    a = np.asarray(a)
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def inputs(rng, shape, dtype, scale=3.0):
    x = (scale * rng.standard_normal(shape)).astype(dtype)       # never zeros
    w = (1.0 + rng.random(shape[-1])).astype(dtype)
    return x, w


def check(out, x, w, eps, dtype, labels=None):
    """``out`` (the kernel's) against both references, NaN in exactly the same places."""
    assert isinstance(out, jax.Array) and out.shape == x.shape and out.dtype == jnp.dtype(dtype)
    atol, rtol = TOLERANCES[TORCH_DTYPE[jnp.dtype(dtype)]]
    got = to_torch(out)
    assert_close_with_nans(got, to_torch(pk.rms_norm_ref(x, w, eps)), atol, rtol, labels)
    assert_close_with_nans(got, torch_rms_norm_ref(to_torch(x), to_torch(w), eps), atol, rtol, labels)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


# -- where the kernels run ----------------------------------------------------------------------

def test_interpret_exactly_where_pallas_cannot_compile():
    no_gpu = jax.default_backend() != "gpu"
    assert pk.INTERPRET == (no_gpu or not pk._compiles_here()[0])
    if no_gpu:
        assert pk.INTERPRET
    assert ("interpret mode" in pk.describe()) == pk.INTERPRET
    assert f"jax {jax.__version__}" in pk.describe()


def test_jax_stays_out_of_infer_lib_and_leaves_gpu_memory_to_torch():
    # one fresh process: importing torch and jax takes seconds
    proc = _run("""
        import os, sys
        import infer_lib, infer_lib.kernels, infer_lib.device
        print("before:", sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib")))
        import numpy as np
        from infer_lib import pallas_kernels as pk
        print("preallocate:", os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"])
        out = pk.rms_norm(np.ones((2, 8), np.float32), np.ones(8, np.float32))
        import torch   # after jax: both in one process, as in a notebook
        t = torch.ones(3, device=infer_lib.device.DEVICE) * 2
        print(f"ok: {float(np.asarray(out).sum()):.3f} {float(t.sum()):.3f}")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "before: []" in proc.stdout
    assert "preallocate: false" in proc.stdout
    assert "ok: 16.000 6.000" in proc.stdout   # 16 ones over rms 1, and torch's


def test_without_jax_the_module_says_what_to_install():
    proc = _run("""
        import importlib.util, sys
        _real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, package=None: None if name == "jax" else _real(name, package)
        import infer_lib
        try:
            import infer_lib.pallas_kernels
        except ImportError as err:
            print("ImportError:", err)
        print("jax imported:", "jax" in sys.modules)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "ImportError:" in proc.stdout and "pip install jax" in proc.stdout
    assert "infer-lib[pallas]" in proc.stdout
    assert "jax imported: False" in proc.stdout


# -- against the references ---------------------------------------------------------------------

# 1 to 37 rows, widths from 1 to 4096 (odd, and powers of two), 0 to 3 leading dims
SHAPES = [(7,), (1, 1), (3, 7), (37, 100), (2, 3, 4096), (2, 1, 3, 33)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_references(rng, shape, dtype):
    x, w = inputs(rng, shape, dtype)
    check(pk.rms_norm(x, w, 1e-5), x, w, 1e-5, dtype)


def test_padding_and_no_padding_paths(rng):
    # (8, 64): whole power-of-two blocks, no copy; (3, 7): both dims padded; (6, 16) with
    # block_rows 4: rows only; (4, 12) with block_rows 2: columns only
    cases = {((8, 64), None): False, ((3, 7), None): True, ((6, 16), 4): True, ((4, 12), 2): True}
    for (shape, rows), padded in cases.items():
        config = pk.launch_config(shape, rows)
        assert config.padded == padded, (shape, rows, config)
        assert config.cols_padded & (config.cols_padded - 1) == 0 and config.cols_padded >= shape[-1]
        assert config.rows_padded % config.block_rows == 0 and config.rows_padded >= config.n_rows
        assert config.grid * config.block_rows == config.rows_padded
        x, w = inputs(rng, shape, jnp.float32)
        check(pk.rms_norm(x, w, block_rows=rows), x, w, 1e-6, jnp.float32)


@pytest.mark.parametrize("block_rows", [1, 2, 8, 64])
def test_explicit_block_rows(rng, block_rows):
    x, w = inputs(rng, (37, 33), jnp.bfloat16)
    out = pk.rms_norm(x, w, block_rows=block_rows)
    assert pk.launch_config(x.shape, block_rows).grid == -(-37 // block_rows)
    check(out, x, w, 1e-6, jnp.bfloat16)


def test_jax_arrays_in_jax_arrays_out(rng):
    x, w = inputs(rng, (5, 9), jnp.float16)
    out = pk.rms_norm(jnp.asarray(x), jnp.asarray(w))
    check(out, x, w, 1e-6, jnp.float16)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(pk.rms_norm(x, w)))   # NumPy in: the same


def test_eps_matters(rng):
    x, w = inputs(rng, (3, 16), jnp.float32, scale=1e-3)   # mean(x²) ~ 1e-6: eps counts
    small, large = pk.rms_norm(x, w, 1e-8), pk.rms_norm(x, w, 1e-4)
    check(small, x, w, 1e-8, jnp.float32)
    check(large, x, w, 1e-4, jnp.float32)
    assert not np.allclose(np.asarray(small), np.asarray(large))


def test_empty():
    for shape in ((0, 7), (2, 0, 5), (3, 0)):
        out = pk.rms_norm(np.ones(shape, np.float16), np.ones(shape[-1], np.float16))
        assert out.shape == shape and out.dtype == jnp.float16


# -- special values -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, block_rows", [((6, 33), None), ((8, 64), 2)], ids=["padded", "unpadded"])
def test_special_values_make_their_row_nan(rng, shape, dtype, block_rows):
    x, w = inputs(rng, shape, dtype)
    n = shape[-1]
    x[1, n // 2] = np.nan
    x[2, n - 1] = np.inf
    x[3, 0] = -np.inf
    # squares past fp32's range (fp16 cannot hold such a number): a row of zeros, not NaN
    big = 3e19 if dtype != jnp.float16 else 60000.0
    x[4, :2] = big
    labels = {1: "NaN", 2: "+inf", 3: "-inf", 4: "huge"}
    assert pk.launch_config(shape, block_rows).padded == (shape == (6, 33))
    out = pk.rms_norm(x, w, block_rows=block_rows)
    check(out, x, w, 1e-6, dtype, labels)
    got = np.asarray(out).astype(np.float32)
    assert np.isnan(got[1:4]).all()                        # whole rows NaN
    assert not np.isnan(got[[0, 4, 5]]).any()              # the other rows untouched
    if dtype != jnp.float16:
        assert (got[4] == 0).all()


def test_special_weights_reach_their_column(rng):
    x, w = inputs(rng, (4, 10), jnp.float32)
    w[3], w[7] = np.nan, np.inf
    out = pk.rms_norm(x, w)
    check(out, x, w, 1e-6, jnp.float32)
    got = np.asarray(out)
    assert np.isnan(got[:, 3]).all() and np.isinf(got[:, 7]).all()
    assert np.isfinite(np.delete(got, [3, 7], axis=1)).all()


# -- bad input ----------------------------------------------------------------------------------

X, W = np.ones((3, 7), np.float32), np.ones(7, np.float32)

BAD = [
    ((np.array(1.0, np.float32), np.ones(1, np.float32)), {}, ValueError, "x is 0-d"),
    ((X, np.ones(6, np.float32)), {}, ValueError, "weight has 6 entries but the last dimension of x has 7"),
    ((X, np.ones((1, 7), np.float32)), {}, ValueError, "weight must be 1-D"),
    ((X, W.astype(np.float16)), {}, TypeError, "x has dtype float32 but weight has dtype float16"),
    ((X.astype(np.float64), W.astype(np.float64)), {}, TypeError, "x has dtype float64; the kernel supports"),
    ((X.astype(np.int32), W), {}, TypeError, "x has dtype int32"),
    ((X, W.astype(np.float64)), {}, TypeError, "weight has dtype float64"),
    (([[1.0] * 7], W), {}, TypeError, "x must be a NumPy or JAX array, got list"),
    ((np.ones((1, 16385), np.float32), np.ones(16385, np.float32)), {}, ValueError,
     "wider than MAX_WIDTH=16384"),
    ((X, W), {"eps": 0.0}, ValueError, "eps must be a finite positive number"),
    ((X, W), {"eps": -1e-6}, ValueError, "eps must be a finite positive number"),
    ((X, W), {"eps": float("nan")}, ValueError, "eps must be a finite positive number"),
    ((X, W), {"eps": float("inf")}, ValueError, "eps must be a finite positive number"),
    ((X, W), {"eps": "1e-6"}, TypeError, "eps must be a number"),
    ((X, W), {"eps": np.ones(1, np.float32)}, TypeError, r"eps must be a number.*float\(eps\)"),
    ((X, W), {"block_rows": 3}, ValueError, "block_rows=3 must be a power of two"),
    ((X, W), {"block_rows": 0}, ValueError, "block_rows=0 must be a power of two"),
    ((X, W), {"block_rows": 2.0}, TypeError, "block_rows must be an int or None"),
    ((X, W), {"block_rows": True}, TypeError, "block_rows must be an int or None"),
    ((np.ones((2, 1000), np.float32), np.ones(1000, np.float32)), {"block_rows": 64}, ValueError,
     "block of 65536 entries, more than MAX_BLOCK_ELEMENTS=16384"),
    ((X, W), {"interpret": "yes"}, TypeError, "interpret must be True, False or None"),
]


@pytest.mark.parametrize("args, kwargs, error, message", BAD,
                         ids=[m.split(" ")[0] + "-" + str(i) for i, (_, _, _, m) in enumerate(BAD)])
def test_bad_input(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        pk.rms_norm(*args, **kwargs)


def test_torch_tensors_are_told_how_to_pass_them():
    with pytest.raises(TypeError, match=r"NumPy or JAX array, got Tensor.*jnp\.from_dlpack"):
        pk.rms_norm(torch.ones(3, 7), W)


@pytest.mark.skipif(not pk.INTERPRET, reason="on a GPU interpret=False is the compiled kernel")
def test_compiled_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match="interpret=False needs a GPU Pallas compiles for"):
        pk.rms_norm(X, W, interpret=False)


# -- on a GPU: the compiled kernel --------------------------------------------------------------

@GPU_ONLY
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 100), (3, 4096), (4096, 4096), (5, 16384), (2, 3, 1)], ids=str)
def test_compiled_matches_references_on_gpu(rng, shape, dtype):
    x, w = inputs(rng, shape, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)   # the launcher keeps jax 0.11's to itself
        out = pk.rms_norm(x, w, interpret=False)
    check(out, x, w, 1e-6, dtype)
