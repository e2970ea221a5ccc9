"""Benchmarks of every kernel against its PyTorch peers: ``python -m infer_lib.bench``."""

from .core import Case, run_case, validate  # noqa: F401
