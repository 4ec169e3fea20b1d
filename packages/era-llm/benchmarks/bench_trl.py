"""Training throughput on one tiny task: TRL's GRPOTrainer vs era-llm (GRPO and GRPO-ERA).

Same model (a ~1M-parameter Qwen2 built in code), tokenizer, data (two-digit addition),
reward (math-verify), batch (4 prompts x 8 completions per step), completion cap,
temperature 1, one optimiser step per batch, no KL, token-level loss normalisation
(TRL ``loss_type="dapo"``), CPU, one thread, all in one process. Each trainer runs
``--warmup`` and ``--warmup + --steps`` steps from scratch; the time difference divided by
``--steps`` is its per-step cost, so start-up and final saving cancel out.

Needs the benchmark-only extra: ``uv sync --package era-llm --extra trl``.

    python packages/era-llm/benchmarks/bench_trl.py [--steps 30]
"""

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _problems(count: int) -> list[dict[str, str]]:
    from era_llm.demo import make_problems

    return make_problems(count, 2, random.Random(0))


def _time_trl(
    model_dir: Path, data: list[dict[str, str]], steps: int, max_tokens: int, work: Path
) -> float:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from era_llm.policy import load_tokenizer
    from era_llm.rewards import math_verify_reward

    def reward(prompts, completions, answer, **kwargs):
        return [math_verify_reward(c, a) for c, a in zip(completions, answer, strict=True)]

    dataset = Dataset.from_list([{"prompt": p["question"], "answer": p["answer"]} for p in data])
    config = GRPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=32,
        num_generations=8,
        max_completion_length=max_tokens,
        max_steps=steps,
        learning_rate=1e-4,
        beta=0.0,
        loss_type="dapo",
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=load_tokenizer(str(model_dir)),
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def _time_ours(
    model_dir: Path, data_path: Path, steps: int, max_tokens: int, algo: str, work: Path
) -> float:
    from era_llm.trainer import TrainConfig, train

    cfg = TrainConfig(
        model=str(model_dir),
        data=str(data_path),
        output_dir=str(work / f"{algo}-{steps}"),
        algo=algo,
        max_steps=steps,
        prompts_per_step=4,
        num_generations=8,
        micro_batch_size=32,
        max_new_tokens=max_tokens,
        prompt_template="{prompt}",
        lr=1e-4,
        dynamic_sampling=False,
        aggregation="token-mean",
        device="cpu",
        save_every=10_000,
        resume=False,
    )
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per trainer")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    try:
        import trl
    except ImportError as error:
        raise SystemExit("bench_trl needs TRL: uv sync --package era-llm --extra trl") from error

    from era_llm.demo import build_model, build_tokenizer

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-trl-"))
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), hidden_size=128, num_layers=6, seed=0)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    data = _problems(2000)
    data_path = work / "train.jsonl"
    data_path.write_text("".join(json.dumps(p) + "\n" for p in data))

    runners = {
        "trl GRPOTrainer": lambda n: _time_trl(work / "model", data, n, args.max_new_tokens, work),
        "era-llm grpo": lambda n: _time_ours(
            work / "model", data_path, n, args.max_new_tokens, "grpo", work
        ),
        "era-llm grpo-era": lambda n: _time_ours(
            work / "model", data_path, n, args.max_new_tokens, "grpo-era", work
        ),
    }
    results = {}
    for name, run in runners.items():
        torch.manual_seed(0)
        short, long = run(args.warmup), run(args.warmup + args.steps)
        per_step = (long - short) / args.steps
        results[name] = {"s_per_step": per_step, "steps_per_s": 1.0 / per_step}
    trl_rate = results["trl GRPOTrainer"]["steps_per_s"]
    print(
        f"\n{parameters / 1e6:.2f}M-parameter Qwen2, 4 prompts x 8 completions of <= {args.max_new_tokens} tokens per step, "
        f"CPU, 1 thread, TRL {trl.__version__}"
    )
    print(f"{'trainer':<18} {'s/step':>8} {'steps/s':>8} {'vs TRL':>7}")
    for name, r in results.items():
        print(
            f"{name:<18} {r['s_per_step']:>8.4f} {r['steps_per_s']:>8.2f} {r['steps_per_s'] / trl_rate:>6.2f}x"
        )
    era_speedup = results["era-llm grpo-era"]["steps_per_s"] / trl_rate
    print(json.dumps({"era_speedup_vs_trl": era_speedup, "target_1_5x_met": era_speedup >= 1.5}))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_trl.json").write_text(
        json.dumps(
            {
                "trl_version": trl.__version__,
                "parameters": parameters,
                "steps": args.steps,
                "warmup": args.warmup,
                "max_new_tokens": args.max_new_tokens,
                "results": results,
                "era_speedup_vs_trl": era_speedup,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
