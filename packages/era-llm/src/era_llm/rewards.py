"""Verifiable rewards: a completion scores 1.0 when its final answer equals the gold answer.

Rewards are plain functions ``(completion, gold) -> float`` in the ``REWARDS`` registry,
selected by ``TrainConfig.reward``; add an entry to plug in another verifier.
"""

import re
from collections.abc import Callable
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

__all__ = ["REWARDS", "RewardFn", "last_boxed", "math_verify_reward"]

RewardFn = Callable[[str, str], float]

_INTEGER = re.compile(r"[+-]?\d+")


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


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    # A worked solution carries its answer in \boxed{}; a bare answer is read as LaTeX math.
    target = gold if "\\boxed" in gold else f"${gold}$"
    return parse(target, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()])


@lru_cache(maxsize=65536)
def math_verify_reward(completion: str, gold: str) -> float:
    r"""1.0 when the completion's last ``\boxed{}`` answer is equivalent to ``gold``, else 0.0.

    Equivalence is math-verify's: numeric (``0.5 == \frac{1}{2}``, ``10\% == 0.1``),
    symbolic (``(x+1)^2 == x^2+2x+1``), sets, intervals and tuples. Only a boxed answer
    counts (an unboxed number in the reasoning does not). Integer answers that both sides
    spell as plain integers are compared directly, skipping the symbolic parser.

    Args:
        completion: The model's response text.
        gold: A final answer, or a solution whose last ``\boxed{}`` holds it.
    """
    boxed = last_boxed(completion)
    if boxed is None:
        return 0.0
    gold_boxed = last_boxed(gold) if "\\boxed" in gold else gold
    if (
        gold_boxed is not None
        and _INTEGER.fullmatch(boxed.strip())
        and _INTEGER.fullmatch(gold_boxed.strip())
    ):
        return float(int(boxed) == int(gold_boxed))
    prediction = parse(
        f"\\boxed{{{boxed}}}",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
    )
    return float(verify(_parse_gold(gold), prediction))


REWARDS: dict[str, RewardFn] = {"math-verify": math_verify_reward}
