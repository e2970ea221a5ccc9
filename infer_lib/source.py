"""Show the source of infer_lib's functions and classes without importing their modules.

The chapters print a kernel next to the text that explains it. ``inspect.getsource``
needs the module imported, and a kernel module imports Triton, which a laptop
without Triton (macOS) does not have. This module reads the file from the installed
package instead (``importlib.resources``: a checkout, a wheel, Colab) and cuts the
named top-level definitions out of it with ``ast`` — the decorators included, so
``@triton.jit(do_not_specialize=["M"])`` is shown as in the file::

    from infer_lib import source
    source.show("kernels.softmax_kernel", "_softmax_kernel")            # the @triton.jit kernel
    source.show("kernels.softmax_kernel", "softmax")                    # the launcher
    source.show("kernels/vector_add_kernel.py", "_vector_add_kernel", "vector_add")

A definition's text is exactly what ``inspect.getsource`` gives for the imported
object (``inspect.getsource(module._softmax_kernel.fn)``); ``comments=True`` adds the
comment block right above it, which explains why (what ``inspect.getcomments`` finds).
A top-level assignment (``MAX_FUSED_BLOCK = ...``) is shown as its statement, and
``Class.method`` names a method.
"""

from __future__ import annotations

import ast
import types
from importlib import resources

_PACKAGE = "infer_lib"


def _relative_parts(module: str | types.ModuleType) -> list[str]:
    """``"kernels.softmax_kernel"``, ``"infer_lib.kernels.softmax_kernel"``,
    ``"kernels/softmax_kernel.py"`` or the module object → ``["kernels", "softmax_kernel.py"]``."""
    if isinstance(module, types.ModuleType):
        module = module.__name__
    if not isinstance(module, str) or not module.strip():
        raise TypeError(f"name a module of {_PACKAGE} (e.g. 'kernels.softmax_kernel' or "
                        f"'kernels/softmax_kernel.py'), got {module!r}")
    name = module.strip().replace("\\", "/")
    if name.endswith(".py") or "/" in name:                 # a path inside the package
        parts = [p for p in name.split("/") if p and p != "."]
        if parts and parts[0] == _PACKAGE:
            parts = parts[1:]
        if parts and not parts[-1].endswith(".py"):
            parts[-1] += ".py"
        return parts
    parts = name.split(".")                                 # a dotted module name
    if parts[0] == _PACKAGE:
        parts = parts[1:]
    return parts


def _read(module: str | types.ModuleType) -> tuple[str, str]:
    """The text of a module of the package, and how to name it in messages."""
    parts = _relative_parts(module)
    root = resources.files(_PACKAGE)
    if not parts:                                           # the package itself
        candidates = [["__init__.py"]]
    elif parts[-1].endswith(".py"):
        candidates = [parts]
    else:                                                   # a module, or a package's __init__
        candidates = [parts[:-1] + [parts[-1] + ".py"], parts + ["__init__.py"]]
    for cand in candidates:
        file = root.joinpath(*cand)
        if file.is_file():
            return file.read_text(encoding="utf-8"), "/".join([_PACKAGE, *cand])
    tried = ", ".join("/".join([_PACKAGE, *c]) for c in candidates)
    raise FileNotFoundError(f"no module {module!r} in {_PACKAGE}: looked for {tried}")


def _defined(node: ast.stmt) -> list[str]:
    """The names a top-level statement defines (functions, classes, simple assignments)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _find(body: list[ast.stmt], dotted: str, where: str) -> ast.stmt:
    node, scope = None, body
    for i, part in enumerate(dotted.split(".")):
        matches = [n for n in scope if part in _defined(n)]
        if not matches:
            known = sorted({name for n in scope for name in _defined(n)})
            inside = where if i == 0 else f"{where}: {'.'.join(dotted.split('.')[:i])}"
            raise LookupError(f"{inside} defines no {part!r}; it defines {', '.join(known)}")
        node = matches[-1]                                  # the last definition wins, as at import
        scope = node.body if isinstance(node, ast.ClassDef) else []
    return node


def _segment(lines: list[str], node: ast.stmt, comments: bool) -> str:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    if comments:
        # the block of comment lines right above (no blank line between), as inspect.getcomments
        indent = lines[first - 1][: len(lines[first - 1]) - len(lines[first - 1].lstrip())]
        while first > 1 and lines[first - 2].startswith(indent + "#"):
            first -= 1
    return "".join(lines[first - 1:node.end_lineno])


def get(module: str | types.ModuleType, *names: str, comments: bool = False) -> str:
    """The source of ``names`` (top-level functions, classes, assignments; ``Class.method``)
    in ``module`` of infer_lib, decorators included, one blank line between them; with no
    names, the whole file. ``module`` is a dotted name (``"kernels.softmax_kernel"``,
    with or without the leading ``infer_lib.``), a path inside the package
    (``"kernels/softmax_kernel.py"``) or an imported module. The module is read, never
    imported: no Triton needed."""
    text, where = _read(module)
    if not names:
        return text
    tree = ast.parse(text, filename=where)
    lines = text.splitlines(keepends=True)
    out = []
    for name in names:
        seg = _segment(lines, _find(tree.body, name, where), comments)
        out.append(seg if seg.endswith("\n") else seg + "\n")
    return "\n".join(out)


def show(module: str | types.ModuleType, *names: str, comments: bool = False) -> None:
    """Print ``get(module, *names, comments=comments)``: a chapter's way to show code
    (the same output as ``print(inspect.getsource(obj))``)."""
    print(get(module, *names, comments=comments))


def names(module: str | types.ModuleType) -> list[str]:
    """The top-level names ``module`` defines, in file order (what ``get`` can show)."""
    text, where = _read(module)
    seen: list[str] = []
    for node in ast.parse(text, filename=where).body:
        seen += [n for n in _defined(node) if n not in seen]
    return seen


__all__ = ["get", "names", "show"]
