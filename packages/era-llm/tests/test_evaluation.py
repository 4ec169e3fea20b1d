import json
import math

import pytest

from era_llm.evaluation import pass_at_k, powers_of_two, summarize


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [(4, 1, 1, 0.25), (4, 1, 2, 0.5), (4, 0, 4, 0.0), (4, 4, 1, 1.0), (4, 2, 3, 1.0)],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_the_combinatorial_formula():
    for n in (1, 5, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_refuses_impossible_inputs():
    with pytest.raises(ValueError, match="k must be in"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c must be in"):
        pass_at_k(4, 5, 1)


def test_powers_of_two():
    assert powers_of_two(16) == [1, 2, 4, 8, 16]
    assert powers_of_two(6) == [1, 2, 4, 6]
    assert powers_of_two(1) == [1]


def test_summarize():
    records = [{"correct": [1, 0, 0, 0]}, {"correct": [1, 1, 1, 1]}]
    summary = summarize(records)
    assert summary["avg@4"] == pytest.approx(5 / 8)
    assert summary["pass@1"] == pytest.approx(5 / 8)
    assert summary["pass@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["pass@4"] == 1.0


def test_eval_cli_writes_per_problem_records_and_summary(tiny_model_dir, addition_data, tmp_path):
    from era_llm.cli import main

    out = tmp_path / "eval"
    main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(addition_data),
            "--n",
            "4",
            "--max-new-tokens",
            "6",
            "--max-problems",
            "5",
            "--prompt-template",
            "{prompt}",
            "--output-dir",
            str(out),
            "--device",
            "cpu",
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["add"]) == {"problems", "avg@4", "pass@1", "pass@2", "pass@4"}
    assert summary["add"]["problems"] == 5
    records = [json.loads(line) for line in (out / "add.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all(len(r["responses"]) == 4 for r in records)
    assert "| add |" in (out / "summary.md").read_text()
