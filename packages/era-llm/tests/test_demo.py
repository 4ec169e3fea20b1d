import json
import random

import pytest
import yaml

from era_llm.demo import ARMS, DemoConfig, build_tokenizer, make_problems, run_demo
from era_llm.policy import load_tokenizer


def test_tokenizer_survives_save_and_load(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    text = "12+34=\\boxed{46}"
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert len(tokenizer(text).input_ids) == len(text)
    assert (
        loaded.decode([*loaded(text).input_ids, loaded.eos_token_id], skip_special_tokens=True)
        == text
    )


def test_problems_are_distinct_and_exclude_held_out():
    rng = random.Random(0)
    test = make_problems(50, 2, rng)
    train = make_problems(200, 2, rng, exclude={p["question"] for p in test})
    questions = [p["question"] for p in test + train]
    assert len(set(questions)) == 250
    a, b = map(int, train[0]["question"][:-1].split("+"))
    assert train[0]["answer"] == str(a + b) and 10 <= a <= 99


def test_multiplication_problems_have_a_one_digit_multiplier():
    problems = make_problems(300, 3, random.Random(0), operation="multiply")
    assert len({p["question"] for p in problems}) == 300
    for problem in problems:
        a, b = map(int, problem["question"][:-1].split("*"))
        assert 100 <= a <= 999 and 2 <= b <= 9 and problem["answer"] == str(a * b)
    # 900 x 8 distinct problems exist; asking for more is refused.
    with pytest.raises(ValueError, match="count"):
        make_problems(7201, 3, random.Random(0), operation="multiply")


def test_demo_config_refuses_more_problems_than_exist():
    with pytest.raises(ValueError, match="train_problems"):
        DemoConfig(operation="multiply", digits=1, train_problems=80, eval_problems=10)


def test_tiny_demo_writes_plot_and_summary(tmp_path):
    cfg = DemoConfig(
        output_dir=str(tmp_path),
        digits=1,
        hidden_size=32,
        num_layers=1,
        sft_steps=20,
        rl_steps=2,
        prompts_per_step=4,
        num_generations=2,
        train_problems=50,
        eval_problems=10,
        eval_n=2,
        entropy_coef=0.05,
    )
    summary = run_demo(cfg)
    assert (tmp_path / "demo.png").stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert set(summary["eval"]) == {"sft", *ARMS}
    for result in summary["eval"].values():
        assert 0.0 <= result["pass@1"] <= result["pass@2"] <= 1.0
    # Every arm trained its own algorithm, the entropy bonus with the demo's coefficient.
    for algo in ARMS:
        run_config = yaml.safe_load((tmp_path / algo / "config.yaml").read_text())
        assert run_config["algo"] == algo and run_config["entropy_coef"] == 0.05
    page = (tmp_path / "summary.md").read_text()
    assert page.startswith("## era-llm\n") and "(demo.png)" in page
    for name in ("warm start", *ARMS):
        assert f"| {name} |" in page
