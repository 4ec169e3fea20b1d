"""Rollouts with transformers ``generate`` on the training model itself."""

from collections.abc import Sequence
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


class HFRollout:
    """Samples from the very module being trained, so ``update_weights`` has nothing to do.

    Prompts are left-padded in batches of ``batch_size``; sampling uses the full
    distribution (``top_k`` off) so responses come from the policy that is trained.
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
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
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
                with torch.no_grad():
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
