"""Shared test helpers. ``infer_lib`` is imported first so that, without a GPU,
Triton's interpreter is switched on before anything imports triton."""

import math
import os
import re

import infer_lib  # noqa: F401  (must precede any triton import)
import pytest
import torch

from infer_lib import device

if os.environ.get("PYTEST_XDIST_WORKER") and not device.HAS_GPU:
    # pytest -n N runs N workers on N cores: one thread each, or PyTorch's own
    # threads fight the other workers (SDPA and matmul references ran 10-40x slower).
    torch.set_num_threads(1)

#: (dtype, atol, rtol) for comparing a kernel with its fp32 reference.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}

DTYPES = [pytest.param(dt, id=str(dt).removeprefix("torch.")) for dt in device.kernel_dtypes()]

#: Tests of what only compiled kernels do (configurations, sizes the interpreter is too slow for).
GPU_ONLY = pytest.mark.skipif(not device.HAS_GPU, reason="compiled kernels only on a GPU")

#: Triton's interpreter runs kernels with numpy, which warns where a GPU silently
#: computes NaN or inf (inf - inf, 0 * inf, x / 0). Tests that feed NaN or ±inf on
#: purpose silence those warnings; everywhere else they stay visible.
IEEE_WARNINGS_EXPECTED = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning",
    "ignore:divide by zero encountered:RuntimeWarning",
    "ignore:overflow encountered:RuntimeWarning",
)


def assert_close_with_nans(out: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float,
                           labels: dict | None = None) -> None:
    """``out`` matches ``expected`` within (atol, rtol), with NaN in exactly the same places.

    ``labels`` maps a leading index (a row) to a name that failure messages print.
    """
    assert out.shape == expected.shape and out.dtype == expected.dtype
    wrong_nan = out.isnan() != expected.isnan()
    if wrong_nan.any():
        rows = sorted({int(i) for i in wrong_nan.reshape(wrong_nan.shape[0], -1).any(-1).nonzero().flatten()}
                      if out.dim() > 0 else {0})
        named = ", ".join(f"{r} ({(labels or {}).get(r, 'random')})" for r in rows[:12])
        raise AssertionError(f"NaN in different places than expected: {int(wrong_nan.sum())} elements "
                             f"in rows {named}")
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol, equal_nan=True)


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.rms_norm(x, (d,), weight, eps)`` with every row that holds NaN or ±inf set to NaN:
    what our kernels return (``rms_norm_kernel``'s docstring).

    PyTorch itself is not consistent there: for a row holding ±inf its CPU composite, and its
    CUDA kernel at some widths (4096, 16384, 70000 with torch 2.11 on an H200), put NaN only at
    the ±inf entry and 0 in the rest of the row; at other widths (9, 1025, 20001) the CUDA
    kernel makes the whole row NaN. Every finite row is F.rms_norm's, untouched.
    """
    out = torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    return out.masked_fill(~x.isfinite().all(dim=-1, keepdim=True), float("nan"))


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill an output with NaN so any element a kernel forgets to write fails the comparison."""
    return t.fill_(float("nan"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Launchers' output allocations (torch.empty, torch.empty_like) hand out NaN,
    so any element a kernel forgets to write fails the comparison."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return poison(t) if t.is_floating_point() else t

    def empty_like(*args, **kwargs):
        t = real_empty_like(*args, **kwargs)
        return poison(t) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)


@pytest.fixture
def tensors_on_the_gpu_if_any():
    """On a GPU machine every tensor a test makes is made there (the compiled Triton
    kernels refuse CPU tensors); on the CPU nothing changes."""
    if not device.HAS_GPU:
        yield
        return
    torch.set_default_device(device.DEVICE)
    yield
    torch.set_default_device(None)


# -- exercise checks: what a wrong answer is told ---------------------------------------------

def hint_of(check, *args) -> str:
    """The message ``check(*args)`` raises for a wrong answer (it must fail)."""
    with pytest.raises(AssertionError) as err:
        check(*args)
    return str(err.value)


def assert_not_attempted(capsys, match: str = "") -> None:
    """The check just printed its "not attempted" line (for an answer left as ``...``), one
    matching the regular expression ``match``."""
    from infer_lib.exercises import NOT_ATTEMPTED

    lines = [line for line in capsys.readouterr().out.splitlines() if NOT_ATTEMPTED in line]
    assert lines and any(re.search(match, line) for line in lines), lines


def hint_matching(check, *answers, match: str, error=AssertionError) -> str:
    """The message ``check(*answers)`` raises (``error``, matching ``match``): a wrong answer's hint."""
    with pytest.raises(error, match=match) as err:
        check(*answers)
    return str(err.value)


def gives_away(message: str, *values) -> bool:
    """Whether ``message`` spells out any of ``values`` (to 3 significant digits, or exactly)."""
    return any(f"{v:.3g}" in message or f"{v:g}" in message for v in values)


def numbers_in(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*\.?\d*", text)]


def assert_not_given(hint: str, *values) -> None:
    """No number in ``hint`` is within 3% of any of ``values`` (the answer, or what decides it)."""
    for x in numbers_in(hint):
        for v in values:
            assert not math.isclose(x, v, rel_tol=0.03), (x, v, hint)


# -- the row-norm kernels (rms_norm, add_rms_norm): which path a width takes ----------------

SEVERAL_ROWS, ONE_ROW, LOOPED = "several rows per tile", "one row per tile", "looped"


def norm_path(width: int, dtype: torch.dtype) -> str:
    """Which kernel (and tiling) the norm launchers run for rows of this width, as they decide."""
    from infer_lib.kernels import _tuning

    if width > _tuning.NORM_MAX_FUSED_BLOCK:
        return LOOPED
    rows = _tuning.norm_config(width, torch.finfo(dtype).bits // 8).kwargs["ROWS"]
    return ONE_ROW if rows == 1 else SEVERAL_ROWS


def norm_width(path: str, candidates=(213, 423, 1001, 5001, 16383, 20001)) -> int:
    """The first odd, non-power-of-two width that takes ``path`` in every dtype."""
    for w in candidates:
        if all(norm_path(w, dt) == path for dt in device.kernel_dtypes()):
            return w
    raise AssertionError(f"none of the widths {candidates} takes the {path} path in every dtype")


# -- the model tests: a model with random weights everywhere ----------------------------------

def random_model(config, backend: str = "sdpa", seed: int = 0):
    """``infer_lib.model.Transformer`` of a preset (its name) or a ``ModelConfig`` with fresh
    random weights, the norms' included (they start at 1, which would hide a missing norm)."""
    from infer_lib.model import PRESETS, Transformer

    torch.manual_seed(seed)
    config = PRESETS[config] if isinstance(config, str) else config
    model = Transformer(config, backend=backend).eval().requires_grad_(False)
    for n, p in model.named_parameters():
        if n.endswith("norm.weight"):
            p.normal_(1.0, 0.2)
    return model


# -- processes of a distributed group (tests of infer_lib.parallel and its runners) -----------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it): one per group, so
    that groups of different pytest-xdist workers never meet."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(fn, world_size: int, *args, deadline_s: float = 150) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes; raise the first
    one's error (the others are terminated), or fail after ``deadline_s``. No process outlives
    the call."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(fn, args=(world_size, *args), nprocs=world_size, join=False,
                                 start_method="spawn")
    start = time.monotonic()
    try:
        while not context.join(timeout=0.5):
            if time.monotonic() - start > deadline_s:
                pytest.fail(f"{world_size} processes still running after {deadline_s} s")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
            p.join()
