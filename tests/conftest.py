"""Shared test helpers. ``infer_lib`` is imported first so that, without a GPU,
Triton's interpreter is switched on before anything imports triton."""

import infer_lib  # noqa: F401  (must precede any triton import)
import pytest
import torch

from infer_lib import device

#: (dtype, atol, rtol) for comparing a kernel with its fp32 reference.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}

DTYPES = [pytest.param(dt, id=str(dt).removeprefix("torch.")) for dt in device.kernel_dtypes()]


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
