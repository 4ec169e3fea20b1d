import pytest

from era_llm.rewards import last_boxed, math_verify_reward

EQUIVALENT = [
    ("\\frac{1}{2}", "so the answer is \\boxed{0.5}"),
    ("27.0", "\\boxed{27}"),  # AMC stores numbers as floats
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\frac{\\pi}{2})}"),
    ("x^2+2x+1", "\\boxed{(x+1)^2}"),
    ("10\\%", "\\boxed{0.1}"),
    ("\\sqrt{2}/2", "\\boxed{\\frac{\\sqrt{2}}{2}}"),
    ("007", "\\boxed{7}"),
    ("\\frac{3}{4}", "\\boxed{\\frac{6}{8}}"),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"),
    ("3\\sqrt{2}", "\\boxed{\\sqrt{18}}"),
    ("\\dfrac{1}{3}", "\\boxed{\\frac13}"),
    ("5", "\\boxed{x=5}"),
    ("\\text{B}", "\\boxed{B}"),
    ("1,000", "\\boxed{1000}"),
    ("The area is \\boxed{12}.", "\\boxed{12}"),  # a worked solution as the gold reference
]

NOT_EQUIVALENT = [
    ("204", "\\boxed{205}"),
    ("204", "the answer is 204"),  # unboxed answers do not count
    ("2", "first \\boxed{2}, no wait \\boxed{3}"),  # the last boxed answer counts
    ("-3", "\\boxed{3}"),
    ("[1,2]", "\\boxed{[1,2)}"),
    ("3\\sqrt{2}", "\\boxed{4.2426}"),
    ("1/3", "\\boxed{0.333}"),
    ("12", "\\boxed{12"),  # unclosed
    ("12", ""),
]


@pytest.mark.parametrize(("gold", "completion"), EQUIVALENT)
def test_equivalent_answers_score_one(gold, completion):
    assert math_verify_reward(completion, gold) == 1.0


@pytest.mark.parametrize(("gold", "completion"), NOT_EQUIVALENT)
def test_different_answers_score_zero(gold, completion):
    assert math_verify_reward(completion, gold) == 0.0


def test_last_boxed_balances_braces():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{\\frac{1}{2}") is None
