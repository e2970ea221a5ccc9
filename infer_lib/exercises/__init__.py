"""Exercises with automatic checks, the same mechanism in every chapter.

The convention (CONTRIBUTING.md, "Exercises", says it too; ``tools/notebooks.py check``
enforces it):

1. A markdown cell states the exercise: ``**Exercise 1.2** — ...``.
2. The reader's cell, tagged ``exercise`` (and ``coding`` when the reader writes a
   function): the answer is ``...`` (Ellipsis), or a function whose body raises
   ``NotImplementedError``, followed by the chapter's check, e.g.
   ``ch01.gpus_for_weights(answer)``. **An unattempted exercise never raises**:
   the check prints ``⏳ Exercise 1.2 — not attempted yet: ...`` and returns, so
   "Run all" in Jupyter or Colab goes on past it, and that line is what the
   website shows as the cell's output. No ``raises-exception`` or ``remove-output`` tag.
3. The solution cell right after it, tagged ``solution`` and ``hide-cell``, its
   first line ``#@title Solution (double-click to show)`` and its metadata
   ``"cellView": "form"`` (``make sync`` writes the last three): the worked answer
   and the *same* check. The website folds input and output under one toggle,
   Colab shows a collapsed form, ``make student`` removes it; CI runs it and the
   check must pass.

The checks of each chapter live in ``infer_lib/exercises/chNN.py``: they
compute the expected answer from the spec table or a measurement file, so the
reader's cell does not give the answer away and no number is typed twice.
They are built from the generic checks of this module, which

* print ``✅ <name>: correct. ...`` and return ``True`` for a right answer;
* print the "not attempted yet" line and return ``False`` while the answer is
  ``...`` (or ``None``), or the function is ``...`` or still raises
  ``NotImplementedError``. A check of several parts prints one line per part
  and checks the parts that are filled in;
* raise for a wrong answer (``AssertionError``; ``TypeError``/``ValueError`` for
  an answer of the wrong kind), so the slip is loud. Checks never just say
  "wrong": they compare with the expected value, recognise the usual slips (a
  factor of 2, 8, 1000 or 1024; an answer that is not rounded up) and say what
  to look at.
"""

from __future__ import annotations

import math
import numbers
import textwrap
from typing import Callable, Iterable, Sequence

import torch

from ..device import dtype_name


#: What every check prints, and nothing else does, while an exercise is not attempted.
NOT_ATTEMPTED = "not attempted yet"


def _not_attempted(name: str, what: str = "replace the `...` with your answer") -> bool:
    """Say that the exercise is still open and return False; never raise (see the module docstring)."""
    print(textwrap.fill(f"⏳ {name} — {NOT_ATTEMPTED}: {what} and run this cell again.", 100,
                        subsequent_indent="   ", break_long_words=False))
    return False


# Common slips, as ratios answer / expected, with what to look at.
_FACTOR_HINTS: tuple[tuple[float, str], ...] = (
    (2.0, "off by a factor of 2 — bytes per 16-bit value are 2; a multiply-add counts as 2 FLOPs"),
    (0.5, "off by a factor of 2 — bytes per 16-bit value are 2; a multiply-add counts as 2 FLOPs"),
    (8.0, "off by a factor of 8 — bits or bytes?"),
    (1 / 8, "off by a factor of 8 — bits or bytes?"),
    (1e3, "off by a factor of 1000 — check the unit prefixes (k, M, G, T)"),
    (1e-3, "off by a factor of 1000 — check the unit prefixes (k, M, G, T)"),
    (1e6, "off by a factor of a million — check the unit prefixes (M vs T, µs vs s)"),
    (1e-6, "off by a factor of a million — check the unit prefixes (M vs T, µs vs s)"),
    (1e9, "off by a factor of 1e9 — is the answer in the unit asked for?"),
    (1e-9, "off by a factor of 1e9 — is the answer in the unit asked for?"),
    (1.024**3, "off by 1024³/1000³ — GB (1e9 bytes) and GiB (2**30 bytes) differ by 7%"),
    (1 / 1.024**3, "off by 1024³/1000³ — GB (1e9 bytes) and GiB (2**30 bytes) differ by 7%"),
)


def _success(name: str, message: str) -> bool:
    print(f"✅ {name}: correct. {message}".rstrip())
    return True


def numbers_from(fn: Callable, cases: Sequence[tuple], *, name: str,
                 what: str = "a number") -> list[float] | None:
    """The reader's ``fn`` called on every case, each result a float; ``None`` (after the "not
    attempted yet" line) while ``fn`` still raises NotImplementedError. Raises with a message
    the reader can act on when a result is missing (no ``return``) or not a number."""
    __tracebackhide__ = True
    got = []
    for args in cases:
        try:
            value = fn(*args)
        except NotImplementedError:
            _not_attempted(name, "write the function (its body still raises NotImplementedError)")
            return None
        if value is None:
            raise AssertionError(f"{name}: the function returned None: does it end with `return`?")
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
        got.append(float(value))
    return got


def check_part(check, answer, *args, name: str, **kw) -> bool:
    """One part of a check of several: ``check`` (``check_number``, ``check_choice``) on
    ``answer``, except that an unanswered part prints a "not attempted yet" line that names
    the part and stays within 100 characters."""
    __tracebackhide__ = True
    if answer is ... or answer is None:
        return _not_attempted(name, "replace its `...`")
    return check(answer, *args, name=name, **kw)


def whole_sequences(answer, name: str) -> int:
    """``answer`` as an int when it is a whole number of sequences (a one-element tensor
    too); TypeError for a non-number, AssertionError for a fraction (a sequence's cache fits
    whole or not at all)."""
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        raise TypeError(f"{name}: expected a whole number of sequences, got "
                        f"{type(answer).__name__} {answer!r}")
    if not (math.isfinite(answer) and answer == int(answer)):
        raise AssertionError(f"{name}: expected a whole number of sequences, got {answer!r}: "
                             "a sequence's cache fits whole or not at all")
    return int(answer)


def check_number(answer, expected: float, *, name: str, unit: str = "", rel: float = 0.02,
                 integer: bool = False, rounding: str | None = "up",
                 mistakes: Iterable[tuple[float, str]] = (), explain: str = "") -> bool:
    """Check a numeric answer against ``expected`` within relative tolerance ``rel``.

    ``integer=True`` asks for a whole number, and ``rounding`` says how a count is reached:
    ``"up"`` for what is needed (GPUs, blocks: part of one is a whole one), ``"down"`` for what
    fits (sequences in a memory budget), ``None`` for a count with no division in it (slots,
    padding tokens); the hints for fractional and off-by-one answers follow it.
    ``mistakes`` lists (value, hint) pairs for wrong answers the author expects,
    matched before the generic factor hints. ``explain`` is printed on success.
    """
    __tracebackhide__ = True  # IPython and pytest show the reader's cell, not this frame
    if answer is ... or answer is None:
        return _not_attempted(name)
    if rounding not in ("up", "down", None):
        raise ValueError(f"check_number: rounding must be 'up', 'down' or None, got {rounding!r}")
    if isinstance(answer, torch.Tensor):
        answer = answer.item()
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(answer).__name__} {answer!r}")
    # numpy's and other libraries' numbers (np.int64 from np.sum, ...) as Python's own
    answer = int(answer) if isinstance(answer, numbers.Integral) else float(answer)
    if not math.isfinite(answer):
        raise AssertionError(f"{name}: the answer is {answer}; expected a finite number")
    u = f" {unit}" if unit else ""
    if integer and float(answer) != int(answer):
        how = {"up": "part of one is still a whole one: round up with math.ceil",
               "down": "only whole ones fit: round down with math.floor (or //)",
               None: "it is a count"}[rounding]
        raise AssertionError(f"{name}: expected a whole number, got {answer}; {how}.")
    if math.isclose(answer, expected, rel_tol=rel, abs_tol=1e-12):
        return _success(name, explain)
    for value, hint in mistakes:
        if math.isclose(answer, value, rel_tol=rel, abs_tol=1e-12):
            raise AssertionError(f"{name}: {answer:g}{u} is not right — {hint}")
    if integer and rounding == "up":
        if math.isclose(answer, math.floor(expected), rel_tol=0) and expected != math.floor(expected):
            raise AssertionError(f"{name}: {answer:g} rounds down; part of the work would not fit — round up.")
        if answer == math.ceil(expected) - 1:
            raise AssertionError(f"{name}: {answer:g} is one short — round up, not down.")
    if integer and rounding == "down" and answer == math.floor(expected) + 1:
        raise AssertionError(f"{name}: {answer:g} is one too many — only whole ones fit: round down.")
    if expected != 0 and answer != 0:
        ratio = answer / expected
        for factor, hint in _FACTOR_HINTS:
            if "GiB" in hint and "B" not in unit:     # bytes only: not for counts or ratios
                continue
            if factor in (2.0, 0.5) and integer and rounding is None:   # a plain count: no bytes or FLOPs
                hint = "off by a factor of 2 — is something counted twice, or only half of it?"
            if math.isclose(ratio, factor, rel_tol=max(rel, 0.02)):
                end = "" if hint.endswith("?") else "."
                raise AssertionError(f"{name}: {answer:g}{u} is {hint}{end}")
        direction = "too large" if ratio > 1 else "too small"
        # How far off, in coarse bands only: the exact ratio would give the answer away.
        spread = max(ratio, 1 / ratio) if ratio > 0 else math.inf
        band = ("close, but outside the tolerance" if spread < 1.1 else
                "off by less than a factor of 2" if spread < 2 else
                "off by less than a factor of 10" if spread < 10 else "off by more than a factor of 10")
        recheck = "Recheck each factor of the formula and its units." if unit else \
            "Recheck each factor of the formula."
        raise AssertionError(f"{name}: {answer:g}{u} is {direction} — {band} (tolerance ±{rel:.0%}). "
                             + recheck)
    raise AssertionError(f"{name}: got {answer:g}{u}, which is not within ±{rel:.0%} of the expected value.")


def check_choice(answer, expected, *, name: str, options: Sequence, why: dict | None = None,
                 explain: str = "") -> bool:
    """Check a multiple-choice answer; ``why`` maps each wrong option to the reason it is wrong."""
    __tracebackhide__ = True
    if answer is ... or answer is None:
        return _not_attempted(name)
    if answer not in options:
        raise ValueError(f"{name}: {answer!r} is not one of the options {list(options)}")
    if answer == expected:
        return _success(name, explain)
    reason = (why or {}).get(answer, "")
    raise AssertionError(f"{name}: {answer!r} is not right. {reason}".rstrip())


def check_function(fn: Callable, reference: Callable, cases: Sequence[tuple], *, name: str,
                   atol: float = 1e-6, rtol: float = 1e-5, explain: str = "") -> bool:
    """Check a function the reader wrote against ``reference`` on each tuple of arguments in ``cases``.

    ``fn`` still ``...``, or a function that still raises ``NotImplementedError``, counts as not
    attempted yet (a line is printed, nothing raised); any other exception of ``fn`` propagates.
    """
    __tracebackhide__ = True
    stub = "write the function (its body still raises NotImplementedError)"
    if fn is ... or fn is None:
        return _not_attempted(name, stub)
    for args in cases:
        try:
            got = fn(*args)
        except NotImplementedError:
            return _not_attempted(name, stub)
        want = reference(*args)
        shown = ", ".join(_short(a) for a in args)
        if got is None and want is not None:
            raise AssertionError(f"{name}({shown}) returned None: does the function end with `return`?")
        if isinstance(want, torch.Tensor):
            if not isinstance(got, torch.Tensor):
                raise AssertionError(f"{name}({shown}): expected a tensor, got {type(got).__name__}")
            if got.shape != want.shape:
                raise AssertionError(f"{name}({shown}): shape {tuple(got.shape)}, expected {tuple(want.shape)}")
            try:
                torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)
            except AssertionError as err:
                raise AssertionError(f"{name}({shown}): values differ from the reference.\n{err}") from None
        else:
            if not math.isclose(float(got), float(want), rel_tol=rtol, abs_tol=atol):
                raise AssertionError(f"{name}({shown}) returned {got!r}, expected {want!r}")
    return _success(name, explain)


def wrap_explanation(name: str, text: str) -> str:
    """``text`` wrapped so that the success line ``✅ <name>: correct. <text>`` keeps within 100
    characters a line (the chapters' checks print their explanation this way)."""
    lead = f"✅ {name}: correct. "
    return textwrap.fill(lead + text, 100, subsequent_indent="  ")[len(lead):]


def merge_slips(slips, want) -> list[tuple[float, str]]:
    """``slips`` (value, hint) without the right answer ``want``, the hints of slips that land on
    the same value joined (several slips can give one wrong count)."""
    by_value: dict[float, list[str]] = {}
    for value, hint in slips:
        if value != want:
            by_value.setdefault(value, [])
            if hint not in by_value[value]:
                by_value[value].append(hint)
    return [(v, "; or ".join(h)) for v, h in by_value.items()]


def _short(a) -> str:
    if isinstance(a, torch.Tensor):
        return f"tensor{tuple(a.shape)}:{dtype_name(a.dtype)}"
    return repr(a)
