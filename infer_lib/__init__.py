"""infer_lib — the code of the course *Making transformer inference fast on GPUs*.

``device`` is imported first: on a machine without a CUDA GPU it switches Triton
to its interpreter before anything imports ``triton``, so the same kernels run
on CPU tensors. Where Triton is not installed at all (macOS has no Triton
wheels), ``infer_lib.kernels`` runs the PyTorch references instead
(``device.HAS_TRITON``, ``infer_lib.kernels.TRITON``). PyTorch itself is
required: torch and triton are deliberately not dependencies of the package
(Colab and GPU machines ship their own builds), so say what to install.
"""

try:
    import torch as _torch  # noqa: F401  (checked here, before anything else needs it)
except ImportError as _err:  # ModuleNotFoundError included
    if getattr(_err, "name", None) == "torch":
        raise ImportError(
            "infer_lib needs PyTorch: `pip install torch` (on Linux with CUDA it brings Triton; "
            "on macOS there is no Triton and the chapters run on the PyTorch references). "
            "Then restart the Python kernel and import infer_lib again."
        ) from _err
    raise ImportError(
        f"infer_lib needs PyTorch, and PyTorch is installed but `import torch` failed: {_err}. "
        "Reinstall it (`pip install --force-reinstall torch`) and restart the Python kernel."
    ) from _err

from . import device  # noqa: E402,F401  (must come first of infer_lib: sets TRITON_INTERPRET)

__version__ = "0.1.0"

__all__ = ["device", "__version__"]
