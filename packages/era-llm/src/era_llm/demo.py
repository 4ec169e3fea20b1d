r"""A laptop-sized exploration experiment: GRPO, its entropy regularisers and GRPO-ERA on arithmetic.

No download is needed: a character-level tokenizer and a tiny Qwen2-architecture model are
built in code, warm-started by a short supervised run on ``a*b=`` problems (``a`` with three
digits, ``b`` from 2 to 9) answered as ``\boxed{a*b}``, then trained from that same start by
the real trainer (``era_llm.trainer.train``) with each algorithm of ``ARMS``.

Why this task: the warm start knows the shape of the answer but not its middle digits, so
its samples spread over many plausible numbers: pass@32 is several times its pass@1. A
policy whose entropy collapses samples fewer candidates, so on problems it has not learnt it
stops finding the right one: exploration is what held-out pass@k at large k measures. (The
previous demo, three-digit addition, has one easily learnt answer; its entropy "collapse"
is the model learning to add. ``operation="add"`` still runs it, as the negative control.)

The run directory gets every run, their metrics, a plot of response entropy (with ERA's
floor), token entropy, training reward and held-out pass@k (``demo.png``), the numbers
(``summary.json``) and a one-page ``summary.md``.
"""

import dataclasses
import json
import random
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from era_core.validation import check_positive, check_range
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
    "ARMS",
    "DemoConfig",
    "build_model",
    "build_tokenizer",
    "make_problems",
    "run_demo",
    "supervised_warm_start",
]

# Everything the task writes: digits, operators and the letters of \boxed{}.
ALPHABET = "0123456789+-*=\\boxed{}"
# The algorithms compared, each trained from the same warm start with the same seed.
# Clip-Cov and KL-Cov run with the paper's defaults; on-policy (one optimiser step per batch,
# as here) KL-Cov's penalty has no gradient, so it trains as GRPO without the ratio clip.
ARMS = ("grpo", "grpo-entropy-bonus", "grpo-era", "clip-cov", "kl-cov")


Operation = Literal["multiply", "add"]


@dataclass(kw_only=True)
class DemoConfig:
    """GRPO, entropy bonus, GRPO-ERA, Clip-Cov and KL-Cov from one supervised start, on CPU."""

    output_dir: str = help_field("runs/demo", "run directory")
    seed: int = help_field(0, "seed of the model, the problems and every RL run")
    operation: Operation = help_field(  # noqa: RUF009 (a dataclasses.field)
        "multiply",
        "multiply: a*b, a with `digits` digits, b in 2..9 (many plausible answers); "
        "add: a+b, both with `digits` digits (the previous demo, the negative control)",
    )
    digits: int = help_field(3, "digits of a (and of b for add)")
    hidden_size: int = help_field(64, "model width")
    num_layers: int = help_field(2, "decoder layers")
    sft_steps: int = help_field(600, "supervised warm-start steps (batch 64, 50 warm-up)")
    sft_lr: float = help_field(3e-3, "supervised learning rate")
    rl_steps: int = help_field(300, "RL steps per algorithm")
    rl_lr: float = help_field(3e-4, "RL learning rate")
    prompts_per_step: int = help_field(16, "prompts per RL step")
    num_generations: int = help_field(8, "responses per prompt")
    entropy_coef: float = help_field(
        0.01, "grpo-entropy-bonus weight (PPO's usual 0.01, set before any run, not tuned)"
    )
    era_omega_low: float = help_field(
        1.0,
        "GRPO-ERA response-entropy floor: below the warm start's ~1.3 nats, inside the range "
        "GRPO falls through (the paper's 0.45 is for a 150k-token vocabulary; add used 0.6)",
    )
    train_problems: int = help_field(2000, "distinct training problems")
    eval_problems: int = help_field(200, "held-out problems for pass@k")
    eval_n: int = help_field(32, "samples per held-out problem (pass@k up to k = eval_n)")
    threads: int = help_field(1, "torch CPU threads (1 is fastest for a model this small)")

    @property
    def max_new_tokens(self) -> int:
        """Room for the boxed answer (7 + digits + 2 tokens) and EOS, plus slack."""
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
        if self.operation not in ("multiply", "add"):
            raise ValueError(f"operation must be 'multiply' or 'add', got {self.operation!r}")
        check_range("digits", self.digits, 1, 6)
        total = _num_problems(self.digits, self.operation)
        check_range(
            "train_problems",
            self.train_problems,
            1,
            total - self.eval_problems,
            why=f"{total} distinct problems exist with {self.digits} digits",
        )
        check_range("num_generations", self.num_generations, 2)
        check_range("entropy_coef", self.entropy_coef, 0.0)
        check_range("seed", self.seed, 0)
        check_positive("sft_lr", self.sft_lr)
        check_positive("rl_lr", self.rl_lr)
        # The ERA arm's band, checked here rather than after the warm start.
        check_range(
            "era_omega_low", self.era_omega_low, 0.0, TrainConfig.era_omega_high,
            why="and <= era_omega_high",
        )  # fmt: skip


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


def _second_range(digits: int, operation: Operation) -> tuple[int, int]:
    # A one-digit multiplier from 2 keeps every product non-trivial (no x0, no x1).
    return (2, 9) if operation == "multiply" else _operand_range(digits)


def _num_problems(digits: int, operation: Operation = "add") -> int:
    (low, high), (low2, high2) = _operand_range(digits), _second_range(digits, operation)
    return (high - low + 1) * (high2 - low2 + 1)


def make_problems(
    count: int,
    digits: int,
    rng: random.Random,
    exclude: Set[str] = frozenset(),
    operation: Operation = "add",
) -> list[dict[str, str]]:
    """``count`` distinct ``{"question": "a+b=", "answer": "<a+b>"}`` problems not in ``exclude``.

    ``operation="multiply"`` gives ``a*b=`` with a one-digit ``b`` from 2 to 9.
    """
    check_range("count", count, 0, _num_problems(digits, operation) - len(exclude))
    (low, high), (low2, high2) = _operand_range(digits), _second_range(digits, operation)
    symbol = "*" if operation == "multiply" else "+"
    seen, problems = set(exclude), []
    while len(problems) < count:
        a, b = rng.randint(low, high), rng.randint(low2, high2)
        question = f"{a}{symbol}{b}="
        if question not in seen:
            seen.add(question)
            answer = a * b if operation == "multiply" else a + b
            problems.append({"question": question, "answer": str(answer)})
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
    colors = {"sft": "k"} | {name: f"C{index}" for index, name in enumerate(runs)}
    # The ticks are every k any evaluation reports (not just the last one's; none without evals).
    all_ks = sorted(
        {
            int(key.split("@")[1])
            for summary in evals.values()
            for key in summary
            if key.startswith("pass@")
        }
    )
    for name, summary in evals.items():
        ks = [k for k in all_ks if f"pass@{k}" in summary]
        label = "warm start" if name == "sft" else name
        axes[3].plot(
            ks, [summary[f"pass@{k}"] for k in ks], marker="o", color=colors[name], label=label
        )
    axes[3].set(title="held-out pass@k", xlabel="k", xscale="log")
    axes[3].set_xticks(all_ks, [str(k) for k in all_ks])
    axes[3].minorticks_off()
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _summary_markdown(summary: dict[str, Any], cfg: DemoConfig) -> str:
    """The demo's one page: a table, one sentence computed from it, and the plot's link."""
    evals, final, first = summary["eval"], summary["final"], summary["first"]
    big_k = max(int(key.split("@")[1]) for key in evals["sft"] if key.startswith("pass@"))
    rows = [
        "| arm | response entropy: step 1 -> last 10 % | train reward (last 10 %) "
        f"| held-out pass@1 | pass@8 | pass@{big_k} |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, result in evals.items():
        if name == "sft":
            entropy, reward = "", ""
        else:
            entropy = (
                f"{first[name]['entropy/response']:.3f} -> {final[name]['entropy/response']:.3f}"
            )
            reward = f"{100 * final[name]['train/reward']:.1f} %"
        cells = [f"{100 * result.get(f'pass@{k}', float('nan')):.1f} %" for k in (1, 8, big_k)]
        rows.append(
            f"| {'warm start' if name == 'sft' else name} | {entropy} | {reward} | {' | '.join(cells)} |"
        )
    ranked = sorted(ARMS, key=lambda name: evals[name][f"pass@{big_k}"], reverse=True)
    ranking = " > ".join(f"{name} {100 * evals[name][f'pass@{big_k}']:.1f} %" for name in ranked)
    sentence = (
        f"On seed {cfg.seed} ({cfg.rl_steps} RL steps), held-out pass@{big_k} ranks {ranking} "
        f"(warm start {100 * evals['sft'][f'pass@{big_k}']:.1f} %), and GRPO-ERA's response "
        f"entropy ended {'above' if final['grpo-era']['entropy/response'] >= cfg.era_omega_low else 'below'} "
        f"its floor of {cfg.era_omega_low:g}; one seed does not separate the arms, the 3-seed "
        "table is benchmarks/bench_demo.py's."
    )
    task = (
        f"{cfg.digits}-digit x 1-digit multiplication"
        if cfg.operation == "multiply"
        else f"{cfg.digits}-digit addition"
    )
    return "\n".join(
        [
            "## era-llm",
            "",
            f"GRPO, GRPO + entropy bonus ({cfg.entropy_coef:g}), GRPO-ERA (floor "
            f"{cfg.era_omega_low:g}), Clip-Cov and KL-Cov from one warm start on {task}; held-out: "
            f"{cfg.eval_problems} problems x {cfg.eval_n} samples.",
            "",
            *rows,
            "",
            sentence,
            "",
            "[entropy, reward and pass@k curves](demo.png)",
            "",
        ]
    )


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Warm start, one RL run per arm, evaluation, plot; returns the summary it writes."""
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.output_dir)
    rng = random.Random(cfg.seed)
    random.seed(cfg.seed)
    test = make_problems(cfg.eval_problems, cfg.digits, rng, operation=cfg.operation)
    train_problems = make_problems(
        cfg.train_problems,
        cfg.digits,
        rng,
        exclude={p["question"] for p in test},
        operation=cfg.operation,
    )
    _write_jsonl(run_dir / "data" / "train.jsonl", train_problems)

    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), cfg.hidden_size, cfg.num_layers, cfg.seed)
    sft_losses = supervised_warm_start(model, tokenizer, train_problems, cfg.sft_steps, cfg.sft_lr)
    start = run_dir / "sft"
    model.save_pretrained(start)
    tokenizer.save_pretrained(start)

    runs, evals = {}, {"sft": _pass_at_k(start, test, cfg)}
    for algo in ARMS:
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
                # A fixed cap keeps every arm's step cost bounded when most groups agree.
                dynamic_sampling=True,
                max_sampling_rounds=3,
                prompt_template="{prompt}",
                max_new_tokens=cfg.max_new_tokens,
                entropy_coef=cfg.entropy_coef,
                era_omega_low=cfg.era_omega_low,
                save_every=cfg.rl_steps,
                device="cpu",
                overwrite=True,
            )
        )
        runs[algo] = read_metrics(out / "metrics.csv")
        evals[algo] = _pass_at_k(out / "checkpoints" / f"step-{cfg.rl_steps:08d}", test, cfg)

    _plot(runs, evals, cfg.era_omega_low, run_dir / "demo.png")
    last = max(1, cfg.rl_steps // 10)
    keys = ("entropy/token", "entropy/response", "train/reward")
    summary = {
        "config": dataclasses.asdict(cfg),
        "sft_final_loss": sft_losses[-1],
        "eval": evals,
        # Step 1's entropies are the warm start's (measured before its optimiser step).
        "first": {algo: {key: rows[0][key] for key in keys} for algo, rows in runs.items()},
        "final": {
            algo: {key: sum(r[key] for r in rows[-last:]) / last for key in keys}
            for algo, rows in runs.items()
        },
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "summary.md").write_text(_summary_markdown(summary, cfg))
    return summary
