r"""The grader's pass rate on the shared math sets' gold answers, each graded against itself.

For every gold answer of ``../shared/data/math/*.jsonl`` (a worked solution's last
``\boxed{}`` where the gold is a solution), the completion ``\boxed{<gold>}`` must score 1
(``as stored``), and so must the same value written another way where a rule applies:

- ``frac->decimal``: ``\frac{a}{b}`` (integers, terminating) as a decimal;
- ``decimal->frac``: a decimal as ``\frac{p}{q}``;
- ``e->times``: e-notation (``4.5e33``) as ``4.5 \times 10^{33}``.

Each rule is graded both ways: the re-rendered answer as the completion against the stored
gold, and (``... (as gold)``) the stored answer as the completion against the re-rendered
gold, which also checks ``\times 10^{b}`` -> e-notation and decimal -> ``\frac``.

Prints a table and writes ``benchmarks/results/bench_grader.json`` (with every miss).

    python packages/era-llm/benchmarks/bench_grader.py [--data ../shared/data/math]
"""

import argparse
import json
import re
from fractions import Fraction
from pathlib import Path

from era_llm.data import load_examples
from era_llm.rewards import last_boxed, math_verify_reward

RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = Path(__file__).parents[3] / ".." / "shared" / "data" / "math"

_FRAC = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")
_DECIMAL = re.compile(r"-?\d+\.\d+")
_E_NOTATION = re.compile(r"(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)")


def _terminates(q: int) -> bool:
    for p in (2, 5):
        while q % p == 0:
            q //= p
    return q == 1


def rerenderings(answer: str) -> dict[str, str]:
    """The same value written another way, by each rule that applies to ``answer``."""
    text = answer.strip()
    out = {}
    if (
        (m := _FRAC.fullmatch(text))
        and int(m[3])
        and _terminates(Fraction(int(m[2]), int(m[3])).denominator)
    ):
        value = Fraction(int(m[2]), int(m[3])) * (-1 if m[1] else 1)
        out["frac->decimal"] = format(float(value), ".12g")
    if _DECIMAL.fullmatch(text):
        value = Fraction(text)
        sign = "-" if value < 0 else ""
        out["decimal->frac"] = f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"
    if m := _E_NOTATION.fullmatch(text):
        out["e->times"] = f"{m[1]} \\times 10^{{{int(m[2])}}}"
    return out


def grade_file(path: Path) -> dict:
    """Pass counts per rendering, and the misses, for one dataset file."""
    counts: dict[str, list[int]] = {"as stored": [0, 0]}
    misses = []
    for example in load_examples(path):
        gold = example.answer
        final = last_boxed(gold) if "\\boxed{" in gold else gold
        if final is None:
            continue
        cases = [("as stored", final, gold)]
        for rule, text in rerenderings(final).items():
            cases += [(rule, text, gold), (f"{rule} (as gold)", final, text)]
        for rule, completion, reference in cases:
            score = math_verify_reward(f"\\boxed{{{completion}}}", reference)
            tally = counts.setdefault(rule, [0, 0])
            tally[0] += int(score == 1.0)
            tally[1] += 1
            if score != 1.0:
                misses.append({"rule": rule, "gold": reference, "completion": completion})
    return {"counts": counts, "misses": misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_grader.json")
    args = parser.parse_args()
    results = {path.stem: grade_file(path) for path in sorted(args.data.glob("*.jsonl"))}
    rules = ["as stored"]
    for rule in ("frac->decimal", "decimal->frac", "e->times"):
        rules += [rule, f"{rule} (as gold)"]
    print("| dataset | " + " | ".join(rules) + " |")
    print("|---" * (len(rules) + 1) + "|")
    totals = {rule: [0, 0] for rule in rules}
    for name, result in results.items():
        cells = []
        for rule in rules:
            passed, total = result["counts"].get(rule, [0, 0])
            totals[rule][0] += passed
            totals[rule][1] += total
            cells.append(f"{passed}/{total} ({100 * passed / total:.1f} %)" if total else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    cells = [f"{p}/{t} ({100 * p / t:.1f} %)" if t else "-" for p, t in totals.values()]
    print("| all | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"totals": totals, "files": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
