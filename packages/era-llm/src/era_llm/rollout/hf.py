"""Rollouts with transformers ``generate`` on the training model itself."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from era_llm.rollout import Sampling

__all__ = ["HFRollout", "trim_response"]


def trim_response(tokens: list[int], eos_token_ids: Sequence[int]) -> list[int]:
    """Cut a generated row after its first EOS token (``generate`` pads finished rows)."""
    for index, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[: index + 1]
    return tokens


@contextmanager
def _without_model_defaults(model: Any) -> Iterator[None]:
    """Generate with an empty model ``generation_config``.

    transformers fills each field our config leaves ``None`` from the model's own config, and
    the neutral value of several (``bad_words_ids``, ``suppress_tokens``, ``min_p``,
    ``sequence_bias``, ``forced_eos_token_id``, ...) is ``None``; without the model's config
    there is nothing to fill them from.
    """
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


class HFRollout:
    """Samples from the very module being trained, so ``update_weights`` has nothing to do.

    Prompts are left-padded in batches of ``batch_size``. Sampling is softmax(logits / T)
    restricted only by ``top_p``: every other field of the ``GenerationConfig`` that could
    change the distribution is set to its neutral value, and the model's own
    ``generation_config`` (from ``generation_config.json``, e.g. Qwen's
    ``repetition_penalty=1.05``) is set aside while generating, because transformers fills
    every field left ``None`` from it. So responses come from the policy that is trained.
    Randomness comes from torch's global RNG (seeded and checkpointed by the trainer).

    Args:
        model: A transformers causal LM, or a ``TokenScorer`` (which forwards ``generate``).
        pad_token_id: Id used to left-pad prompts.
        eos_token_ids: Ids that end a response.
        batch_size: Prompts per ``generate`` call.
    """

    def __init__(
        self, model: Any, pad_token_id: int, eos_token_ids: Sequence[int], batch_size: int = 64
    ) -> None:
        self.model, self.pad_token_id = model, pad_token_id
        self.eos_token_ids, self.batch_size = list(eos_token_ids), batch_size

    def generate(self, prompts: Sequence[list[int]], sampling: Sampling) -> list[list[int]]:
        """``len(prompts) * sampling.n`` responses, grouped by prompt."""
        from transformers import GenerationConfig

        config = GenerationConfig(
            do_sample=True,
            num_beams=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            encoder_repetition_penalty=1.0,
            length_penalty=1.0,
            no_repeat_ngram_size=0,
            # min_new_tokens stays None: with the model's own config set aside nothing fills it,
            # and setting both makes transformers warn on every call.
            min_length=0,
            guidance_scale=1.0,
            remove_invalid_values=False,
            renormalize_logits=False,
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=sampling.n,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids,
        )
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        responses: list[list[int]] = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                batch = prompts[start : start + self.batch_size]
                width = max(len(p) for p in batch)
                input_ids = torch.tensor(
                    [[self.pad_token_id] * (width - len(p)) + p for p in batch], device=device
                )
                mask = torch.tensor(
                    [[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device
                )
                with torch.no_grad(), _without_model_defaults(self.model):
                    # Ranks sample independently (different call counts under dynamic
                    # sampling), so no lockstep: transformers would turn it on for FSDP
                    # modules, where the trainer samples from gathered weights instead.
                    output = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=mask,
                        generation_config=config,
                        synced_gpus=False,
                    )
                responses += [
                    trim_response(row, self.eos_token_ids) for row in output[:, width:].tolist()
                ]
        finally:
            self.model.train(was_training)
        return responses

    def update_weights(self, model: Any) -> None:
        """Nothing to copy: generation runs on the trained module."""
