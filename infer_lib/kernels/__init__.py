"""Triton kernels of the course, one operation per file (CONTRIBUTING.md, "The kernel file").

Each ``<op>_kernel.py`` holds the math and memory traffic in its docstring, a
plain PyTorch reference (``<op>_ref``, fp32 inside), the ``@triton.jit`` kernel
and the launcher ``<op>`` that checks its inputs. The package exports the
launchers and references under the operations' names:
``infer_lib.kernels.softmax(x)`` is the launcher, and
``infer_lib.kernels.softmax_kernel`` the module to read. Configurations,
shared-memory pruning and the tuned-config cache live in ``_tuning.py``; the
input checks in ``_checks.py``.
"""

from .. import device as _device  # noqa: F401  (TRITON_INTERPRET before triton)
from .flash_attention_kernel import flash_attention, flash_attention_ref
from .matmul_kernel import matmul, matmul_ref
from .matmul_splitk_kernel import matmul_splitk, matmul_splitk_ref
from .softmax_kernel import softmax, softmax_ref
from .vector_add_kernel import vector_add, vector_add_ref

__all__ = ["flash_attention", "flash_attention_ref", "matmul", "matmul_ref", "matmul_splitk", "matmul_splitk_ref", "softmax", "softmax_ref", "vector_add", "vector_add_ref"]
