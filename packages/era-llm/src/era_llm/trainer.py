"""On-policy GRPO-family trainer: sample groups, score them, update the policy.

One training step, top to bottom (``train``):

1. ``collect_groups``: ``num_generations`` responses for each of ``prompts_per_step``
   prompts, rewarded by a verifier; with dynamic sampling, groups whose rewards are all equal
   (zero GRPO gradient) are dropped and refilled from the next prompts until the batch is
   full (DAPO), or up to an optional cap on rounds.
2. ``update_policy``: group-normalised advantages; a no-grad pass of the behaviour policy
   when needed (old log-probs for several mini-batches, token entropies for ERA's shaping);
   then per mini-batch the loss from ``LOSSES[algo]``, gradient accumulation over
   micro-batches, clipping and one optimiser step; finally the rollout backend gets the new
   weights.
3. Log, checkpoint (atomically, also on SIGTERM/SIGINT), repeat.

Under torchrun every rank samples its own shard of prompts; DDP averages gradients, or
FSDP2 (``parallel=fsdp``) also shards weights, gradients and optimiser state over the ranks.
"""

import contextlib
import dataclasses
import math
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from era_core import cli
from era_core.cli import hold_run_dir
from era_core.functional import response_entropy
from era_core.validation import check_positive, check_range
from era_llm.advantages import group_advantages, informative_groups
from era_llm.checkpoint import (
    latest_checkpoint,
    load_checkpoint_state,
    load_optimizer_state,
    optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from era_llm.config import help_field, save_config
from era_llm.data import (
    DEFAULT_TEMPLATE,
    PromptSampler,
    check_template,
    encode_prompt,
    load_examples,
)
from era_llm.distributed import (
    Distributed,
    all_reduce_mean,
    all_reduce_sum,
    any_rank,
    barrier,
    clip_grad_norm,
    fsdp_available,
    gathered_weights,
    gradient_sync,
    init_distributed,
    parallelize,
    shutdown,
)
from era_llm.errors import UsageError
from era_llm.lora import ADAPTER_DIR, add_lora
from era_llm.losses import LOSSES, Loss, LossConfig, PolicyTerms
from era_llm.metrics import COMPLETIONS_FILE, MetricLogger
from era_llm.policy import TokenScorer, enable_activation_checkpointing, load_model, load_tokenizer
from era_llm.rewards import AnswerFormat, RewardFn, weighted_reward
from era_llm.rollout import Rollout, RolloutConfig, Sampling, make_rollout

__all__ = [
    "Groups",
    "TrainConfig",
    "collate",
    "collect_groups",
    "completion_rows",
    "train",
    "update_policy",
]


@dataclass(kw_only=True)
class TrainConfig(LossConfig, RolloutConfig):
    """Train a causal LM with GRPO, GRPO + entropy bonus, or GRPO-ERA on verifiable problems."""

    model: str = help_field(help="model directory or id to start from")
    data: str = help_field(help="training problems: .jsonl, .json or .parquet")
    prompt_field: str | None = help_field(None, "question field (None: prompt, question, problem)")
    answer_field: str | None = help_field(
        None, "gold answer field (None: answer, final_answer, solution)"
    )
    prompt_template: str = help_field(DEFAULT_TEMPLATE, "prompt text; {prompt} is the question")
    chat_template: bool = help_field(
        True, "wrap prompts in the tokenizer's chat template if it has one"
    )
    reward: list[str] = help_field(  # noqa: RUF009 (a dataclasses.field)
        help="reward terms NAME[:WEIGHT], summed (era_llm.rewards.REWARDS): math-verify (the "
        "answer is right), format (an answer is where --answer-format looks); e.g. "
        "--reward math-verify format:0.1 (the flag may repeat)",
        default_factory=lambda: ["math-verify"],
    )
    answer_format: AnswerFormat = help_field(  # noqa: RUF009 (a dataclasses.field)
        "boxed",
        "where a response's answer is: boxed (its last \\boxed{}) or answer-line (its last "
        "'Answer:' line, DAPO-Math-17k's format)",
    )
    output_dir: str = help_field("runs/era-llm", "run directory: config, metrics, checkpoints")
    seed: int = help_field(0, "random seed (rank r uses seed + r)")
    max_steps: int = help_field(200, "training steps (one rollout batch each)")
    prompts_per_step: int = help_field(16, "prompts per step and rank")
    num_generations: int = help_field(8, "responses per prompt (the GRPO group size, >= 2)")
    num_minibatches: int = help_field(1, "optimiser steps per rollout batch (1: fully on-policy)")
    micro_batch_size: int = help_field(8, "responses per forward/backward (gradient accumulation)")
    dynamic_sampling: bool = help_field(True, "drop groups with equal rewards and refill (DAPO)")
    max_sampling_rounds: int | None = help_field(
        None,
        "cap on generation rounds per step when refilling groups (None: sample until the "
        "batch is full, as DAPO does, or stop with an error if a whole pass over the prompts "
        "gives no informative group); at the cap the batch is topped up with groups that "
        "stay out of the loss",
    )
    scale_rewards: bool = help_field(True, "divide advantages by the group std (False: Dr. GRPO)")
    max_prompt_length: int = help_field(1024, "prompts longer than this many tokens are skipped")
    lr: float = help_field(1e-6, "AdamW learning rate")
    weight_decay: float = help_field(0.0, "AdamW weight decay")
    warmup_steps: int = help_field(0, "linear learning-rate warm-up, in optimiser steps")
    max_grad_norm: float = help_field(1.0, "gradient clipping norm")
    precision: Literal["auto", "fp32", "bf16"] = help_field(
        "auto", "bf16: bf16 autocast over float32 weights; auto: bf16 on CUDA, fp32 on CPU"
    )
    param_dtype: Literal["float32", "bfloat16"] = help_field(
        "float32",
        "dtype the weights (and so their gradients and AdamW state) are kept in: float32 "
        "masters, or bfloat16 for half the memory (updates smaller than bf16's precision are lost)",
    )
    lora_rank: int = help_field(
        0, "train LoRA adapters of this rank instead of every weight (0: off; era-llm[lora])"
    )
    lora_alpha: float = help_field(16.0, "LoRA update scale numerator: lora_alpha / lora_rank")
    lora_target_modules: list[str] = help_field(  # noqa: RUF009 (a dataclasses.field)
        help="modules LoRA adapts (all-linear: every linear layer but the output projection)",
        default_factory=lambda: ["all-linear"],
    )
    device: str = help_field("auto", "auto, cpu, cuda or cuda:N (torchrun ranks use LOCAL_RANK)")
    parallel: Literal["ddp", "fsdp"] = help_field(
        "ddp",
        "under torchrun: ddp (whole model per rank) or fsdp (FSDP2: weights, gradients and "
        "optimiser state sharded per decoder layer, for models that do not fit one device)",
    )
    gradient_checkpointing: bool = help_field(False, "recompute decoder activations in backward")
    logprob_chunk_size: int | None = help_field(
        None, "tokens per logits chunk (None: ~256 MiB chunks)"
    )
    topk_logprobs: int = help_field(
        0, "log-probs over the top-k logits only (0: off; paper: 20), see topk_mode"
    )
    topk_mode: Literal["mask", "renormalise"] = help_field(
        "mask",
        "with topk_logprobs, a sampled token outside the top k: mask (the ERA authors' code: "
        "log-prob -1e4, no gradient) or renormalise (it joins the normaliser, with gradient)",
    )
    save_every: int = help_field(
        50, "checkpoint every this many steps (and at the end / on SIGTERM)"
    )
    keep_checkpoints: int = help_field(2, "most recent checkpoints to keep")
    log_completions_every: int = help_field(
        0,
        "every this many steps, write each sampled completion (prompt, text, reward, advantage, "
        "entropy, ERA scale) to completions.jsonl and TensorBoard's text tab; rank 0's share "
        "under torchrun (0: off)",
    )
    resume: bool = help_field(
        False,
        "continue the run in output_dir although its config.yaml differs (the new values "
        "apply from its latest checkpoint on; model, LoRA, seed and data fields are refused "
        "once it has one); an unchanged config always continues",
    )
    overwrite: bool = help_field(
        False,
        "start over in output_dir: once the new settings load, the old run is set aside, "
        "then deleted at the new run's first checkpoint (restored if it fails before)",
    )

    def __post_init__(self) -> None:
        LossConfig.__post_init__(self)
        RolloutConfig.__post_init__(self)
        if isinstance(self.reward, str):  # one term, from Python
            self.reward = [self.reward]
        weighted_reward(self.reward, self.answer_format)  # refuses malformed or repeated terms
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 for group-relative advantages, got {self.num_generations}"
            )
        for name in (
            "max_steps",
            "prompts_per_step",
            "num_minibatches",
            "micro_batch_size",
            "max_prompt_length",
            "save_every",
            "keep_checkpoints",
        ):
            check_range(name, getattr(self, name), 1)
        if self.max_sampling_rounds is not None:
            check_range("max_sampling_rounds", self.max_sampling_rounds, 1)
        check_range("warmup_steps", self.warmup_steps, 0)
        check_range("seed", self.seed, 0)
        check_range("topk_logprobs", self.topk_logprobs, 0)
        check_range("log_completions_every", self.log_completions_every, 0)
        if self.logprob_chunk_size is not None:
            check_range("logprob_chunk_size", self.logprob_chunk_size, 1)
        check_positive("lr", self.lr)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_positive("max_grad_norm", self.max_grad_norm)
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite: give one of them, not both")
        check_range("lora_rank", self.lora_rank, 0)
        check_template(self.prompt_template)
        check_positive("lora_alpha", self.lora_alpha)
        if self.lora_rank and not self.lora_target_modules:
            raise ValueError("lora_target_modules: name at least one module (or all-linear)")
        if self.lora_rank and self.parallel == "fsdp":
            raise ValueError(
                "lora_rank > 0 runs with parallel=ddp; LoRA under fsdp is not supported"
            )
        if self.parallel == "fsdp" and not fsdp_available():
            raise ValueError(
                f"parallel=fsdp needs torch.distributed with FSDP2 (torch >= 2.6, this is "
                f"{torch.__version__}); use parallel=ddp"
            )
        batch = self.prompts_per_step * self.num_generations
        if batch % self.num_minibatches:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must divide prompts_per_step * "
                f"num_generations ({batch})"
            )


@dataclass
class Groups:
    """One step's sampled groups on this rank (``G`` responses per prompt, grouped).

    Attributes:
        prompts: Prompt token ids, one per group.
        responses: ``len(prompts) * G`` response token ids.
        rewards: Shape ``(len(prompts), G)``.
        stats: Sampling statistics for logging.
        in_loss: Shape ``(len(prompts),)`` bool: ``False`` for groups that only top up a
            batch (dynamic sampling stopped by its round cap); they keep every rank's batch
            the same size but add nothing to the loss or its normaliser. ``None``: all count.
    """

    prompts: list[list[int]]
    responses: list[list[int]]
    rewards: Tensor
    stats: dict[str, float]
    in_loss: Tensor | None = None


def collect_groups(
    rollout: Rollout,
    prompts: list[list[int]],
    answers: list[str],
    sampler: PromptSampler,
    tokenizer: Any,
    reward_fn: RewardFn,
    cfg: TrainConfig,
) -> Groups:
    """Sample ``prompts_per_step`` groups, dropping and refilling uninformative ones.

    With dynamic sampling, rounds continue until the batch is full. If ``max_sampling_rounds``
    stops them first, the batch is topped up with uninformative groups marked out of the loss
    (``Groups.in_loss``): every rank still trains on the same number of responses, which
    keeps DDP in lockstep, and the loss is the mean over the informative groups only.

    Raises:
        UsageError: Without a cap, a whole pass over the prompts gave no informative group
            (the reward is never, or always, earned), so sampling would never end.
    """
    sampling = Sampling(cfg.num_generations, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    g = cfg.num_generations
    kept: list[tuple[list[int], list[list[int]], Tensor]] = []
    spare: list[tuple[list[int], list[list[int]], Tensor]] = []
    all_rewards, rounds, sampled = [], 0, 0
    max_rounds = 1 if not cfg.dynamic_sampling else cfg.max_sampling_rounds or math.inf
    while len(kept) < cfg.prompts_per_step and rounds < max_rounds:
        if not kept and sampled >= len(prompts):
            raise UsageError(
                f"dynamic_sampling: {sampled} prompts sampled in {rounds} rounds and no group "
                f"had unequal rewards (mean reward {torch.cat(all_rewards).mean().item():g}); "
                "check the reward and --answer-format, or cap --max-sampling-rounds"
            )
        indices = [sampler.next() for _ in range(cfg.prompts_per_step - len(kept))]
        sampled += len(indices)
        responses = rollout.generate([prompts[i] for i in indices], sampling)
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        rewards = torch.tensor(
            [reward_fn(text, answers[indices[j // g]]) for j, text in enumerate(texts)],
            dtype=torch.float32,
        ).view(len(indices), g)
        all_rewards.append(rewards.flatten())
        useful = (
            informative_groups(rewards)
            if cfg.dynamic_sampling
            else torch.ones(len(indices), dtype=torch.bool)
        )
        for j, index in enumerate(indices):
            group = (prompts[index], responses[j * g : (j + 1) * g], rewards[j])
            (kept if useful[j] else spare).append(group)
        rounds += 1
    informative = len(kept)
    kept += spare[: cfg.prompts_per_step - len(kept)]
    rewards_seen = torch.cat(all_rewards)
    return Groups(
        prompts=[p for p, _, _ in kept],
        responses=[r for _, rs, _ in kept for r in rs],
        rewards=torch.stack([r for _, _, r in kept]),
        stats={
            "train/reward": rewards_seen.mean().item(),
            "train/informative_frac": informative / cfg.prompts_per_step,
            "train/sampling_rounds": float(rounds),
        },
        in_loss=torch.arange(len(kept)) < informative,
    )


def collate(
    prompts: list[list[int]], responses: list[list[int]], pad_token_id: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Pack ``G`` responses per prompt into ``[left-padded prompt | right-padded response]`` rows.

    Returns:
        ``(input_ids, attention_mask, response_mask, response_start)``: ``(B, P + R)``,
        ``(B, P + R)``, float ``(B, R)``, and ``P``, the column where responses start.
    """
    g = len(responses) // len(prompts)
    width = max(len(p) for p in prompts)
    length = max(1, max(len(r) for r in responses))
    ids, attention, response_mask = [], [], []
    for j, response in enumerate(responses):
        prompt = prompts[j // g]
        left, right = width - len(prompt), length - len(response)
        ids.append([pad_token_id] * left + prompt + response + [pad_token_id] * right)
        attention.append([0] * left + [1] * (len(prompt) + len(response)) + [0] * right)
        response_mask.append([1.0] * len(response) + [0.0] * right)
    return (
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(attention, dtype=torch.long, device=device),
        torch.tensor(response_mask, dtype=torch.float32, device=device),
        width,
    )


def _score(
    scorer: Any, ids: Tensor, attention: Tensor, start: int, scale: Tensor | None, size: int
) -> tuple[Tensor, Tensor]:
    """No-grad log-probs and entropies of every row, ``size`` rows at a time."""
    parts = []
    with torch.no_grad():
        for rows in torch.arange(ids.shape[0], device=ids.device).split(size):
            row_scale = None if scale is None else scale[rows]
            parts.append(scorer(ids[rows], attention[rows], start, row_scale)[:2])
    logprobs, entropy = (torch.cat(p) for p in zip(*parts, strict=True))
    return logprobs, entropy


def update_policy(
    groups: Groups,
    trainable: Any,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loss: Loss,
    cfg: TrainConfig,
    pad_token_id: int,
    dist: Distributed,
    autocast: Any,
    ref_scorer: TokenScorer | None = None,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Advantages, shaping, and ``num_minibatches`` optimiser steps on one rollout batch.

    Args:
        groups: This rank's sampled groups.
        trainable: The ``TokenScorer`` (``parallelize``-d under torchrun) whose forward trains.
        model: The LM inside it (for gradient clipping).
        optimizer: Its optimiser.
        scheduler: Learning-rate scheduler, stepped with the optimiser.
        loss: The registry entry for ``cfg.algo``.
        cfg: Training config.
        pad_token_id: Padding id for ``collate``.
        dist: Rank and device.
        autocast: Mixed-precision context factory.
        ref_scorer: Frozen reference model for the KL term (``kl_coef > 0``).

    Returns:
        Metrics of this update, averaged over this rank's tokens; and per response (in the
        order of ``groups.responses``, on the CPU) the mean token ``entropy`` of its last
        scoring pass and the mean ``logit_scale`` ERA applied (1 where it applied none).
    """
    device = dist.device
    ids, attention, mask, start = collate(groups.prompts, groups.responses, pad_token_id, device)
    advantages = group_advantages(groups.rewards, cfg.scale_rewards).flatten().to(device)
    advantages = advantages[:, None] * mask
    # Top-up groups (Groups.in_loss) stay out of the loss and out of its normaliser.
    loss_mask = mask
    if groups.in_loss is not None:
        per_response = groups.in_loss.repeat_interleave(
            len(groups.responses) // len(groups.prompts)
        )
        loss_mask = mask * per_response.to(device, torch.float32)[:, None]
    logit_scale, old_logprobs = None, None
    if cfg.num_minibatches > 1:
        # Several optimiser steps per batch: pin the behaviour policy first. Its entropies
        # decide ERA's scale once, so both log-probs of the ratio see the same transformation.
        scorer = trainable.module if isinstance(trainable, DistributedDataParallel) else trainable
        with autocast():
            old_logprobs, behaviour_entropy = _score(
                scorer, ids, attention, start, None, cfg.micro_batch_size
            )
            logit_scale, advantages = loss.shaping(behaviour_entropy, advantages, mask, cfg)
            if logit_scale is not None and bool((logit_scale != 1).any()):
                old_logprobs = _score(
                    scorer, ids, attention, start, logit_scale, cfg.micro_batch_size
                )[0]
    # One optimiser step per batch: the behaviour policy is the one being trained, so shaping
    # runs inside each training forward on its own entropies, and the old log-probs are the
    # current ones detached (ratio 1).
    shape_inline = loss.shapes and cfg.num_minibatches == 1

    batch = ids.shape[0]
    order = torch.randperm(batch, device=device)
    policy_loss, token_sums = 0.0, {}
    entropy_rows = torch.zeros(batch, mask.shape[1], device=device)
    applied_scale = torch.ones(batch, mask.shape[1], device=device)
    grad_norms = []
    for minibatch in order.split(batch // cfg.num_minibatches):
        count = (
            loss_mask[minibatch].sum()
            if cfg.aggregation == "token-mean"
            else (loss_mask[minibatch].sum(1) > 0).sum()
        )
        # DDP and FSDP average gradients over ranks, so each rank divides by the global
        # count / world. With nothing in the loss (all top-up) the loss is 0 whatever it is.
        normaliser = max(all_reduce_sum(count.item(), device), 1.0) / dist.world_size
        micro = minibatch.split(cfg.micro_batch_size)
        for i, rows in enumerate(micro):
            with gradient_sync(trainable, i == len(micro) - 1), autocast():
                scale = None if logit_scale is None else logit_scale[rows]
                shaping = None
                if shape_inline:
                    shaping = partial(_scale_only, loss, advantages[rows], mask[rows], cfg)
                logprobs, entropy, shaping_entropy = trainable(
                    ids[rows], attention[rows], start, scale, shaping
                )
                row_advantages = advantages[rows]
                if shaping_entropy is not None:
                    scale, row_advantages = loss.shaping(
                        shaping_entropy, row_advantages, mask[rows], cfg
                    )
                ref_logprobs = None
                if ref_scorer is not None:
                    # The reference is scored as it is, without ERA's scale: the authors'
                    # reference pass has none.
                    with torch.no_grad():
                        ref_logprobs = ref_scorer(ids[rows], attention[rows], start)[0]
                terms = PolicyTerms(
                    logprobs=logprobs,
                    old_logprobs=logprobs.detach() if old_logprobs is None else old_logprobs[rows],
                    advantages=row_advantages,
                    mask=loss_mask[rows],
                    entropy=entropy,
                    ref_logprobs=ref_logprobs,
                    normaliser=normaliser,
                )
                value, sums = loss.objective(terms, cfg)
            value.backward()
            entropy_rows[rows] = entropy.detach()
            if scale is not None:
                applied_scale[rows] = scale
            policy_loss += value.item()
            for key, total in sums.items():
                token_sums[key] = token_sums.get(key, 0.0) + total.item()
        grad_norms.append(clip_grad_norm(model.parameters(), cfg.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    metrics: dict[str, float] = {}
    if loss.shapes:
        metrics["era/sharpened_frac"] = _response_frac(applied_scale > 1, mask)
        metrics["era/flattened_frac"] = _response_frac(applied_scale < 1, mask)
    tokens = mask.sum().clamp(min=1).item()
    metrics["loss/policy"] = policy_loss / cfg.num_minibatches
    loss_tokens = loss_mask.sum().clamp(min=1).item()
    metrics.update({f"loss/{key}": total / loss_tokens for key, total in token_sums.items()})
    metrics["entropy/token"] = (entropy_rows * mask).sum().item() / tokens
    metrics["entropy/response"] = (
        response_entropy(entropy_rows, mask, cfg.era_top_frac).mean().item()
    )
    metrics["train/response_length"] = mask.sum(1).mean().item()
    metrics["optim/grad_norm"] = sum(grad_norms) / len(grad_norms)
    metrics["optim/lr"] = scheduler.get_last_lr()[0]
    lengths = mask.sum(1).clamp(min=1)
    per_response = {
        "entropy": ((entropy_rows * mask).sum(1) / lengths).cpu(),
        "logit_scale": ((applied_scale * mask).sum(1) / lengths).cpu(),
    }
    return metrics, per_response


def completion_rows(
    groups: Groups, per_response: dict[str, Tensor], tokenizer: Any, cfg: TrainConfig
) -> list[dict[str, Any]]:
    """One row per sampled completion, for ``log_completions_every``.

    Each row: the prompt and completion text, reward, group advantage, mean token entropy, the
    ERA logit scale applied, and whether its group was in the loss (not a top-up group).
    """
    g = cfg.num_generations
    rewards = groups.rewards.flatten()
    advantages = group_advantages(groups.rewards, cfg.scale_rewards).flatten()
    prompts = tokenizer.batch_decode(groups.prompts, skip_special_tokens=True)
    texts = tokenizer.batch_decode(groups.responses, skip_special_tokens=True)
    return [
        {
            "prompt": prompts[j // g],
            "completion": text,
            "reward": float(rewards[j]),
            "advantage": float(advantages[j]),
            "entropy": float(per_response["entropy"][j]),
            "logit_scale": float(per_response["logit_scale"][j]),
            "in_loss": groups.in_loss is None or bool(groups.in_loss[j // g]),
        }
        for j, text in enumerate(texts)
    ]


def _scale_only(
    loss: Loss, advantages: Tensor, mask: Tensor, cfg: TrainConfig, entropy: Tensor
) -> Tensor | None:
    """The logit scale ``loss.shaping`` picks for these entropies (TokenScorer's ``shaping``)."""
    return loss.shaping(entropy, advantages, mask, cfg)[0]


def _response_frac(flags: Tensor, mask: Tensor) -> float:
    """Fraction of responses with any flagged valid token."""
    return ((flags & (mask > 0)).any(dim=1)).float().mean().item()


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag checked between steps (so the step ends and saves)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignal":
        # Handlers can only be installed from the main thread; elsewhere signals keep their default.
        with contextlib.suppress(ValueError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# Flags that say how to treat an existing run rather than what the run is.
_RUN_DIR_FLAGS = ("resume", "overwrite")
# What --resume cannot change once the run has a checkpoint, and why: the run would go on
# from state made for the saved value, and record a value it does not use.
_SAME_PROBLEMS = "the checkpoint's data position indexes these problems"
_FIXED_ONCE_SAVED = {
    "model": "the checkpoint's weights were trained from it",
    "lora_rank": "the checkpoint's adapter was built for it",
    "lora_alpha": "the checkpoint's adapter was built for it",
    "lora_target_modules": "the checkpoint's adapter was built for it",
    "seed": "the random state and the prompt order continue from the checkpoint",
    "data": _SAME_PROBLEMS,
    "prompt_field": _SAME_PROBLEMS,
    "answer_field": _SAME_PROBLEMS,
}
# A run's entries in output_dir, with its config.step-N.yaml files: what --overwrite replaces.
_RUN_ENTRIES = ("checkpoints", "tb", "metrics.csv", COMPLETIONS_FILE, "config.yaml")


def config_diff(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """``"field: old -> new"`` for each field where ``cfg`` differs from a saved config.yaml."""
    # Through YAML, so both sides have the types a file holds (lists, not tuples).
    current = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg)))
    missing = "(absent)"
    return [
        f"{name}: {saved.get(name, missing)!r} -> {current.get(name, missing)!r}"
        for name in sorted(set(saved) | set(current))
        if name not in _RUN_DIR_FLAGS and saved.get(name, missing) != current.get(name, missing)
    ]


def _prepare_run_dir(cfg: TrainConfig, run_dir: Path) -> tuple[Path | None, bool]:
    """Check ``output_dir`` against the run it may hold; changes nothing there.

    An unchanged config continues its run; a changed one needs ``resume`` (continue with
    the new values) or ``overwrite`` (start over; the old run is only set aside later, by
    ``_start_writing``, once every check of the new settings has passed).

    Returns:
        The checkpoint to resume (``None``: start at step 0), and whether the config differs
        from the saved one (so ``_start_writing`` keeps the old one as ``config.step-N.yaml``).

    Raises:
        UsageError: The output dir holds a run with another config, a config.yaml that is
            not YAML, or a ``checkpoints/latest`` that names no complete checkpoint.
    """
    if cfg.overwrite:
        return None, False
    latest = latest_checkpoint(run_dir)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return latest, False
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"output_dir: {saved_path} is not valid YAML; use --overwrite") from error
    changes = config_diff(saved, cfg)
    if changes and not cfg.resume:
        raise UsageError(
            f"output_dir {str(run_dir)!r} holds a run with another config ({'; '.join(changes)}); "
            "add --resume to continue it with the new values, or --overwrite to start over"
        )
    fixed = [
        f"{change} ({_FIXED_ONCE_SAVED[name]})"
        for change in changes
        if (name := change.split(":")[0]) in _FIXED_ONCE_SAVED
    ]
    if fixed and latest is not None:
        raise UsageError(
            f"output_dir {str(run_dir)!r}: {'; '.join(fixed)} cannot change in a run with a "
            "checkpoint; keep the saved value, or use --overwrite to start over"
        )
    return latest, bool(changes)


def _start_writing(
    cfg: TrainConfig,
    run_dir: Path,
    dist: Distributed,
    resume_from: Path | None,
    config_changed: bool,
    scope: contextlib.ExitStack,
) -> Callable[[], None]:
    """Write the run's config.yaml, its first file; returns ``done()``, to call after a checkpoint.

    Call it once every check of the new settings has passed. ``overwrite`` sets the old run's
    entries aside (``era_core.cli.replacing_run``, entered into ``scope``) until ``done()``;
    if the run fails before, they come back. ``resume`` with a changed config keeps the old
    config.yaml as ``config.step-N.yaml``. Collective under torchrun: rank 0 moves and writes;
    when it cannot, every rank stops.
    """
    # Every rank has read the old run's files before rank 0 changes them.
    barrier()
    done: Callable[[], None] = lambda: None  # noqa: E731
    refused = None
    if dist.is_main:
        try:
            if cfg.overwrite:
                old_configs = [path.name for path in run_dir.glob("config.step-*.yaml")]
                done = scope.enter_context(
                    cli.replacing_run(run_dir, [*_RUN_ENTRIES, *old_configs])
                )
            elif config_changed and resume_from is not None:
                step = int(resume_from.name.split("-")[-1])
                shutil.copyfile(run_dir / "config.yaml", run_dir / f"config.step-{step:08d}.yaml")
            save_config(cfg, run_dir / "config.yaml")
        except OSError as error:
            refused = UsageError(
                f"output_dir: cannot write to {str(run_dir)!r} ({error.strerror or error})"
            )
    if any_rank(refused is not None, dist.device):
        raise refused or UsageError(f"output_dir: cannot write to {str(run_dir)!r} (see rank 0)")
    return done


@contextlib.contextmanager
def _own_run_dir(run_dir: Path, dist: Distributed) -> Iterator[contextlib.ExitStack]:
    """Create ``run_dir`` and hold its lock (rank 0, for the whole job) while the block runs.

    Collective under torchrun: every rank checks that it can write there, and when rank 0
    cannot take the lock (another process holds it) every rank raises, so none waits for it.

    Yields:
        The stack that holds the lock: what the block enters into it ends before the lock
        is released (a replaced run is restored while the folder is still this job's).
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-rank{dist.rank}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(
            f"output_dir: cannot write to {str(run_dir)!r} ({error.strerror or error})"
        ) from error
    with contextlib.ExitStack() as held:
        refused = None
        if dist.is_main:
            try:
                held.enter_context(hold_run_dir(run_dir))
            except cli.UsageError as error:
                refused = UsageError(f"output_dir: {error}")
        if any_rank(refused is not None, dist.device):
            raise refused or UsageError(
                f"output_dir: {str(run_dir)!r} is in use by another process (see rank 0)"
            )
        yield held


@contextlib.contextmanager
def _checkpoint_errors(checkpoint: Path | None) -> Iterator[None]:
    """Report a checkpoint that cannot be read as a usage error naming it."""
    if checkpoint is None:
        yield
        return
    try:
        yield
    except Exception as error:  # torch.load, safetensors and transformers each raise their own
        raise UsageError(
            f"resume: checkpoint {str(checkpoint)!r} cannot be read "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "write an earlier step-* name into checkpoints/latest, or start over with --overwrite"
        ) from error


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) a training run; returns the run directory.

    The run directory receives ``config.yaml``, ``metrics.csv``, TensorBoard events under
    ``tb/`` and checkpoints under ``checkpoints/`` (the last one is the final model).

    Raises:
        SystemExit: After SIGTERM/SIGINT: the current step finished and a checkpoint was
            saved; rerunning the same config resumes from it.
        UsageError: A problem the user can fix: ``output_dir`` holds a run with another
            config (or ``resume`` changes what its checkpoint fixes), is in use by another
            process, or cannot be written; ``checkpoints/latest`` names no complete
            checkpoint; a checkpoint, the model or the data cannot be read.
    """
    dist = init_distributed(cfg.device)
    run_dir = Path(cfg.output_dir)
    with _own_run_dir(run_dir, dist) as scope:
        return _train(cfg, run_dir, dist, scope)


def _train(cfg: TrainConfig, run_dir: Path, dist: Distributed, scope: contextlib.ExitStack) -> Path:
    """:func:`train` in a run directory this job owns (``scope`` ends before the lock)."""
    random.seed(cfg.seed + dist.rank)
    torch.manual_seed(cfg.seed + dist.rank)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dist.device.type == "cuda")
    autocast = lambda: torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

    resume_from, config_changed = _prepare_run_dir(cfg, run_dir)
    start_path = str(resume_from) if resume_from else cfg.model
    # FSDP moves each rank's shards to its device; the whole model never has to fit there.
    sharded = cfg.parallel == "fsdp" and dist.world_size > 1
    load_device = torch.device("cpu") if sharded else dist.device
    dtype = getattr(torch, cfg.param_dtype)
    with _checkpoint_errors(resume_from):
        tokenizer = load_tokenizer(start_path)
    # LoRA resumes as the base model plus the checkpoint's adapter (its weights are merged), so
    # a base model that cannot be loaded is the user's --model, not the checkpoint.
    model_path = cfg.model if cfg.lora_rank else start_path
    with _checkpoint_errors(resume_from if model_path == start_path else None):
        model = load_model(model_path, load_device, dtype)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.lora_rank:
        adapter = resume_from / ADAPTER_DIR if resume_from else None
        with _checkpoint_errors(resume_from):
            model = add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules, adapter)
    model.train()
    ref_scorer = None
    if cfg.kl_coef > 0:
        ref_scorer = TokenScorer(
            load_model(cfg.model, load_device, dtype).eval().requires_grad_(False),
            cfg.logprob_chunk_size,
            cfg.topk_logprobs,
            cfg.topk_mode,
            cfg.temperature,
        )
        # Frozen, it is never wrapped (FSDP shards it in place), so it stays a TokenScorer.
        parallelize(ref_scorer, cfg.parallel, dist, bf16, trainable=False)

    examples = load_examples(cfg.data, cfg.prompt_field, cfg.answer_field)
    encoded = [
        encode_prompt(tokenizer, e.prompt, cfg.prompt_template, cfg.chat_template) for e in examples
    ]
    usable = [i for i, ids in enumerate(encoded) if len(ids) <= cfg.max_prompt_length]
    if not usable:
        raise UsageError(
            f"max_prompt_length: all {len(examples)} prompts are longer than {cfg.max_prompt_length} tokens"
        )
    prompts, answers = [encoded[i] for i in usable], [examples[i].answer for i in usable]

    scorer = TokenScorer(
        model, cfg.logprob_chunk_size, cfg.topk_logprobs, cfg.topk_mode, cfg.temperature
    )
    trainable = parallelize(scorer, cfg.parallel, dist, bf16)
    # The fused kernel (CPU and CUDA, also on FSDP's DTensors) is several times faster than
    # the per-tensor loop. Built after sharding, so it holds (and updates) the shards.
    optimizer = torch.optim.AdamW(
        # Only what trains: with LoRA the adapters (the frozen base has no AdamW state).
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=dist.device.type in ("cpu", "cuda"),
    )

    def lr_factor(optimizer_step: int) -> float:
        """Linear warm-up over ``warmup_steps`` optimiser steps."""
        return min(1.0, (optimizer_step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    sampler = PromptSampler(len(prompts), cfg.seed, dist.rank, dist.world_size)
    step = 0
    if resume_from is not None:
        with _checkpoint_errors(resume_from):
            trainer_state, rank_state = load_checkpoint_state(resume_from, dist.rank)
            load_optimizer_state(scorer, optimizer, trainer_state["optimizer"])
            scheduler.load_state_dict(trainer_state["scheduler"])
            step = trainer_state["step"]
            sampler.load_state_dict(rank_state["sampler"])
            set_rng_state(rank_state["rng"])
            sampled_from = trainer_state["problems"]
        if sampled_from != usable:
            raise UsageError(
                f"resume: the problems that fit this prompt_template, chat_template and "
                f"max_prompt_length ({len(usable)} of {len(examples)}) are not the "
                f"{len(sampled_from)} that the checkpoint's data position indexes; keep the "
                "saved values, or use --overwrite to start over"
            )
        if step > cfg.max_steps:
            # The run would end at once, with a config.yaml that says it had fewer steps.
            raise UsageError(
                f"max_steps: {cfg.max_steps} is below the {step} steps of the checkpoint to "
                f"resume; give at least {step}, or use --overwrite to start over"
            )
        # The optimiser and scheduler state hold the lr and weight decay they were saved with
        # (the warm-up function is not saved: lr_factor already has the new warmup_steps);
        # the config, which --resume may have changed, applies from here on.
        scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group.update(
                initial_lr=cfg.lr,
                lr=cfg.lr * lr_factor(scheduler.last_epoch),
                weight_decay=cfg.weight_decay,
            )
    # The hf backend generates through the scorer: under FSDP that gathers the weights.
    rollout = make_rollout(scorer, tokenizer, start_path, cfg, seed=cfg.seed + dist.rank)
    # Every check of the new settings has passed: from here on the run writes.
    old_run_done = _start_writing(cfg, run_dir, dist, resume_from, config_changed, scope)
    logger = MetricLogger(run_dir, enabled=dist.is_main, resume_step=step)
    loss = LOSSES[cfg.algo]
    reward_fn = weighted_reward(cfg.reward, cfg.answer_format)

    def checkpoint() -> None:
        save_checkpoint(
            run_dir,
            step,
            model,
            tokenizer,
            trainer_state={
                "optimizer": optimizer_state(scorer, optimizer),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "problems": usable,
            },
            rank_state={"rng": rng_state(), "sampler": sampler.state_dict()},
            rank=dist.rank,
            keep=cfg.keep_checkpoints,
        )
        # The new run is on disk: an old run it replaces can go (a no-op after the first).
        old_run_done()

    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        disable=not dist.is_main,
        desc=f"{cfg.algo}",
        dynamic_ncols=True,
    )
    try:
        with _StopSignal() as stop:
            while step < cfg.max_steps:
                started = time.perf_counter()
                # FSDP: sample from whole weights (hf generates with the scorer; vllm has its own).
                gathered = (
                    gathered_weights(scorer) if cfg.rollout == "hf" else contextlib.nullcontext()
                )
                with autocast(), gathered:
                    groups = collect_groups(
                        rollout, prompts, answers, sampler, tokenizer, reward_fn, cfg
                    )
                generated = time.perf_counter()
                updated, per_response = update_policy(
                    groups,
                    trainable,
                    model,
                    optimizer,
                    scheduler,
                    loss,
                    cfg,
                    tokenizer.pad_token_id,
                    dist,
                    autocast,
                    ref_scorer,
                )
                metrics = groups.stats | updated
                rollout.update_weights(model)
                step += 1
                if cfg.log_completions_every and step % cfg.log_completions_every == 0:
                    logger.log_completions(
                        step, completion_rows(groups, per_response, tokenizer, cfg)
                    )
                elapsed = time.perf_counter() - started
                metrics["perf/step_time"] = elapsed
                metrics["perf/generate_time"] = generated - started
                metrics["perf/tokens_per_s"] = sum(len(r) for r in groups.responses) / elapsed
                metrics = all_reduce_mean(metrics, dist.device)
                logger.log(step, metrics)
                bar.update()
                bar.set_postfix(
                    reward=f"{metrics['train/reward']:.3f}",
                    entropy=f"{metrics['entropy/token']:.3f}",
                    tok_s=f"{metrics['perf/tokens_per_s'] * dist.world_size:.0f}",
                )
                stopping = any_rank(stop.signum is not None, dist.device)
                if step % cfg.save_every == 0 or step == cfg.max_steps or stopping:
                    checkpoint()
                if stopping:
                    # Saved; now exit as the signal asked (128 + signal number, like a shell).
                    raise SystemExit(128 + (stop.signum or signal.SIGTERM))
    finally:
        bar.close()
        logger.close()
        shutdown()
    return run_dir
