"""Triton kernels of the course, one operation per file (see STYLE.md).

Each file holds the math and memory traffic in its docstring, a plain PyTorch
reference (``<op>_ref``, fp32 inside), the ``@triton.jit`` kernel and the
launcher that checks its inputs.
"""

from .. import device as _device  # noqa: F401  (TRITON_INTERPRET before triton)
from .matmul import matmul, matmul_ref
from .vector_add import vector_add, vector_add_ref

__all__ = ["matmul", "matmul_ref", "vector_add", "vector_add_ref"]
