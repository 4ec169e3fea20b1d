"""Evaluation: ``n`` samples per problem, avg@n and unbiased pass@k per dataset."""

import json
import math
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from era_core.validation import check_range
from era_llm.config import help_field, save_config
from era_llm.data import DEFAULT_TEMPLATE, Example, check_template, encode_prompt, load_examples
from era_llm.distributed import init_distributed
from era_llm.errors import UsageError
from era_llm.policy import load_model, load_tokenizer
from era_llm.rewards import REWARDS, AnswerFormat, RewardFn
from era_llm.rollout import Rollout, RolloutConfig, Sampling, make_rollout

__all__ = ["EvalConfig", "evaluate", "pass_at_k", "powers_of_two", "run_eval", "summarize"]


@dataclass(kw_only=True)
class EvalConfig(RolloutConfig):
    """Sample ``n`` responses per problem and report avg@n and pass@k per dataset."""

    model: str = help_field(help="model directory or id (a training checkpoint works)")
    data: list[str] = help_field(help="one or more .jsonl / .json / .parquet files")  # noqa: RUF009
    n: int = help_field(16, "samples per problem")
    prompt_field: str | None = help_field(None, "question field (None: prompt, question, problem)")
    answer_field: str | None = help_field(
        None, "gold answer field (None: answer, final_answer, solution)"
    )
    prompt_template: str = help_field(DEFAULT_TEMPLATE, "prompt text; {prompt} is the question")
    chat_template: bool = help_field(
        True, "wrap prompts in the tokenizer's chat template if it has one"
    )
    max_problems: int | None = help_field(
        None, "evaluate only the first this many problems per file"
    )
    reward: Literal["math-verify"] = help_field(
        "math-verify", "answer checker (era_llm.rewards.REWARDS)"
    )
    answer_format: AnswerFormat = help_field(  # noqa: RUF009 (a dataclasses.field)
        "boxed",
        "where a response's answer is: boxed (its last \\boxed{}) or answer-line (its last "
        "'Answer:' line, DAPO-Math-17k's format)",
    )
    output_dir: str = help_field("runs/eval", "where per-problem JSONL and the summary go")
    seed: int = help_field(0, "sampling seed")
    device: str = help_field("auto", "auto, cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = help_field("auto", "bf16 autocast (auto: on CUDA)")

    def __post_init__(self) -> None:
        RolloutConfig.__post_init__(self)
        check_range("n", self.n, 1)
        check_range("seed", self.seed, 0)
        check_template(self.prompt_template)
        if self.max_problems is not None:
            check_range("max_problems", self.max_problems, 1)
        if not self.data:
            raise ValueError("data: name at least one dataset file")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct of ``n`` samples: ``1 - C(n-c, k) / C(n, k)``.

    Computed as a product so large ``n`` does not overflow (Chen et al. 2021).
    """
    check_range("k", k, 1, n)
    check_range("c", c, 0, n)
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def powers_of_two(n: int) -> list[int]:
    """``1, 2, 4, ...`` up to ``n``, plus ``n`` itself."""
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n]
    return ks if ks[-1] == n else [*ks, n]


def evaluate(
    rollout: Rollout,
    tokenizer: Any,
    examples: list[Example],
    prompts: list[list[int]],
    sampling: Sampling,
    reward_fn: RewardFn,
) -> list[dict[str, Any]]:
    """Sample and grade ``sampling.n`` responses per problem.

    Returns:
        One record per problem: ``prompt``, ``answer``, ``responses``, ``correct``
        (0/1 per response).
    """
    texts = tokenizer.batch_decode(rollout.generate(prompts, sampling), skip_special_tokens=True)
    records = []
    for i, example in enumerate(examples):
        responses = texts[i * sampling.n : (i + 1) * sampling.n]
        correct = [int(reward_fn(text, example.answer) > 0) for text in responses]
        records.append(
            {
                "prompt": example.prompt,
                "answer": example.answer,
                "responses": responses,
                "correct": correct,
            }
        )
    return records


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    """avg@n (mean accuracy over all samples) and pass@k for ``k`` in 1, 2, 4, ..., n."""
    n = len(records[0]["correct"])
    summary = {
        "problems": float(len(records)),
        f"avg@{n}": sum(sum(r["correct"]) for r in records) / (n * len(records)),
    }
    for k in powers_of_two(n):
        summary[f"pass@{k}"] = sum(pass_at_k(n, sum(r["correct"]), k) for r in records) / len(
            records
        )
    return summary


def _table(summaries: dict[str, dict[str, float]]) -> str:
    columns = list(next(iter(summaries.values())))
    lines = ["| dataset | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, summary in summaries.items():
        cells = [f"{int(v)}" if c == "problems" else f"{100 * v:.1f}" for c, v in summary.items()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_eval(cfg: EvalConfig) -> dict[str, dict[str, float]]:
    """Evaluate a model on every dataset of ``cfg.data``.

    Writes ``<output_dir>/<dataset>.jsonl`` (per problem), ``summary.json`` and
    ``summary.md`` (accuracies in percent), and the resolved ``config.yaml``.

    Returns:
        Per dataset: ``problems``, ``avg@n`` and ``pass@k`` (fractions).
    """
    dist = init_distributed(cfg.device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    # vLLM loads the weights itself; a transformers copy is only needed to sample with generate().
    model = load_model(cfg.model, dist.device).eval() if cfg.rollout == "hf" else None
    rollout = make_rollout(model, tokenizer, cfg.model, cfg, seed=cfg.seed)
    sampling = Sampling(cfg.n, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dist.device.type == "cuda")
    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"output_dir: cannot write to {str(out)!r} ({error.strerror or error})"
        ) from error
    save_config(cfg, out / "config.yaml")
    summaries = {}
    for path in cfg.data:
        examples = load_examples(path, cfg.prompt_field, cfg.answer_field)[: cfg.max_problems]
        prompts = [
            encode_prompt(tokenizer, e.prompt, cfg.prompt_template, cfg.chat_template)
            for e in examples
        ]
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16):
            reward_fn = partial(REWARDS[cfg.reward], answer_format=cfg.answer_format)
            records = evaluate(rollout, tokenizer, examples, prompts, sampling, reward_fn)
        name = Path(path).stem
        with open(out / f"{name}.jsonl", "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
        summaries[name] = summarize(records)
    (out / "summary.json").write_text(json.dumps(summaries, indent=2))
    (out / "summary.md").write_text(_table(summaries))
    print(_table(summaries), end="")
    return summaries
