"""infer_lib on a laptop: without Triton (macOS has no Triton wheels) and without PyTorch.

Each case runs in a fresh Python process whose imports of ``triton`` (or ``torch``) fail,
as they do where the package is not installed: a meta-path finder refuses them before
anything is imported. Also here: the fallback references are the kernel files' own
references, letter for letter, and compute what the Triton launchers compute.
"""

import ast
import inspect
import os
import subprocess
import sys
import textwrap
import warnings
from importlib import resources

import pytest
import torch

from infer_lib import device, source

#: A prelude that makes ``import <name>`` and ``import <name>.<anything>`` fail as if
#: the package were not installed.
BLOCK = """
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == {name!r} or fullname.startswith({name!r} + "."):
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
        return None

sys.meta_path.insert(0, _Blocked())

# importlib.util.find_spec must answer None for it, as when it is not installed
# (torch's CUDA initialisation asks it so, and would otherwise see the finder raise).
import importlib.util
_real_find_spec = importlib.util.find_spec

def _find_spec(fullname, package=None):
    if fullname == {name!r} or fullname.startswith({name!r} + "."):
        return None
    return _real_find_spec(fullname, package)

importlib.util.find_spec = _find_spec
"""


def run_blocked(name: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which ``name`` cannot be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "INFER_LIB_PROFILE")}
    env["MPLBACKEND"] = "Agg"
    script = BLOCK.format(name=name) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


# ----------------------------------------------------------------------------
# Without Triton: one fresh process (importing torch takes seconds), one section per test
# ----------------------------------------------------------------------------

SECTIONS = {
    "blocker": """
        for name in ("triton", "triton.language"):
            try:
                __import__(name)
            except ImportError:
                print("blocked", name)
            else:
                raise AssertionError(f"{name} imported")
    """,
    "device": """
        import os, sys
        import infer_lib
        from infer_lib import device
        assert device.HAS_TRITON is False and device.INTERPRET is False, (device.HAS_TRITON, device.INTERPRET)
        assert "TRITON_INTERPRET" not in os.environ     # nothing to switch
        assert device.triton_version() is None
        print(device.describe())
        assert "triton" not in sys.modules
    """,
    "kernels": """
        import sys, warnings
        import torch
        import torch.nn.functional as F

        import infer_lib.kernels as kernels
        from infer_lib.kernels import TritonNotInstalledWarning

        assert kernels.TRITON is False
        torch.manual_seed(0)
        x, y = torch.randn(1000), torch.randn(1000)
        s = 30 * torch.randn(3, 5, 77)
        s[0, 1, 3] = float("nan"); s[1, 2] = float("-inf"); s[2, 0, 5] = float("inf")
        a, b = torch.randn(33, 47), torch.randn(47, 61)
        q = torch.randn(2, 4, 17, 16)
        k, v = torch.randn(2, 2, 17, 16), torch.randn(2, 2, 17, 16)
        k_rep, v_rep = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        x16 = torch.randn(64, dtype=torch.float16)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.testing.assert_close(kernels.vector_add(x, y), x + y)
            torch.testing.assert_close(kernels.vector_add(x16, x16), x16 + x16)     # fp32 inside, cast back
            assert kernels.vector_add(x16, x16).dtype == torch.float16
            got = kernels.softmax(s)
            torch.testing.assert_close(got, torch.softmax(s, dim=-1), equal_nan=True)
            assert torch.equal(got.isnan(), torch.softmax(s, dim=-1).isnan())
            torch.testing.assert_close(kernels.matmul(a, b), a @ b)
            torch.testing.assert_close(kernels.matmul_splitk(a[:4], b), a[:4] @ b)
            w_q, scales = kernels.quantize_int8(b)
            assert w_q.dtype == torch.int8 and bool(((b - w_q * scales).abs() <= scales / 2 * 1.0001).all())
            torch.testing.assert_close(kernels.int8_matmul(a, w_q, scales), a @ (w_q.float() * scales))
            for args, message in (((a, w_q.float(), scales), "it must be int8"),
                                  ((a, w_q[:5], scales), "must equal w_q.shape"),
                                  ((a, w_q, -scales), "is not a finite positive number")):
                try:
                    kernels.int8_matmul(*args)
                except (TypeError, ValueError) as err:
                    assert message in str(err), err
                else:
                    raise AssertionError(f"int8_matmul without Triton did not refuse: {message}")
            try:
                kernels.quantize_int8(torch.full((3, 2), float("nan")))
            except ValueError as err:
                assert "non-finite" in str(err)
            else:
                raise AssertionError("quantize_int8(NaN) without Triton did not refuse")
            for causal in (False, True):
                torch.testing.assert_close(kernels.flash_attention(q, k, v, causal=causal),
                                           F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=causal),
                                           atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(kernels.flash_attention(q, k, v, sm_scale=0.5),
                                       F.scaled_dot_product_attention(q, k_rep, v_rep, scale=0.5),
                                       atol=1e-5, rtol=1e-5)
            lens = torch.tensor([17, 5])
            torch.testing.assert_close(kernels.decode_attention(q[:, :, 0], k, v, lens),
                                       kernels.decode_attention_ref(q[:, :, 0], k, v, lens))
            xn, res, wn = 3 * torch.randn(4, 77), torch.randn(4, 77), 1 + torch.rand(77)
            xn[1, 5], xn[2, 7], res[3, 0] = float("nan"), float("inf"), float("-inf")
            got = kernels.rms_norm(xn, wn, 1e-5)
            # rows 1 and 2 hold NaN and +inf: NaN throughout, as the Triton kernel gives them
            assert got[1:3].isnan().all() and not got[[0, 3]].isnan().any()
            torch.testing.assert_close(got[[0, 3]], F.rms_norm(xn[[0, 3]], (77,), wn, 1e-5))
            h, got = kernels.add_rms_norm(xn, res, wn)
            assert torch.equal(h.isnan(), (xn + res).isnan())
            torch.testing.assert_close(h, xn + res, equal_nan=True, atol=0, rtol=0)
            assert got[1:].isnan().all() and not got[0].isnan().any()   # row 3 holds -inf
            torch.testing.assert_close(got[0], F.rms_norm((xn + res)[0], (77,), wn, 1e-6))
            h16, _ = kernels.add_rms_norm(xn.half(), res.half(), wn.half())
            assert h16.dtype == torch.float16 and torch.equal(h16.isnan(), (xn.half() + res.half()).isnan())
            try:
                kernels.rms_norm(xn, wn, 0.0)
            except ValueError as err:
                assert "eps must be a finite positive number" in str(err)
            else:
                raise AssertionError("rms_norm(eps=0) without Triton did not refuse")
            g, u = 3 * torch.randn(2, 5, 33), torch.randn(2, 5, 33)
            g[0, 0, :3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
            got = kernels.swiglu(g, u)
            torch.testing.assert_close(got, F.silu(g) * u, equal_nan=True)
            assert torch.equal(got.isnan(), (F.silu(g) * u).isnan())
            for name in ("vector_add", "softmax", "matmul", "flash_attention", "decode_attention",
                         "rms_norm", "add_rms_norm", "swiglu", "int8_matmul"):
                ref = getattr(kernels, name + "_ref")
                assert ref.__module__ == f"infer_lib.kernels.{name}_kernel", (name, ref.__module__)
            assert kernels.matmul_splitk_ref is kernels.matmul_ref
            assert kernels.quantize_int8.__module__ == "infer_lib.kernels.int8_matmul_kernel"

        notes = [str(w.message) for w in caught if issubclass(w.category, TritonNotInstalledWarning)]
        launchers = ("vector_add", "softmax", "matmul", "matmul_splitk", "flash_attention", "decode_attention",
                     "rms_norm", "add_rms_norm", "swiglu", "int8_matmul")
        for name in launchers:   # once each, however often it ran
            assert sum(f"infer_lib.kernels.{name} runs its PyTorch reference" in n for n in notes) == 1, notes
        assert len(notes) == len(launchers), notes
        assert all(w.filename == "<string>" for w in caught), [w.filename for w in caught]   # the caller's line

        try:
            kernels.matmul(a, b, config={"BLOCK_M": 16})
        except ValueError as err:
            assert "Triton is not installed" in str(err)
        else:
            raise AssertionError("matmul(config=...) without Triton did not refuse")

        assert kernels.need_triton("the tile configurations") is False
        assert "triton" not in sys.modules
    """,
    "imports": """
        import importlib, pkgutil, sys
        import infer_lib

        # every module of the package but the kernel files and _tuning, which need Triton
        needs_triton = [m.name for m in pkgutil.iter_modules(importlib.import_module("infer_lib.kernels").__path__,
                                                             "infer_lib.kernels.")
                        if m.name.endswith("_kernel") or m.name == "infer_lib.kernels._tuning"]
        names = [m.name for m in pkgutil.walk_packages(infer_lib.__path__, "infer_lib.")
                 if m.name not in needs_triton]
        for name in names:
            importlib.import_module(name)
            print("imported", name)

        # what needs Triton says so when imported
        assert "infer_lib.kernels._tuning" in needs_triton and len(needs_triton) > 1, needs_triton
        for name in needs_triton:
            try:
                importlib.import_module(name)
            except ImportError as err:
                assert "triton" in str(err), err
            else:
                raise AssertionError(f"{name} imported without triton?")
        assert "triton" not in sys.modules
    """,
    "source": """
        import sys
        from infer_lib import source
        source.show("kernels.vector_add_kernel", "_vector_add_kernel", "vector_add")
        assert "triton" not in sys.modules
    """,
}

RUNNER = """
import io, sys, textwrap, traceback
from contextlib import redirect_stdout
for _name, _code in SECTIONS.items():
    _buf = io.StringIO()
    try:
        with redirect_stdout(_buf):
            exec(textwrap.dedent(_code), {"__name__": "__main__"})
        _status = "ok"
    except BaseException:
        _status = "FAILED\\n" + traceback.format_exc()
    print(f"<<<{_name}>>>" + _buf.getvalue() + f"<<<{_name}: {_status}<<<end {_name}>>>", flush=True)
"""


@pytest.fixture(scope="module")
def without_triton() -> dict[str, str]:
    """Each section's output, in one process where triton cannot be imported; fails the
    test that asks for a section which failed (with its traceback)."""
    proc = run_blocked("triton", f"SECTIONS = {SECTIONS!r}\n" + RUNNER)
    results = {}
    for name in SECTIONS:
        head, tail = f"<<<{name}>>>", f"<<<{name}: "
        if head not in proc.stdout:
            results[name] = (False, f"section never ran; stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
            continue
        body = proc.stdout.split(head, 1)[1]
        out, status = body.split(tail, 1)
        status = status.split(f"<<<end {name}>>>", 1)[0]
        results[name] = (status == "ok", out if status == "ok" else f"{out}\n{status}\nstderr:\n{proc.stderr}")
    return results


def section(results: dict, name: str) -> str:
    ok, text = results[name]
    assert ok, f"section {name!r} failed without triton:\n{text}"
    return text


def test_blocker_really_blocks_triton(without_triton):
    out = section(without_triton, "blocker")
    assert out.split("\n")[:2] == ["blocked triton", "blocked triton.language"]


def test_device_and_describe_without_triton(without_triton):
    out = section(without_triton, "device")
    assert "Triton not installed: the Triton kernels are skipped; chapters run on the PyTorch references" in out
    assert f"torch {torch.__version__}" in out and "triton not installed" in out


def test_kernels_run_their_references_without_triton(without_triton):
    out = section(without_triton, "kernels")
    assert "Skipped without Triton: the tile configurations. Triton is not installed here" in out


def test_every_module_outside_the_kernels_imports_without_triton(without_triton):
    out = section(without_triton, "imports")
    for name in ("infer_lib.measure", "infer_lib.bench", "infer_lib.bench.__main__", "infer_lib.bench.matmul_cases",
                 "infer_lib.bench.attention_cases", "infer_lib.roofline", "infer_lib.plotting",
                 "infer_lib.source", "infer_lib.kernels._fallback", *(f"infer_lib.exercises.ch0{i}" for i in range(1, 5)),
                 "infer_lib.experiments.attention_sweep", "infer_lib.experiments.bottlenecks",
                 "infer_lib.experiments.ceilings"):
        assert f"imported {name}\n" in out


def test_source_shows_kernels_without_triton(without_triton):
    out = section(without_triton, "source")
    assert out.startswith("@triton.jit\ndef _vector_add_kernel(")
    assert "\ndef vector_add(x: torch.Tensor, y: torch.Tensor)" in out


def _unconditional_imports(tree: ast.Module):
    """The module's top-level import statements. A guarded one (``if device.HAS_TRITON:``)
    is left to the import test above, which runs it without Triton."""
    return (node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def test_only_kernel_files_import_triton_at_module_level():
    root = resources.files("infer_lib")
    offenders = []

    def walk(folder, rel):
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, rel + [entry.name])
            elif entry.name.endswith(".py"):
                path = "/".join(rel + [entry.name])
                allowed = rel == ["kernels"] and (entry.name.endswith("_kernel.py") or entry.name == "_tuning.py")
                tree = ast.parse(entry.read_text(encoding="utf-8"))
                for node in _unconditional_imports(tree):
                    mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                            else [node.module or ""] if node.level == 0 else [])
                    if any(m == "triton" or m.startswith("triton.") for m in mods) and not allowed:
                        offenders.append(f"{path}:{node.lineno}")

    walk(root, [])
    assert not offenders, ("only kernels/*_kernel.py and kernels/_tuning.py import triton at module "
                           "level; import it inside the functions that need it, or under "
                           "`if device.HAS_TRITON:`: " + ", ".join(offenders))


# ----------------------------------------------------------------------------
# The fallback is the references
# ----------------------------------------------------------------------------

KERNEL_OPS = ("vector_add", "softmax", "matmul", "matmul_splitk", "flash_attention", "decode_attention",
              "rms_norm", "add_rms_norm", "swiglu", "int8_matmul")


@pytest.mark.parametrize("op", KERNEL_OPS)
def test_fallback_references_are_the_kernel_files_references(op):
    # defined from the kernel file's own text (no copy to drift), and documented as there
    from infer_lib.kernels import _fallback
    ref = getattr(_fallback, f"{op}_ref")
    defined_in = "matmul" if op == "matmul_splitk" else op      # matmul_splitk_ref = matmul_ref
    assert ref.__code__.co_filename.endswith(f"{defined_in}_kernel.py"), ref.__code__.co_filename
    assert inspect.getsource(ref) == source.get(f"kernels.{defined_in}_kernel", f"{defined_in}_ref")


def test_fallback_quantize_int8_is_the_kernel_files():
    # plain PyTorch, the same function with or without Triton: compiled from the file's text
    from infer_lib.kernels import _fallback
    assert _fallback.quantize_int8.__code__.co_filename.endswith("int8_matmul_kernel.py")
    assert inspect.getsource(_fallback.quantize_int8) == source.get("kernels.int8_matmul_kernel", "quantize_int8")


@pytest.mark.skipif(not device.HAS_TRITON, reason="compares the fallback with the Triton launchers")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the interpreter's numpy, on -inf rows
def test_fallback_computes_what_the_launchers_compute():
    from infer_lib.kernels import _fallback
    import infer_lib.kernels as kernels

    torch.manual_seed(1)
    dev = device.DEVICE
    x, y = torch.randn(300, device=dev), torch.randn(300, device=dev)
    s = 20 * torch.randn(4, 33, device=dev)
    s[1] = float("-inf")
    s[2, 3] = float("nan")
    a, b = torch.randn(17, 40, device=dev), torch.randn(40, 24, device=dev)
    q, k, v = (torch.randn(1, 2, 20, 16, device=dev) for _ in range(3))
    w = 1 + torch.rand(33, device=dev)
    cases = {"vector_add": (x, y), "softmax": (s,), "matmul": (a, b), "matmul_splitk": (a[:4], b),
             "flash_attention": (q, k, v, True),
             "decode_attention": (q[:, :, 0], k, v, torch.tensor([20], device=dev)),
             "rms_norm": (s, w, 1e-5), "add_rms_norm": (s, 3 * torch.randn_like(s), w),
             "swiglu": (s, torch.randn_like(s)),
             "int8_matmul": (a, *_fallback.quantize_int8(b))}
    for op, args in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _fallback.TritonNotInstalledWarning)
            expected = getattr(_fallback, op)(*args)
        got = getattr(kernels, op)(*args)
        for g, e in zip(got, expected) if isinstance(got, tuple) else [(got, expected)]:
            torch.testing.assert_close(g, e, atol=1e-3, rtol=1e-3, equal_nan=True)


# ----------------------------------------------------------------------------
# Without PyTorch
# ----------------------------------------------------------------------------

def test_import_without_torch_says_what_to_install():
    proc = run_blocked("torch", """
        try:
            import infer_lib
        except ImportError as err:
            print(type(err).__name__)
            print(err)
        else:
            raise AssertionError("infer_lib imported without torch")
    """)
    out = _ok(proc)
    kind, message = out.split("\n", 1)
    assert kind == "ImportError"
    assert "infer_lib needs PyTorch" in message and "pip install torch" in message
    assert "macOS" in message and "Triton" in message


def test_import_with_torch_set_to_none_says_what_to_install():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import infer_lib\nexcept ImportError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout
    assert "infer_lib needs PyTorch: `pip install torch`" in out
