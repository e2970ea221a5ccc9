import pytest
import torch

from infer_lib import exercises as ex


def test_not_done_yet_raises_not_implemented():
    with pytest.raises(NotImplementedError, match="replace the `...`"):
        ex.check_number(..., 5, name="E")
    with pytest.raises(NotImplementedError):
        ex.check_choice(..., "a", name="E", options=["a", "b"])

    def stub(x):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        ex.check_function(stub, lambda x: x, [(1.0,)], name="E")


def test_correct_answer_passes(capsys):
    assert ex.check_number(350.4, 350, name="E1", unit="GB", rel=0.01, explain="Well done.")
    assert "✅ E1: correct. Well done." in capsys.readouterr().out


@pytest.mark.parametrize("answer, hint", [
    (700, "factor of 2"),
    (0.35, "factor of 1000"),
    (2800, "factor of 8"),
    (376.0, "GiB"),
    (123, "too small by a factor of 0.351"),
])
def test_wrong_answers_get_specific_feedback(answer, hint):
    with pytest.raises(AssertionError, match=hint):
        ex.check_number(answer, 350, name="E", unit="GB")


def test_author_mistakes_come_first():
    with pytest.raises(AssertionError, match="forgot the 2 bytes"):
        ex.check_number(175, 350, name="E", mistakes=[(175, "forgot the 2 bytes per parameter")])


def test_integer_answers():
    with pytest.raises(AssertionError, match="round up"):
        ex.check_number(4, 4.375, name="E", integer=True, rel=0)
    with pytest.raises(AssertionError, match="whole number"):
        ex.check_number(4.375, 5, name="E", integer=True)
    assert ex.check_number(5, 5, name="E", integer=True, rel=0)


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
