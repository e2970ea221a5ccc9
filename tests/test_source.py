"""``infer_lib.source``: the source of a definition, read from the package's files, equals
``inspect.getsource`` of the imported object (decorators included) — on the real kernel
files and the rest of the package. Without Triton: ``tests/test_without_triton.py``."""

import ast
import importlib
import inspect
import os
import pkgutil
import time
from importlib import resources

import pytest

import infer_lib
from infer_lib import device, source

NEEDS_TRITON = pytest.mark.skipif(not device.HAS_TRITON,
                                  reason="compares with inspect.getsource of the imported kernel modules")

KERNEL_FILES = sorted(e.name.removesuffix(".py") for e in resources.files("infer_lib").joinpath("kernels").iterdir()
                      if e.name.endswith("_kernel.py"))


def _plain(obj):
    """The Python function behind ``obj``: a ``@triton.jit`` kernel's ``.fn``."""
    fn = getattr(obj, "fn", None)
    return fn if inspect.isfunction(fn) else obj


def _definitions(module):
    """(name, object) of every function and class defined in ``module`` itself."""
    for name in source.names(module.__name__):
        obj = _plain(getattr(module, name, None))
        if ((inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__
                and obj.__name__ == name):
            yield name, obj


def test_kernel_files_are_found():
    assert {"vector_add_kernel", "softmax_kernel", "matmul_kernel", "flash_attention_kernel"} <= set(KERNEL_FILES)


@NEEDS_TRITON
@pytest.mark.parametrize("stem", KERNEL_FILES)
def test_kernel_file_definitions_equal_inspect(stem):
    module = importlib.import_module(f"infer_lib.kernels.{stem}")
    seen = dict(_definitions(module))
    op = stem.removesuffix("_kernel")
    assert op in seen and f"_{op}_kernel" in seen, sorted(seen)    # the launcher and the kernel
    for name, obj in seen.items():
        assert source.get(f"kernels.{stem}", name) == inspect.getsource(obj), name
        assert source.get(f"kernels.{stem}", name, comments=True) == (inspect.getcomments(obj) or "") + \
            inspect.getsource(obj), name


@NEEDS_TRITON
@pytest.mark.parametrize("stem", KERNEL_FILES)
def test_jit_kernels_come_with_their_decorator(stem):
    module = importlib.import_module(f"infer_lib.kernels.{stem}")
    # compiled or interpreted, a @triton.jit kernel wraps its Python function as .fn
    jitted = [name for name in source.names(f"kernels.{stem}")
              if _plain(getattr(module, name, None)) is not getattr(module, name, None)]
    assert jitted, f"{stem} has no @triton.jit kernel"
    for name in jitted:
        text = source.get(f"kernels.{stem}", name)
        assert text.startswith("@triton.jit") and f"\ndef {name}(" in text, text[:200]


def _package_modules():
    names = []
    for info in pkgutil.walk_packages(infer_lib.__path__, "infer_lib."):
        is_kernel = info.name.startswith("infer_lib.kernels.") and info.name != "infer_lib.kernels._fallback"
        if info.name.endswith("__main__") or (is_kernel and not device.HAS_TRITON):
            continue
        names.append(info.name)
    return names


#: files edited after this (by someone working beside the test run) no longer match their
#: imported code, whose line numbers inspect.getsource uses
_SESSION_START = time.time()


@pytest.mark.parametrize("name", _package_modules())
def test_every_definition_of_the_package_equals_inspect(name):
    module = importlib.import_module(name)
    for obj_name, obj in _definitions(module):
        got, expected = source.get(name, obj_name), inspect.getsource(obj)
        if got != expected and os.path.getmtime(module.__file__) > _SESSION_START:
            pytest.skip(f"{module.__file__} was edited during the test run")
        assert got == expected, (name, obj_name)


@NEEDS_TRITON
def test_ways_to_name_a_module_agree():
    from infer_lib.kernels import softmax_kernel

    expected = inspect.getsource(softmax_kernel._softmax_kernel.fn)
    for module in ("kernels.softmax_kernel", "infer_lib.kernels.softmax_kernel", "kernels/softmax_kernel.py",
                   "infer_lib/kernels/softmax_kernel.py", "kernels/softmax_kernel", softmax_kernel):
        assert source.get(module, "_softmax_kernel") == expected, module


def test_several_names_are_shown_in_order_with_a_blank_line_between():
    one = source.get("reference", "causal_mask")
    two = source.get("reference", "attention_ref")
    assert source.get("reference", "causal_mask", "attention_ref") == one + "\n" + two
    assert one.startswith("def causal_mask(") and one.endswith("\n") and not one.endswith("\n\n")


def test_show_prints_what_print_getsource_prints(capsys):
    from infer_lib.reference import attention_ref

    print(inspect.getsource(attention_ref))
    expected = capsys.readouterr().out
    source.show("reference", "attention_ref")
    assert capsys.readouterr().out == expected


def test_assignments_and_methods():
    text = resources.files("infer_lib").joinpath("kernels", "softmax_kernel.py").read_text(encoding="utf-8")
    line = next(ln for ln in text.splitlines(keepends=True) if ln.startswith("MAX_FUSED_BLOCK ="))
    assert source.get("kernels.softmax_kernel", "MAX_FUSED_BLOCK") == line
    # a method by Class.method; the class with its decorator
    tree = ast.parse(resources.files("infer_lib").joinpath("device.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.decorator_list)
    assert source.get("device", cls.name) == inspect.getsource(getattr(device, cls.name))
    assert source.get("device", cls.name).startswith("@dataclass")
    from infer_lib import hardware

    assert source.get("hardware", "GPUSpec.peak_tflops") == inspect.getsource(hardware.GPUSpec.peak_tflops)


def test_whole_file_without_names():
    path = resources.files("infer_lib").joinpath("reference.py")
    assert source.get("reference") == path.read_text(encoding="utf-8")
    assert source.get("infer_lib") == resources.files("infer_lib").joinpath("__init__.py").read_text(encoding="utf-8")
    assert source.get("kernels") == resources.files("infer_lib").joinpath("kernels", "__init__.py").read_text(
        encoding="utf-8")


def test_unknown_names_and_modules_are_refused_helpfully():
    with pytest.raises(LookupError, match=r"defines no 'no_such_kernel'; it defines .*_vector_add_kernel"):
        source.get("kernels.vector_add_kernel", "no_such_kernel")
    with pytest.raises(LookupError, match=r"defines no 'nope'"):
        source.get("device", "Profile.nope")
    with pytest.raises(FileNotFoundError, match=r"no module 'kernels.nope_kernel' in infer_lib"):
        source.get("kernels.nope_kernel", "x")
    with pytest.raises(TypeError, match="name a module"):
        source.get(42, "x")


def test_source_imports_nothing_it_shows():
    import sys

    before = set(sys.modules)
    source.get("kernels.flash_attention_kernel", "_flash_attention_kernel")
    source.get("experiments.attention_sweep", "tile_map")
    assert not {m for m in set(sys.modules) - before if m.startswith(("infer_lib", "triton"))}
