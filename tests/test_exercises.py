import importlib
import inspect
import pkgutil

import pytest
import torch

import infer_lib.exercises
from infer_lib import exercises as ex


def _stub(*args):
    raise NotImplementedError


def test_not_attempted_prints_and_returns(capsys):
    """An unattempted exercise must not stop "Run all": the check prints one line and returns False."""
    assert ex.check_number(..., 5, name="Exercise 9.1") is False
    assert capsys.readouterr().out == ("⏳ Exercise 9.1 — not attempted yet: replace the `...` with your "
                                       "answer and run this cell again.\n")
    assert ex.check_choice(..., "a", name="E", options=["a", "b"]) is False
    assert ex.NOT_ATTEMPTED in capsys.readouterr().out
    for fn in (_stub, ...):
        assert ex.check_function(fn, lambda x: x, [(1.0,)], name="E") is False
        assert "E — not attempted yet: write the function" in capsys.readouterr().out


def test_a_half_written_function_counts_as_not_attempted(capsys):
    def partial(x):
        if x > 1:
            raise NotImplementedError
        return x

    assert ex.check_function(partial, lambda x: x, [(1.0,), (2.0,)], name="E") is False
    assert ex.NOT_ATTEMPTED in capsys.readouterr().out


def test_other_errors_of_the_reader_function_propagate():
    def broken(x):
        return x.nope

    with pytest.raises(AttributeError):
        ex.check_function(broken, lambda x: x, [(torch.ones(2),)], name="E")
    with pytest.raises(AssertionError, match="returned None: does the function end with `return`"):
        ex.check_function(lambda x: None, lambda x: x, [(torch.ones(2),)], name="E")


def _chapter_checks():
    """Every public check of every ``infer_lib/exercises/chNN.py``, found, not listed."""
    for info in pkgutil.iter_modules(infer_lib.exercises.__path__):
        if not info.name.startswith("ch"):
            continue
        module = importlib.import_module(f"infer_lib.exercises.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and not name.startswith("_"):
                yield pytest.param(fn, id=f"{info.name}.{name}")


CHAPTER_CHECKS = list(_chapter_checks())


def test_there_are_chapter_checks():
    assert len(CHAPTER_CHECKS) >= 3


@pytest.mark.parametrize("stub", [..., _stub], ids=["ellipsis", "NotImplementedError function"])
@pytest.mark.parametrize("check", CHAPTER_CHECKS)
def test_unattempted_chapter_exercises_do_not_raise(check, stub, capsys):
    """Each chapter check, given the stub answer of its exercise cell (``...`` for a value, a function
    raising NotImplementedError for code), prints "not attempted yet" for every part and returns."""
    params = [p for p in inspect.signature(check).parameters.values()
              if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if stub is _stub and "check_function" not in inspect.getsource(check):
        pytest.skip("not a coding exercise: its stub answer is `...`")
    check(*[stub] * len(params))
    lines = capsys.readouterr().out.strip().splitlines()
    messages = [line for line in lines if not line.startswith("   ")]   # not a wrapped continuation
    assert messages and all(ex.NOT_ATTEMPTED in line for line in messages), lines
    assert all(len(line) <= 100 for line in lines), lines                # they fit the page


def test_correct_answer_passes(capsys):
    assert ex.check_number(350.4, 350, name="E1", unit="GB", rel=0.01, explain="Well done.")
    assert "✅ E1: correct. Well done." in capsys.readouterr().out


@pytest.mark.parametrize("answer, hint", [
    (700, "factor of 2"),
    (0.35, "factor of 1000"),
    (2800, "factor of 8"),
    (376.0, "GiB"),
    (123, "too small — off by less than a factor of 10"),
    (340, "too small — close, but outside the tolerance"),
    (300, "too small — off by less than a factor of 2"),
])
def test_wrong_answers_get_specific_feedback(answer, hint):
    with pytest.raises(AssertionError, match=hint):
        ex.check_number(answer, 350, name="E", unit="GB")


def test_generic_feedback_never_gives_the_ratio():
    """answer ÷ ratio would be the expected value: only coarse bands are named."""
    for answer in (123, 330, 5000, 1e-3):
        with pytest.raises(AssertionError) as err:
            ex.check_number(answer, 350, name="E", unit="GB")
        assert "350" not in str(err.value) and "0.351" not in str(err.value)


def test_author_mistakes_come_first():
    with pytest.raises(AssertionError, match="forgot the 2 bytes"):
        ex.check_number(175, 350, name="E", mistakes=[(175, "forgot the 2 bytes per parameter")])


def test_integer_answers():
    with pytest.raises(AssertionError, match="round up"):
        ex.check_number(4, 4.375, name="E", integer=True, rel=0)
    with pytest.raises(AssertionError, match="whole number"):
        ex.check_number(4.375, 5, name="E", integer=True)
    assert ex.check_number(5, 5, name="E", integer=True, rel=0)


def test_counts_that_fit_round_down():
    with pytest.raises(AssertionError, match="one too many"):
        ex.check_number(131, 130, name="E", integer=True, rel=0, rounding="down")
    with pytest.raises(AssertionError, match="round down"):
        ex.check_number(130.08, 130, name="E", integer=True, rel=0, rounding="down")


def test_plain_counts_get_no_rounding_or_byte_hints():
    with pytest.raises(AssertionError, match="counted twice") as err:
        ex.check_number(246, 123, name="E", integer=True, rel=0, rounding=None)
    assert "bytes" not in str(err.value)
    with pytest.raises(AssertionError, match="it is a count"):
        ex.check_number(39.9, 40, name="E", integer=True, rel=0, rounding=None)
    with pytest.raises(AssertionError) as err:
        ex.check_number(122, 123, name="E", integer=True, rel=0, rounding=None)
    assert "round" not in str(err.value)
    with pytest.raises(ValueError, match="rounding"):
        ex.check_number(1, 1, name="E", rounding="sideways")


def test_numpy_numbers_are_numbers():
    np = pytest.importorskip("numpy")
    assert ex.check_number(np.int64(5), 5, name="E", integer=True, rel=0)
    assert ex.check_number(np.float64(2.5), 2.5, name="E")


def test_type_errors():
    with pytest.raises(TypeError, match="expected a number, got str"):
        ex.check_number("5", 5, name="E")
    with pytest.raises(ValueError, match="not one of the options"):
        ex.check_choice("c", "a", name="E", options=["a", "b"])


def test_choice_feedback():
    with pytest.raises(AssertionError, match="memory-bound"):
        ex.check_choice("compute", "memory", name="E", options=["compute", "memory"],
                        why={"compute": "at batch 1 the op is memory-bound"})


def test_function_check_reports_the_failing_case():
    ok = ex.check_function(lambda x: x * 2, lambda x: x * 2, [(torch.ones(3),)], name="E")
    assert ok
    with pytest.raises(AssertionError, match=r"E\(tensor\(3,\):float32\): values differ"):
        ex.check_function(lambda x: x * 3, lambda x: x * 2, [(torch.ones(3),)], name="E")


def test_unitless_answers_get_no_unit_hints():
    with pytest.raises(AssertionError) as err:
        ex.check_number(2.3, 2.1, name="E")                 # 1.095×: GiB would fit a byte count
    assert "GiB" not in str(err.value) and "units" not in str(err.value)
    with pytest.raises(AssertionError, match="GiB"):
        ex.check_number(376.0, 350, name="E", unit="GB")
