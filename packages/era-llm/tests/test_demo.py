import json
import random

from era_llm.demo import DemoConfig, build_tokenizer, make_problems, run_demo
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
    )
    summary = run_demo(cfg)
    assert (tmp_path / "demo.png").stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert set(summary["eval"]) == {"sft", "grpo", "grpo-era"}
    for result in summary["eval"].values():
        assert 0.0 <= result["pass@1"] <= result["pass@2"] <= 1.0
