import importlib.util

import pytest
import torch

from era_llm.policy import load_model, load_tokenizer
from era_llm.rollout import RolloutConfig, Sampling, make_rollout
from era_llm.rollout.hf import trim_response


def test_trim_response():
    assert trim_response([4, 5, 1, 0, 0], [1]) == [4, 5, 1]
    assert trim_response([4, 5, 6], [1]) == [4, 5, 6]
    assert trim_response([7, 2, 1], [1, 2]) == [7, 2]


def test_sampling_refuses_bad_values():
    with pytest.raises(ValueError, match="temperature"):
        Sampling(n=2, temperature=0.0, top_p=1.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(n=2, temperature=1.0, top_p=1.5, max_new_tokens=4)


def test_hf_rollout_groups_and_trims(tiny_model_dir):
    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    model.train()
    rollout = make_rollout(
        model, tokenizer, str(tiny_model_dir), RolloutConfig(generation_batch_size=2)
    )
    prompts = [tokenizer("1+2=").input_ids, tokenizer("3=").input_ids, tokenizer("45+1=").input_ids]
    sampling = Sampling(n=3, temperature=1.0, top_p=1.0, max_new_tokens=5)
    torch.manual_seed(0)
    responses = rollout.generate(prompts, sampling)
    assert len(responses) == 9
    for response in responses:
        assert 1 <= len(response) <= 5
        # EOS only ever ends a response
        assert tokenizer.eos_token_id not in response[:-1]
    torch.manual_seed(0)
    assert rollout.generate(prompts, sampling) == responses
    assert model.training  # generate() restores the caller's mode


def _sharpen(model):
    """Scale the final norm so the logits grow 1000x: sampling becomes argmax."""
    with torch.no_grad():
        model.model.norm.weight.mul_(1000.0)


def test_hf_rollout_samples_from_updated_weights(tiny_model_dir):
    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    rollout = make_rollout(model, tokenizer, str(tiny_model_dir), RolloutConfig())
    prompts, sampling = [tokenizer("1+1=").input_ids], Sampling(8, 1.0, 1.0, 5)
    assert len({tuple(r) for r in rollout.generate(prompts, sampling)}) > 1
    _sharpen(model)
    rollout.update_weights(model)
    assert len({tuple(r) for r in rollout.generate(prompts, sampling)}) == 1


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_backend_without_vllm_says_how_to_install(tiny_model_dir):
    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    with pytest.raises(ImportError, match=r"era-llm\[vllm\]"):
        make_rollout(model, tokenizer, str(tiny_model_dir), RolloutConfig(rollout="vllm"))


@pytest.mark.vllm
@pytest.mark.gpu
def test_vllm_rollout_generates_and_takes_new_weights(tiny_model_dir):
    pytest.importorskip("vllm")
    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir), "cuda")
    rollout = make_rollout(
        model,
        tokenizer,
        str(tiny_model_dir),
        RolloutConfig(rollout="vllm", vllm_gpu_memory_utilization=0.2),
    )
    prompts = [tokenizer("1+2=").input_ids, tokenizer("3=").input_ids]
    responses = rollout.generate(
        prompts, Sampling(n=3, temperature=1.0, top_p=1.0, max_new_tokens=5)
    )
    assert len(responses) == 6 and all(1 <= len(r) <= 6 for r in responses)
    _sharpen(model)
    rollout.update_weights(model)
    responses = rollout.generate(
        prompts, Sampling(n=4, temperature=1.0, top_p=1.0, max_new_tokens=5)
    )
    # Near-greedy after the update: each prompt's four samples agree.
    assert (
        len({tuple(r) for r in responses[:4]}) == 1 and len({tuple(r) for r in responses[4:]}) == 1
    )
