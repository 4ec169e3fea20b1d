r"""A laptop-sized entropy-collapse experiment: GRPO vs GRPO-ERA on synthetic arithmetic.

No download is needed: a character-level tokenizer and a tiny Qwen2-architecture model are
built in code, warm-started by supervised training on ``a+b=`` problems answered as
``\boxed{a+b}``, then trained from that same start with GRPO and with GRPO-ERA by the real
trainer (``era_llm.trainer.train``). The run directory gets both runs, their metrics, a plot
of token entropy and accuracy over steps with pass@k at the end (``demo.png``) and the
numbers (``summary.json``).
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from era_core.validation import check_range
from era_llm.config import help_field
from era_llm.data import Example
from era_llm.evaluation import evaluate, summarize
from era_llm.metrics import read_metrics
from era_llm.policy import TokenScorer, load_model, load_tokenizer
from era_llm.rewards import math_verify_reward
from era_llm.rollout import Sampling
from era_llm.rollout.hf import HFRollout
from era_llm.trainer import TrainConfig, collate, train

__all__ = [
    "DemoConfig",
    "build_model",
    "build_tokenizer",
    "make_problems",
    "run_demo",
    "supervised_warm_start",
]

# Everything the task writes: digits, operators and the letters of \boxed{}.
ALPHABET = "0123456789+-*=\\boxed{}"


@dataclass(kw_only=True)
class DemoConfig:
    """GRPO vs GRPO-ERA from one supervised start on synthetic arithmetic, on CPU in minutes."""

    output_dir: str = help_field("runs/demo", "run directory")
    seed: int = help_field(0, "seed of the model, the problems and both RL runs")
    digits: int = help_field(3, "digits per operand of the a+b problems")
    hidden_size: int = help_field(64, "model width")
    num_layers: int = help_field(2, "decoder layers")
    sft_steps: int = help_field(1000, "supervised warm-start steps (batch 64, 50 warm-up)")
    sft_lr: float = help_field(3e-3, "supervised learning rate")
    rl_steps: int = help_field(300, "RL steps per algorithm")
    rl_lr: float = help_field(3e-4, "RL learning rate")
    prompts_per_step: int = help_field(16, "prompts per RL step")
    num_generations: int = help_field(8, "responses per prompt")
    era_omega_low: float = help_field(
        0.6, "GRPO-ERA response-entropy floor (the paper's 0.45 is for a 150k-token vocabulary)"
    )
    train_problems: int = help_field(2000, "distinct training problems")
    eval_problems: int = help_field(200, "held-out problems for pass@k")
    eval_n: int = help_field(8, "samples per held-out problem")
    threads: int = help_field(1, "torch CPU threads (1 is fastest for a model this small)")

    @property
    def max_new_tokens(self) -> int:
        """Room for the boxed sum (7 + digits + 2 tokens) and EOS, plus slack."""
        return 4 + 2 * self.digits + 4

    def __post_init__(self) -> None:
        for name in (
            "digits",
            "hidden_size",
            "num_layers",
            "sft_steps",
            "rl_steps",
            "prompts_per_step",
            "train_problems",
            "eval_problems",
            "eval_n",
            "threads",
        ):
            check_range(name, getattr(self, name), 1)
        check_range("digits", self.digits, 1, 6)
        check_range(
            "train_problems",
            self.train_problems,
            1,
            _num_problems(self.digits) - self.eval_problems,
            why=f"{_num_problems(self.digits)} distinct problems exist with {self.digits} digits",
        )
        check_range("num_generations", self.num_generations, 2)


def build_tokenizer() -> Any:
    """A character-level ``PreTrainedTokenizerFast`` over ``ALPHABET`` plus pad/EOS/unknown."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for char in ALPHABET:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def build_model(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Any:
    """A randomly initialised Qwen2 causal LM (tied embeddings, 4 heads, 2 KV heads)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def _operand_range(digits: int) -> tuple[int, int]:
    return (10 ** (digits - 1) if digits > 1 else 0), 10**digits - 1


def _num_problems(digits: int) -> int:
    low, high = _operand_range(digits)
    return (high - low + 1) ** 2


def make_problems(
    count: int, digits: int, rng: random.Random, exclude: set[str] = frozenset()
) -> list[dict[str, str]]:
    """``count`` distinct ``{"question": "a+b=", "answer": "a+b"}`` problems not in ``exclude``."""
    check_range("count", count, 0, _num_problems(digits) - len(exclude))
    low, high = _operand_range(digits)
    seen, problems = set(exclude), []
    while len(problems) < count:
        a, b = rng.randint(low, high), rng.randint(low, high)
        question = f"{a}+{b}="
        if question not in seen:
            seen.add(question)
            problems.append({"question": question, "answer": str(a + b)})
    return problems


def supervised_warm_start(
    model: Any,
    tokenizer: Any,
    problems: list[dict[str, str]],
    steps: int,
    lr: float,
    batch_size: int = 64,
) -> list[float]:
    r"""Teach the answer format (``\boxed{sum}<eos>``) by maximum likelihood; returns the losses."""
    scorer = TokenScorer(model)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=lr, fused=True)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 50))
    model.train()
    losses = []
    for _ in range(steps):
        batch = random.choices(problems, k=batch_size)
        prompts = [tokenizer(p["question"]).input_ids for p in batch]
        targets = [
            [*tokenizer(f"\\boxed{{{p['answer']}}}").input_ids, tokenizer.eos_token_id]
            for p in batch
        ]
        ids, attention, mask, start = collate(
            prompts, targets, tokenizer.pad_token_id, torch.device("cpu")
        )
        logprobs, _, _ = scorer(ids, attention, start)
        loss = -(logprobs * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warmup.step()
        losses.append(loss.item())
    return losses


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _pass_at_k(model_dir: Path, test: list[dict[str, str]], cfg: DemoConfig) -> dict[str, float]:
    tokenizer, model = load_tokenizer(str(model_dir)), load_model(str(model_dir))
    rollout = HFRollout(
        model, tokenizer.pad_token_id, [tokenizer.eos_token_id], batch_size=len(test)
    )
    examples = [Example(p["question"], p["answer"]) for p in test]
    prompts = [tokenizer(e.prompt).input_ids for e in examples]
    torch.manual_seed(cfg.seed)
    sampling = Sampling(cfg.eval_n, temperature=1.0, top_p=1.0, max_new_tokens=cfg.max_new_tokens)
    return summarize(evaluate(rollout, tokenizer, examples, prompts, sampling, math_verify_reward))


def _smooth(values: list[float], window: int = 10) -> list[float]:
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
        for i in range(len(values))
    ]


def _plot(
    runs: dict[str, list[dict[str, float]]],
    evals: dict[str, dict[str, float]],
    omega_low: float,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(20, 4))
    panels = [
        ("entropy/response", "response entropy (top-20 % tokens, nats)"),
        ("entropy/token", "mean token entropy (nats)"),
        ("train/reward", "training accuracy (sampled responses)"),
    ]
    for axis, (key, title) in zip(axes, panels, strict=False):
        for index, (name, rows) in enumerate(runs.items()):
            steps, values = [r["step"] for r in rows], [r[key] for r in rows]
            axis.plot(steps, values, color=f"C{index}", alpha=0.25)
            axis.plot(steps, _smooth(values), color=f"C{index}", label=f"{name} (10-step mean)")
        axis.set(title=title, xlabel="RL step")
    axes[0].axhline(omega_low, color="k", linestyle="--", linewidth=1, label="ERA omega_low")
    for name, summary in evals.items():
        ks = [int(key.split("@")[1]) for key in summary if key.startswith("pass@")]
        axes[3].plot(ks, [summary[f"pass@{k}"] for k in ks], marker="o", label=name)
    axes[3].set(title="held-out pass@k", xlabel="k", xscale="log")
    axes[3].set_xticks(ks, [str(k) for k in ks])
    axes[3].minorticks_off()
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Warm start, GRPO and GRPO-ERA, evaluation, plot; returns the summary it writes."""
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.output_dir)
    rng = random.Random(cfg.seed)
    random.seed(cfg.seed)
    test = make_problems(cfg.eval_problems, cfg.digits, rng)
    train_problems = make_problems(
        cfg.train_problems, cfg.digits, rng, exclude={p["question"] for p in test}
    )
    _write_jsonl(run_dir / "data" / "train.jsonl", train_problems)

    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), cfg.hidden_size, cfg.num_layers, cfg.seed)
    sft_losses = supervised_warm_start(model, tokenizer, train_problems, cfg.sft_steps, cfg.sft_lr)
    start = run_dir / "sft"
    model.save_pretrained(start)
    tokenizer.save_pretrained(start)

    runs, evals = {}, {"sft": _pass_at_k(start, test, cfg)}
    for algo in ("grpo", "grpo-era"):
        out = train(
            TrainConfig(
                model=str(start),
                data=str(run_dir / "data" / "train.jsonl"),
                output_dir=str(run_dir / algo),
                algo=algo,
                seed=cfg.seed,
                max_steps=cfg.rl_steps,
                lr=cfg.rl_lr,
                prompts_per_step=cfg.prompts_per_step,
                num_generations=cfg.num_generations,
                micro_batch_size=cfg.prompts_per_step * cfg.num_generations,
                prompt_template="{prompt}",
                max_new_tokens=cfg.max_new_tokens,
                era_omega_low=cfg.era_omega_low,
                save_every=cfg.rl_steps,
                device="cpu",
                overwrite=True,
                max_sampling_rounds=3,
            )
        )
        runs[algo] = read_metrics(out / "metrics.csv")
        evals[algo] = _pass_at_k(out / "checkpoints" / f"step-{cfg.rl_steps:08d}", test, cfg)

    _plot(runs, evals, cfg.era_omega_low, run_dir / "demo.png")
    last = max(1, cfg.rl_steps // 10)
    summary = {
        "sft_final_loss": sft_losses[-1],
        "eval": evals,
        "final": {
            algo: {
                key: sum(r[key] for r in rows[-last:]) / last
                for key in ("entropy/token", "entropy/response", "train/reward")
            }
            for algo, rows in runs.items()
        },
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
