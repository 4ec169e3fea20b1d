"""Rollout backends behind one small interface: sample ``n`` responses per prompt.

- ``hf``: transformers ``generate`` on the training model itself (CPU or GPU, the default).
- ``vllm``: a colocated vLLM engine whose weights are pushed after every optimiser step
  (GPU only, the ``era-llm[vllm]`` extra; imported lazily).

Both return token ids; a response that finished ends with an EOS token, one cut at
``max_new_tokens`` does not.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from era_core.validation import check_positive, check_range
from era_llm.config import help_field

__all__ = ["ROLLOUTS", "Rollout", "RolloutConfig", "Sampling", "eos_token_ids", "make_rollout"]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters shared by every backend.

    Attributes:
        n: Responses per prompt.
        temperature: Softmax temperature, ``> 0`` (1.0 samples the policy itself).
        top_p: Nucleus mass in ``(0, 1]``; 1.0 samples the full distribution.
        max_new_tokens: Response length cap.
    """

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int

    def __post_init__(self) -> None:
        check_range("n", self.n, 1)
        check_positive("temperature", self.temperature)
        check_range("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)
        check_range("max_new_tokens", self.max_new_tokens, 1)


class Rollout(Protocol):
    """What the trainer and the evaluator need from a generation backend."""

    def generate(self, prompts: Sequence[list[int]], sampling: Sampling) -> list[list[int]]:
        """``len(prompts) * n`` responses, grouped by prompt (prompt 0's ``n`` first)."""
        ...

    def update_weights(self, model: Any) -> None:
        """Make the backend sample from ``model``'s current weights."""
        ...


@dataclass(kw_only=True)
class RolloutConfig:
    """Generation settings shared by training and evaluation."""

    rollout: Literal["hf", "vllm"] = help_field(
        "hf", "generation backend: hf (transformers generate) or vllm (GPU, era-llm[vllm] extra)"
    )
    temperature: float = help_field(1.0, "sampling temperature (> 0)")
    top_p: float = help_field(1.0, "nucleus sampling mass in (0, 1]")
    max_new_tokens: int = help_field(1024, "maximum response length in tokens")
    generation_batch_size: int = help_field(64, "prompts per generate() call (hf backend)")
    vllm_gpu_memory_utilization: float = help_field(0.3, "GPU memory fraction vLLM may take")
    vllm_max_model_len: int | None = help_field(None, "vLLM context length (None: the model's)")
    vllm_sleep: bool = help_field(
        False,
        "free vLLM's GPU memory while training (sleep mode: KV cache dropped, weights "
        "offloaded to CPU after each rollout; untested without a GPU)",
    )

    def __post_init__(self) -> None:
        check_positive("temperature", self.temperature)
        check_range("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("generation_batch_size", self.generation_batch_size, 1)
        check_range(
            "vllm_gpu_memory_utilization",
            self.vllm_gpu_memory_utilization,
            0.0,
            1.0,
            low_inclusive=False,
        )
        if self.vllm_max_model_len is not None:
            check_range("vllm_max_model_len", self.vllm_max_model_len, 1)


def _hf(model: Any, tokenizer: Any, model_path: str, cfg: RolloutConfig, seed: int) -> Rollout:
    from era_llm.rollout.hf import HFRollout

    return HFRollout(
        model,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_ids=eos_token_ids(model, tokenizer),
        batch_size=cfg.generation_batch_size,
    )


def _vllm(model: Any, tokenizer: Any, model_path: str, cfg: RolloutConfig, seed: int) -> Rollout:
    from era_llm.rollout.vllm import VLLMRollout

    return VLLMRollout(
        model_path,
        eos_token_ids=eos_token_ids(model, tokenizer),
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        max_model_len=cfg.vllm_max_model_len,
        seed=seed,
        sleep=cfg.vllm_sleep,
    )


ROLLOUTS: dict[str, Callable[[Any, Any, str, RolloutConfig, int], Rollout]] = {
    "hf": _hf,
    "vllm": _vllm,
}


def make_rollout(
    model: Any, tokenizer: Any, model_path: str, cfg: RolloutConfig, seed: int = 0
) -> Rollout:
    """Build the backend named by ``cfg.rollout``.

    Args:
        model: The training model, or the ``TokenScorer`` around it (``hf`` samples from
            it directly; the trainer passes the scorer, through which FSDP gathers weights).
        tokenizer: Its tokenizer.
        model_path: Directory or id the weights came from (``vllm`` loads from it, then
            receives updates through ``update_weights``).
        cfg: Backend settings.
        seed: Sampling seed of the engine (``vllm``; ``hf`` uses torch's global RNG).
    """
    return ROLLOUTS[cfg.rollout](model, tokenizer, model_path, cfg, seed)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a response (the model's generation config, else the tokenizer's).

    ``model`` may be ``None`` (vLLM evaluation loads no transformers copy).
    """
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        raise ValueError(
            "model: neither the generation config nor the tokenizer defines an EOS token"
        )
    return [ids] if isinstance(ids, int) else list(ids)
