"""Triton kernels of the course, one operation per file (CONTRIBUTING.md, "The kernel file").

Each ``<op>_kernel.py`` holds the math and memory traffic in its docstring, a
plain PyTorch reference (``<op>_ref``, fp32 inside), the ``@triton.jit`` kernel
and the launcher ``<op>`` that checks its inputs. The package exports the
launchers and references under the operations' names:
``infer_lib.kernels.softmax(x)`` is the launcher, and
``infer_lib.kernels.softmax_kernel`` the module to read. Configurations,
shared-memory pruning and the tuned-config cache live in ``_tuning.py``; the
input checks in ``_checks.py``.

Without Triton (``device.HAS_TRITON`` False: macOS has no Triton wheels) the
kernel modules and ``_tuning`` cannot be imported, but this package can: it
exports the PyTorch references under the launchers' names (``_fallback.py``;
each says so once, with a ``TritonNotInstalledWarning``), and ``TRITON`` is
False. ``quantize_int8``, plain PyTorch in ``int8_matmul_kernel.py``, is the same
function either way. A chapter cell that needs Triton itself asks ``need_triton(what)``;
kernel source is shown with ``infer_lib.source.show``, which imports nothing.
"""

from .. import device as _device  # noqa: F401  (TRITON_INTERPRET before triton)
from ._fallback import TritonNotInstalledWarning

#: True when the launchers are the Triton kernels; False when Triton is not installed
#: and they run the PyTorch references.
TRITON: bool = _device.HAS_TRITON

if TRITON:
    from .add_rms_norm_kernel import add_rms_norm, add_rms_norm_ref
    from .decode_attention_kernel import decode_attention, decode_attention_ref
    from .flash_attention_kernel import flash_attention, flash_attention_ref
    from .int8_matmul_kernel import int8_matmul, int8_matmul_ref, quantize_int8
    from .matmul_kernel import matmul, matmul_ref
    from .matmul_splitk_kernel import matmul_splitk, matmul_splitk_ref
    from .paged_decode_attention_kernel import paged_decode_attention, paged_decode_attention_ref
    from .rms_norm_kernel import rms_norm, rms_norm_ref
    from .rope_cache_kernel import rope_cache, rope_cache_ref
    from .softmax_kernel import softmax, softmax_ref
    from .swiglu_kernel import swiglu, swiglu_ref
    from .vector_add_kernel import vector_add, vector_add_ref
else:
    from ._fallback import (add_rms_norm, add_rms_norm_ref, decode_attention,  # noqa: F401
                            decode_attention_ref, flash_attention, flash_attention_ref, int8_matmul,
                            int8_matmul_ref, matmul, matmul_ref, matmul_splitk, matmul_splitk_ref,
                            paged_decode_attention, paged_decode_attention_ref, quantize_int8, rms_norm,
                            rms_norm_ref, rope_cache, rope_cache_ref, softmax, softmax_ref, swiglu,
                            swiglu_ref, vector_add, vector_add_ref)


def need_triton(what: str) -> bool:
    """True where Triton is installed. Elsewhere print that ``what`` is skipped, and why, and
    return False — a chapter's guard for a cell that needs Triton itself::

        if kernels.need_triton("the shared memory of a tile configuration"):
            ...
    """
    if not TRITON:
        import textwrap

        print(textwrap.fill(f"Skipped without Triton: {what}. Triton is not installed here (there are "
                            "no Triton wheels for macOS); the rest of the chapter runs on the PyTorch "
                            "references. On Linux with an NVIDIA GPU, or in Colab, this cell runs.", 90))
    return TRITON


__all__ = ["TRITON", "TritonNotInstalledWarning", "add_rms_norm", "add_rms_norm_ref", "decode_attention",
           "decode_attention_ref", "flash_attention", "flash_attention_ref", "int8_matmul",
           "int8_matmul_ref", "matmul", "matmul_ref", "matmul_splitk", "matmul_splitk_ref", "need_triton",
           "paged_decode_attention", "paged_decode_attention_ref", "quantize_int8", "rms_norm",
           "rms_norm_ref", "rope_cache", "rope_cache_ref", "softmax", "softmax_ref", "swiglu", "swiglu_ref",
           "vector_add", "vector_add_ref"]
