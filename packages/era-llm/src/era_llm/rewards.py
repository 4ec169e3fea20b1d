"""Verifiable rewards: a completion scores 1.0 when its final answer equals the gold answer.

Rewards are plain functions ``(completion, gold) -> float`` in the ``REWARDS`` registry;
``TrainConfig.reward`` sums weighted terms of it (``math-verify format:0.1``). Add an entry to
plug in another verifier.
"""

import math
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Literal

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

__all__ = [
    "ANSWER_FORMATS",
    "REWARDS",
    "AnswerFormat",
    "RewardFn",
    "answer_line",
    "format_reward",
    "last_boxed",
    "math_verify_reward",
    "normalise_answer",
    "parse_reward",
    "weighted_reward",
]

AnswerFormat = Literal["boxed", "answer-line"]
RewardFn = Callable[..., float]
"""``(completion, gold, answer_format="boxed") -> reward``."""

_INTEGER = re.compile(r"[+-]?\d+")
# A whole answer in e-notation (Minerva's golds: ``4.5e33``), which math-verify would read
# as 4.5 * e * 33.
_E_NOTATION = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?\d+)")
# A multiple-choice answer: ``\textbf{(B) } 12``, ``(B) 12``, ``(B)``.
_CHOICE = re.compile(r"(?:\\textbf\{\s*)?\(([A-E])\)\s*\}?\s*(.*)", re.DOTALL)
_LETTER = re.compile(r"(?:\\text(?:bf)?\{\s*)?\(?([A-E])\)?\s*\}?")
# A number followed by a unit in words: ``18 dollars``, ``5 \text{ cm}``.
_NUMBER_WITH_UNIT = re.compile(
    r"([+-]?\d[\d,]*(?:\.\d+)?)\s*(?:\\(?:text|mbox|mathrm)\{\s*([A-Za-z ]+)\}|([A-Za-z]{3,}(?: [A-Za-z]+)*))"
)
_MATH_WORDS = {"sqrt", "sin", "cos", "tan", "log", "exp", "cot", "sec", "csc", "arcsin"}
_ANSWER_LINE = re.compile(r"Answer\s*:(.*)")


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` in ``text`` (braces balanced), or ``None``."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index]
            depth -= 1
    return None


def answer_line(text: str) -> str | None:
    r"""What follows the last ``Answer:`` on its line (DAPO-Math-17k's format), or ``None``.

    A ``\boxed{}`` on that line gives its content.
    """
    lines = _ANSWER_LINE.findall(text)
    if not lines or not lines[-1].strip():
        return None
    answer = lines[-1].strip()
    return last_boxed(answer) if "\\boxed{" in answer else answer


ANSWER_FORMATS: dict[str, Callable[[str], str | None]] = {
    "boxed": last_boxed,
    "answer-line": answer_line,
}


def normalise_answer(text: str) -> str:
    r"""An answer as a reader would take it, before math-verify parses it.

    Surrounding ``$`` and a sentence's final period go (``5.`` is 5); a whole answer in
    e-notation becomes ``a \times 10^{b}``; a number followed by a unit in words
    (``18 dollars``) keeps the number.
    """
    text = text.strip().strip("$").strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    if match := _E_NOTATION.fullmatch(text):
        return f"{match[1]} \\times 10^{{{int(match[2])}}}"
    if (match := _NUMBER_WITH_UNIT.fullmatch(text)) and (match[3] or "") not in _MATH_WORDS:
        return match[1]
    return text


def _choice(text: str) -> tuple[str | None, str]:
    """``(letter, value)`` of a multiple-choice answer; ``(None, text)`` for any other."""
    if match := _CHOICE.fullmatch(text):
        return match[1], match[2].strip()
    return None, text


@lru_cache(maxsize=4096)
def _parse(answer: str) -> list:
    # Both sides are read the same way, as the content of a \boxed{}.
    return parse(
        f"\\boxed{{{answer}}}",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
    )


def _equivalent(answer: str, gold: str) -> bool:
    if _INTEGER.fullmatch(answer) and _INTEGER.fullmatch(gold):
        return int(answer) == int(gold)
    return bool(verify(_parse(gold), _parse(answer)))


@lru_cache(maxsize=65536)
def math_verify_reward(completion: str, gold: str, answer_format: AnswerFormat = "boxed") -> float:
    r"""1.0 when the completion's final answer is equivalent to ``gold``, else 0.0.

    The answer is the last ``\boxed{}`` (``answer_format="boxed"``) or the last
    ``Answer:`` line (``"answer-line"``, DAPO-Math-17k's format); an unmarked number in
    the reasoning does not count. Both sides are read as a reader would
    (``normalise_answer``: ``5.`` is 5, ``4.5e33`` is ``4.5 \times 10^{33}``), and a
    multiple-choice answer ``\textbf{(B) } 12`` matches the gold ``12`` or ``B``.
    Equivalence is math-verify's: numeric (``0.5 == \frac{1}{2}``, ``10\% == 0.1``),
    symbolic (``(x+1)^2 == x^2+2x+1``), sets, intervals and tuples; plain integers on both
    sides are compared directly.

    Args:
        completion: The model's response text.
        gold: A final answer, or a solution whose last ``\boxed{}`` holds it.
        answer_format: Where the completion's answer is: ``boxed`` or ``answer-line``.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(
            f"answer_format must be one of {sorted(ANSWER_FORMATS)}, got {answer_format!r}"
        )
    answer = ANSWER_FORMATS[answer_format](completion)
    gold_answer = last_boxed(gold) if "\\boxed{" in gold else gold
    if answer is None or gold_answer is None:
        return 0.0
    letter, value = _choice(normalise_answer(answer))
    gold_answer = normalise_answer(gold_answer)
    if letter is not None:
        gold_letter = _LETTER.fullmatch(gold_answer) or _CHOICE.fullmatch(gold_answer)
        if gold_letter:
            return float(gold_letter[1] == letter)
        if not value:
            return 0.0
        answer = normalise_answer(value)
    else:
        answer = value
    return float(_equivalent(answer, gold_answer))


def format_reward(completion: str, gold: str, answer_format: AnswerFormat = "boxed") -> float:
    """1.0 when the completion states a final answer where ``answer_format`` looks, right or wrong.

    The usual companion of a correctness reward with a small weight: it pays for answering in
    the form the grader reads (``--reward math-verify format:0.1``).
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(
            f"answer_format must be one of {sorted(ANSWER_FORMATS)}, got {answer_format!r}"
        )
    return float(ANSWER_FORMATS[answer_format](completion) is not None)


REWARDS: dict[str, RewardFn] = {"math-verify": math_verify_reward, "format": format_reward}


def parse_reward(spec: str) -> tuple[str, float]:
    """``"NAME[:WEIGHT]"`` as ``(name, weight)``; the weight defaults to 1.

    Raises:
        ValueError: An unknown name, or a weight that is not a finite non-zero number.
    """
    name, _, weight = spec.partition(":")
    if name not in REWARDS:
        raise ValueError(
            f"reward must be NAME[:WEIGHT] with NAME one of {sorted(REWARDS)}, got {spec!r}"
        )
    try:
        value = float(weight) if weight else 1.0
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value == 0.0:
        raise ValueError(f"reward {spec!r}: WEIGHT must be a finite non-zero number")
    return name, value


def weighted_reward(specs: Sequence[str], answer_format: AnswerFormat = "boxed") -> RewardFn:
    """The sum of the ``NAME[:WEIGHT]`` terms of ``specs``, as one ``(completion, gold) -> float``.

    Raises:
        ValueError: A term is malformed (:func:`parse_reward`), named twice, or none is given.
    """
    terms = [parse_reward(spec) for spec in specs]
    names = [name for name, _ in terms]
    if not terms or len(set(names)) < len(names):
        raise ValueError(f"reward must name one or more distinct functions, got {list(specs)}")

    def reward(completion: str, gold: str) -> float:
        # Looked up per call, so that a function registered later (a test's stub) is used.
        return sum(w * REWARDS[n](completion, gold, answer_format=answer_format) for n, w in terms)

    return reward
