"""Triton kernels of the course, one operation per file (see STYLE.md).

Each file holds the math and memory traffic in its docstring, a plain PyTorch
reference (``<op>_ref``, fp32 inside), the ``@triton.jit`` kernel and the
launcher that checks its inputs.
"""

from .. import device as _device  # noqa: F401  (TRITON_INTERPRET before triton)
from .flash_attention import flash_attention
from .matmul import matmul, matmul_ref
from .softmax import softmax, softmax_ref
from .vector_add import vector_add, vector_add_ref

__all__ = ["flash_attention", "matmul", "matmul_ref", "softmax", "softmax_ref", "vector_add", "vector_add_ref"]
