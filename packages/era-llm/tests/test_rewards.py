import pytest

from era_llm.rewards import (
    answer_line,
    format_reward,
    last_boxed,
    math_verify_reward,
    weighted_reward,
)

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
    ("4.5e33", "\\boxed{4.5 \\times 10^{33}}"),  # Minerva's e-notation golds
    ("1.77e-6", "\\boxed{1.77 \\times 10^{-6}}"),
    ("1000", "\\boxed{1e3}"),
    ("12", "\\boxed{\\textbf{(B) } 12}"),  # multiple choice: the value
    ("B", "\\boxed{\\textbf{(B) } 12}"),  # ... or the letter
    ("\\textbf{(C)}", "\\boxed{(C) 7}"),
    ("5", "\\boxed{5.}"),  # a sentence's final period
    ("18", "\\boxed{18 dollars}"),
    ("18", "\\boxed{18 \\text{ dollars}}"),
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
    ("4.5e33", "\\boxed{4.5 \\times 10^{34}}"),
    ("12", "\\boxed{\\textbf{(B) } 13}"),
    ("A", "\\boxed{\\textbf{(B) } 12}"),
    ("10\\pi", "\\boxed{10}"),
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


def test_answer_line_format():
    completion = "x = 3, so y = 4.\nAnswer: 34"
    assert answer_line(completion) == "34"
    assert math_verify_reward(completion, "34", answer_format="answer-line") == 1.0
    # The boxed format ignores an Answer: line, and the answer-line format a lone box.
    assert math_verify_reward(completion, "34") == 0.0
    assert math_verify_reward("\\boxed{34}", "34", answer_format="answer-line") == 0.0
    assert answer_line("Answer: 1\nwait.\nAnswer: $\\frac{1}{2}$\n") == "$\\frac{1}{2}$"
    assert math_verify_reward("Answer: $\\frac{1}{2}$", "0.5", answer_format="answer-line") == 1.0
    assert answer_line("Answer: \\boxed{7}.") == "7"
    assert answer_line("no answer here") is None and answer_line("Answer:  ") is None
    with pytest.raises(ValueError, match="answer_format must be one of"):
        math_verify_reward("Answer: 1", "1", answer_format="last-line")


def test_format_reward_pays_for_an_answer_where_the_grader_reads_it():
    assert format_reward("so \\boxed{41}", "42") == 1.0  # wrong, but answered
    assert format_reward("it is 42", "42") == 0.0
    assert format_reward("Answer: 42", "42", answer_format="answer-line") == 1.0


def test_weighted_reward_sums_its_terms():
    reward = weighted_reward(["math-verify", "format:0.1"])
    assert reward("\\boxed{42}", "42") == pytest.approx(1.1)
    assert reward("\\boxed{41}", "42") == pytest.approx(0.1)
    assert reward("42", "42") == 0.0
    assert weighted_reward(["format:-0.5"])("no answer", "1") == 0.0


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["nope"], "NAME one of"),
        (["format:heavy"], "WEIGHT must be a finite non-zero number"),
        (["format:0"], "WEIGHT must be a finite non-zero number"),
        (["format:inf"], "WEIGHT must be a finite non-zero number"),
        (["format", "format:2"], "distinct"),
        ([], "one or more"),
    ],
)
def test_weighted_reward_refuses_bad_terms(specs, message):
    with pytest.raises(ValueError, match=message):
        weighted_reward(specs)
