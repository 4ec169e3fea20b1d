"""Causal-LM loading, and response-token log-probs and entropies without full-vocabulary logits."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from era_core.entropy import categorical_entropy, linear_logprobs_and_entropy, topk_logprobs
from era_core.validation import check_positive, check_range
from era_llm.errors import UsageError

__all__ = ["TokenScorer", "enable_activation_checkpointing", "load_model", "load_tokenizer"]


@contextmanager
def _loading(path: str) -> Iterator[None]:
    """Turn transformers' error for a bad path or id into a UsageError naming the option.

    transformers raises OSError for a missing model and ValueError for a directory it cannot
    make a tokenizer or model from.
    """
    try:
        yield
    except (OSError, ValueError) as error:
        where = "a directory without a model" if Path(path).is_dir() else "no such directory"
        raise UsageError(
            f"model: cannot load {path!r} ({where}, and not a model id that could be fetched): "
            + " ".join(str(error).split())  # one line, as the CLI reports it
        ) from error


def load_tokenizer(path: str) -> Any:
    """A transformers tokenizer with a pad token (the EOS token when it has none).

    Raises:
        UsageError: ``path`` is neither a model directory nor a loadable model id.
    """
    from transformers import AutoTokenizer

    with _loading(path):
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Any:
    """Load a causal LM, by default in float32 (the master weights; bf16 runs use autocast).

    Raises:
        UsageError: ``path`` is neither a model directory nor a loadable model id.
    """
    from transformers import AutoModelForCausalLM

    with _loading(path):
        # Any, as models are throughout: pyright reads transformers' functools.wraps-decorated
        # ``to`` as an unbound function and would take ``device`` for ``self``.
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device)


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute decoder activations in backward (non-reentrant) to save memory.

    transformers 5.2x renamed ``gradient_checkpointing_enable``; both spellings are served.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _topk_chunk(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    scale: Tensor | None,
    k: int,
    outside: Literal["mask", "renormalise"],
) -> tuple[Tensor, Tensor]:
    logits = hidden @ weight.T
    entropy = categorical_entropy(logits)
    if scale is not None:
        logits = logits.float() * scale.unsqueeze(-1)
    return topk_logprobs(logits, labels, k, outside=outside), entropy


class TokenScorer(nn.Module):
    """Log-probs and entropies of the response tokens of a batch under a causal LM.

    The decoder yields hidden states; era-core's chunked linear pass turns them into
    log-probs (under an optional per-token logit scale, for GRPO-ERA) and entropies (of the
    original logits) a chunk of tokens at a time, so float32 ``[tokens, vocab]`` logits never
    exist for the whole batch. Wrap this module (not the LM) in DDP or FSDP: its forward is
    the training forward. It also stands in for the LM in a rollout (``generate``,
    ``generation_config``), so that under FSDP generation gathers weights through it.

    Args:
        model: A transformers causal LM with a bias-free output projection.
        chunk_size: Tokens per logits chunk; ``None`` lets era-core pick ~256 MiB chunks.
        topk: ``0`` for full-vocabulary log-probs, else log-probs over the top ``k`` logits
            (the paper's low-variance option, 20); entropies stay full-vocabulary.
        topk_mode: What a sampled token outside the top ``k`` gets: ``"mask"`` (the
            authors' code: log-prob ``-1e4``, no gradient) or ``"renormalise"`` (it joins the
            normalising set and keeps its gradient).
        temperature: The sampling temperature: logits are divided by it before every
            log-prob and entropy, so training scores the distribution that sampled.
    """

    def __init__(
        self,
        model: Any,
        chunk_size: int | None = None,
        topk: int = 0,
        topk_mode: Literal["mask", "renormalise"] = "mask",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise ValueError("model: output projections with a bias are not supported")
        if getattr(model.config, "final_logit_softcapping", None):
            raise ValueError("model: final_logit_softcapping is not supported")
        if chunk_size is not None:
            check_range("logprob_chunk_size", chunk_size, 1)
        check_range("topk_logprobs", topk, 0, head.weight.shape[0])
        if topk_mode not in ("mask", "renormalise"):
            raise ValueError(f"topk_mode must be 'mask' or 'renormalise', got {topk_mode!r}")
        check_positive("temperature", temperature)
        self.model, self.chunk_size, self.topk = model, chunk_size, topk
        self.topk_mode, self.temperature = topk_mode, temperature

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_start: int,
        logit_scale: Tensor | None = None,
        shaping: Callable[[Tensor], Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Score the tokens from ``response_start`` on.

        Args:
            input_ids: Shape ``(batch, seq)``: left-padded prompts, then right-padded responses.
            attention_mask: Shape ``(batch, seq)``.
            response_start: Column where responses begin (the padded prompt length).
            logit_scale: Optional per-token scale of the response logits,
                ``(batch, seq - response_start)``.
            shaping: Instead of ``logit_scale``: a function from this pass's token entropies
                (no gradient) to the scale. On-policy GRPO-ERA decides its scale from the
                policy being trained, so one decoder pass serves both; only a no-grad pass
                through the output projection is added.

        Returns:
            ``(logprobs, entropy, shaping_entropy)``: float32 (float64 for a float64
            model), shape
            ``(batch, seq - response_start)``; ``shaping_entropy`` is what ``shaping`` was
            called with (``None`` without ``shaping``).
        """
        # Positions count real tokens only, as generate() does with left padding.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.model.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        # The logits at position t predict token t + 1.
        hidden = hidden[:, response_start - 1 : -1]
        labels = input_ids[:, response_start:]
        weight = self.model.get_output_embeddings().weight
        device = input_ids.device.type
        dtype = (
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        )
        # era-core does its own float32 softmax math; hand it one dtype, outside autocast.
        with torch.autocast(device, enabled=False):
            hidden, weight = hidden.to(dtype), weight.to(dtype)
            if self.temperature != 1.0:
                # (h / T) @ W.T is the sampler's logits / T; the projection stays linear.
                hidden = hidden / self.temperature
            shaping_entropy = None
            if shaping is not None:
                with torch.no_grad():
                    shaping_entropy = linear_logprobs_and_entropy(
                        hidden, weight, labels, self.chunk_size
                    )[1]
                logit_scale = shaping(shaping_entropy)
            if self.topk == 0:
                logprobs, entropy = self._linear_forward(hidden, weight, labels, logit_scale)
            else:
                logprobs, entropy = self._topk_forward(hidden, weight, labels, logit_scale)
        # Not views: FSDP warns about view outputs (an in-place op would skip its backward
        # hook); copying these (batch, tokens) tensors costs nothing next to the pass.
        return logprobs.clone(), entropy.clone(), shaping_entropy

    @property
    def generation_config(self) -> Any:
        """The LM's generation config (EOS ids for the rollout; set aside while sampling)."""
        return self.model.generation_config

    @generation_config.setter
    def generation_config(self, config: Any) -> None:
        self.model.generation_config = config

    def generate(self, **kwargs: Any) -> Tensor:
        """The LM's ``generate``; FSDP registers it as a forward method of this module."""
        return self.model.generate(**kwargs)

    def _linear_forward(
        self, hidden: Tensor, weight: Tensor, labels: Tensor, logit_scale: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if logit_scale is None:
            return linear_logprobs_and_entropy(hidden, weight, labels, self.chunk_size)
        # A scaled token costs era-core a second softmax (entropy of z, log-prob of s * z);
        # tokens with scale 1 (most: A <= 0, or entropy inside the band) skip it.
        shape = labels.shape
        hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        scale = logit_scale.detach().reshape(-1)
        scaled = scale != 1
        # era-core computes in float32, or float64 for a float64 model: match what it returns.
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        logprobs = hidden.new_zeros(labels.shape, dtype=dtype)
        entropy = torch.zeros_like(logprobs)
        parts = (
            ((~scaled).nonzero().squeeze(1), None),
            (scaled.nonzero().squeeze(1), scale[scaled]),
        )
        for rows, row_scale in parts:
            if rows.numel():
                part_logprobs, part_entropy = linear_logprobs_and_entropy(
                    hidden[rows], weight, labels[rows], self.chunk_size, row_scale
                )
                logprobs = logprobs.index_copy(0, rows, part_logprobs)
                entropy = entropy.index_copy(0, rows, part_entropy)
        return logprobs.reshape(shape), entropy.reshape(shape)

    def _topk_forward(
        self, hidden: Tensor, weight: Tensor, labels: Tensor, logit_scale: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        shape = labels.shape
        hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        scale = None if logit_scale is None else logit_scale.detach().reshape(-1).float()
        chunk = self.chunk_size or max(1, (1 << 26) // weight.shape[0])
        outputs = []
        for start in range(0, labels.shape[0], chunk):
            rows = slice(start, start + chunk)
            # Recompute each chunk's logits in backward rather than keeping them.
            outputs.append(
                checkpoint(
                    _topk_chunk,
                    hidden[rows],
                    weight,
                    labels[rows],
                    None if scale is None else scale[rows],
                    self.topk,
                    self.topk_mode,
                    use_reentrant=False,
                )
            )
        logprobs, entropy = (
            torch.cat(parts).reshape(shape) for parts in zip(*outputs, strict=True)
        )
        return logprobs, entropy
