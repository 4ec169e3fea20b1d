"""Colocated vLLM rollouts: one engine per process, weights pushed after each optimiser step.

Written against vLLM's public API (``LLM``, ``SamplingParams``, ``LLM.apply_model``,
``LLM.reset_prefix_cache``); needs a CUDA GPU and the ``era-llm[vllm]`` extra. vLLM is
imported only when this backend is built.
"""

import os
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor

from era_llm.errors import UsageError
from era_llm.rollout import Sampling

__all__ = ["VLLMRollout"]


class VLLMRollout:
    """A vLLM engine in this process that samples from the trainer's current weights.

    Args:
        model_path: Directory (or id) of the starting weights, loaded by vLLM in bf16.
        eos_token_ids: Ids that end a response.
        gpu_memory_utilization: Fraction of GPU memory vLLM may take (the trainer shares it).
        max_model_len: Context length; ``None`` uses the model's.
        seed: Engine sampling seed (give each rank its own).
        sleep: Free the engine's GPU memory between rollouts (vLLM's sleep mode): after
            generating, its KV cache is dropped and its weights are offloaded to CPU memory;
            ``update_weights`` brings the weights back, the next ``generate`` the KV cache.

    Raises:
        UsageError: vLLM is not installed, or no CUDA device is available.
    """

    def __init__(
        self,
        model_path: str,
        eos_token_ids: Sequence[int],
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        seed: int = 0,
        sleep: bool = False,
    ) -> None:
        try:
            import vllm  # pyright: ignore[reportMissingImports]  # the optional [vllm] extra
        except ImportError as error:
            raise UsageError("rollout=vllm needs vLLM: pip install 'era-llm[vllm]'") from error
        if not torch.cuda.is_available():
            raise UsageError("rollout=vllm needs a CUDA GPU; use rollout=hf on CPU")
        # Keep the engine in this process so apply_model reaches our tensors without a copy.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.eos_token_ids, self.sleep = list(eos_token_ids), sleep
        self._asleep: tuple[str, ...] = ()  # vLLM's sleep tags now released
        self.llm = vllm.LLM(
            model=str(model_path),
            dtype="bfloat16",
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            enable_prefix_caching=True,
            enable_sleep_mode=sleep,
            # Sampling defaults from vLLM, not from the model's generation_config.json.
            generation_config="vllm",
            # Under torchrun every rank drives its own engine on its own GPU.
            distributed_executor_backend="external_launcher" if distributed else None,
        )

    def generate(self, prompts: Sequence[list[int]], sampling: Sampling) -> list[list[int]]:
        """``len(prompts) * sampling.n`` responses, grouped by prompt."""
        from vllm import SamplingParams  # pyright: ignore[reportMissingImports]  # [vllm] extra

        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=self.eos_token_ids,
            # Neutral, so that what samples is softmax(logits / T) as the trainer scores it.
            repetition_penalty=1.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            min_p=0.0,
        )
        self._wake("weights", "kv_cache")
        # vLLM picks its own dtypes and kernels: a caller's autocast (the trainer samples
        # inside one for the hf backend) must not reach the engine, which runs in this process.
        with torch.autocast("cuda", enabled=False):
            outputs = self.llm.generate(
                [{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False
            )
        if self.sleep:
            self.llm.sleep(level=1)
            self._asleep = ("weights", "kv_cache")
        responses = []
        for output in outputs:
            for completion in output.outputs:
                tokens = list(completion.token_ids)
                # A response stopped by EOS ends with that token, as with the hf backend (vLLM
                # reports the stopping id in stop_reason, None for the model's own EOS).
                if completion.finish_reason == "stop" and (
                    not tokens or tokens[-1] not in self.eos_token_ids
                ):
                    stop = completion.stop_reason
                    tokens.append(stop if isinstance(stop, int) else self.eos_token_ids[0])
                responses.append(tokens)
        return responses

    def update_weights(self, model: Any) -> None:
        """Copy ``model``'s parameters into the engine and drop its stale prefix cache.

        Collective under FSDP: every rank gathers the whole weights for its own engine.
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from era_llm.lora import is_lora, merged_state_dict

        # vLLM holds the plain architecture: a LoRA model sends its merged weights.
        state = (
            merged_state_dict(model)
            if is_lora(model)
            # Typed as any state value; a model's full state dict holds only tensors.
            else cast(
                dict[str, Tensor],
                get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)),
            )
        )
        weights = [(name, tensor.detach()) for name, tensor in state.items()]
        # Asleep, the engine's KV cache stays freed until the next generate.
        self._wake("weights")
        self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        self.llm.reset_prefix_cache()

    def _wake(self, *tags: str) -> None:
        """Give back to the engine whichever of ``tags`` its sleep released."""
        waking = [tag for tag in tags if tag in self._asleep]
        if waking:
            self.llm.wake_up(tags=waking)
            self._asleep = tuple(tag for tag in self._asleep if tag not in waking)
