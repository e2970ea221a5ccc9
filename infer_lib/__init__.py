"""infer_lib — the code of the course *Making transformer inference fast on GPUs*.

``device`` is imported first: on a machine without a CUDA GPU it switches Triton
to its interpreter before anything imports ``triton``, so the same kernels run
on CPU tensors.
"""

from . import device  # noqa: F401  (must come first: sets TRITON_INTERPRET)

__version__ = "0.1.0"

__all__ = ["device", "__version__"]
