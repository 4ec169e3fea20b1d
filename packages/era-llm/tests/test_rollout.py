import copy
import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch

from era_llm.errors import UsageError
from era_llm.policy import TokenScorer, load_model, load_tokenizer
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


@pytest.fixture
def opinionated_model_dir(tiny_model_dir, tmp_path):
    """The tiny model with a generation_config.json that would change sampling if obeyed."""
    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    config = model.generation_config
    config.do_sample, config.temperature, config.top_k = True, 0.7, 3
    config.repetition_penalty, config.no_repeat_ngram_size = 1.8, 2
    config.min_new_tokens, config.bad_words_ids = 4, [tokenizer("7").input_ids]
    config.suppress_tokens = tokenizer("3").input_ids
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_trainer_scores_every_sampled_token_as_the_sampler_did(
    opinionated_model_dir, monkeypatch, temperature
):
    from era_llm.trainer import collate

    path = str(opinionated_model_dir)
    tokenizer, model = load_tokenizer(path), load_model(path)
    assert model.generation_config.repetition_penalty == 1.8  # the file was read
    scorer = TokenScorer(model, temperature=temperature)
    # Record what the sampler drew from: the processed scores generate() samples from.
    scores = []
    generate = model.generate

    def recording_generate(generation_config, **kwargs):
        generation_config = copy.deepcopy(generation_config)
        generation_config.output_scores = generation_config.return_dict_in_generate = True
        output = generate(generation_config=generation_config, **kwargs)
        scores.append(torch.stack(output.scores, dim=1))
        return output.sequences

    monkeypatch.setattr(model, "generate", recording_generate)
    rollout = make_rollout(scorer, tokenizer, path, RolloutConfig(temperature=temperature))
    prompts = [tokenizer("12+3=").input_ids, tokenizer("9=").input_ids]
    torch.manual_seed(0)
    responses = rollout.generate(prompts, Sampling(6, temperature, 1.0, 10))
    assert model.generation_config.repetition_penalty == 1.8  # restored after sampling
    sampler = scores[0].log_softmax(-1)  # (responses, steps, vocab)
    ids, attention, mask, start = collate(prompts, responses, tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        trainer = scorer(ids, attention, start)[0]
    labels = ids[:, start:]
    sampled = sampler[:, : labels.shape[1]].gather(-1, labels[..., None]).squeeze(-1)
    valid = mask.bool()
    # The model's file would have repeated, banned and suppressed tokens: they were sampled.
    assert any(len(set(r)) < len(r) for r in responses)
    torch.testing.assert_close(trainer[valid], sampled[valid], atol=1e-5, rtol=1e-5)


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
    with pytest.raises(UsageError, match=r"era-llm\[vllm\]"):
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


class _FakeEngineModel:
    def __init__(self):
        self.loaded = {}

    def load_weights(self, weights):
        self.loaded.update(weights)


class _FakeLLM:
    """Records what VLLMRollout asks of vLLM's public API."""

    def __init__(self, **kwargs):
        self.kwargs, self.model, self.prefix_resets = kwargs, _FakeEngineModel(), 0
        self.asleep, self.calls = set(), []

    def sleep(self, level):
        assert self.kwargs["enable_sleep_mode"] and level == 1
        self.asleep = {"weights", "kv_cache"}
        self.calls.append("sleep")

    def wake_up(self, tags=None):
        self.asleep -= set(tags)
        self.calls.append(f"wake_up {','.join(tags)}")

    def generate(self, prompts, params, use_tqdm):
        assert not self.asleep, "generate on a sleeping engine"
        self.prompts, self.params = prompts, params
        self.autocast_seen = torch.is_autocast_enabled("cuda")
        out = SimpleNamespace
        completions = [
            out(token_ids=(7, 8, 2), finish_reason="stop", stop_reason=None),  # EOS included
            out(token_ids=(7, 8), finish_reason="stop", stop_reason=None),  # EOS left out
            out(token_ids=(7, 3), finish_reason="stop", stop_reason=3),  # another stop id
            out(token_ids=(7, 7, 7), finish_reason="length", stop_reason=None),
        ]
        return [out(outputs=completions[: params.n]) for _ in prompts]

    def apply_model(self, function):
        assert "weights" not in self.asleep, "weights loaded into a sleeping engine"
        self.calls.append("load weights")
        return [function(self.model)]

    def reset_prefix_cache(self):
        self.prefix_resets += 1


def test_vllm_backend_our_side_of_the_interface(monkeypatch, tiny_model_dir):
    fake = SimpleNamespace(LLM=_FakeLLM, SamplingParams=lambda **kw: SimpleNamespace(**kw))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # restored after the test
    from era_llm.rollout.vllm import VLLMRollout

    rollout = VLLMRollout(
        str(tiny_model_dir), eos_token_ids=[2, 3], gpu_memory_utilization=0.5, seed=4
    )
    assert rollout.llm.kwargs["model"] == str(tiny_model_dir) and rollout.llm.kwargs["seed"] == 4
    # The caller's autocast (the trainer's bf16) does not reach the engine.
    torch.set_autocast_enabled("cuda", True)
    try:
        responses = rollout.generate(
            [[5, 6], [9]], Sampling(n=4, temperature=0.7, top_p=0.9, max_new_tokens=3)
        )
    finally:
        torch.set_autocast_enabled("cuda", False)
    assert rollout.llm.autocast_seen is False
    assert rollout.llm.kwargs["enable_sleep_mode"] is False and rollout.llm.calls == []
    assert rollout.llm.prompts == [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [9]}]
    params = rollout.llm.params
    assert (params.n, params.temperature, params.top_p, params.max_tokens) == (4, 0.7, 0.9, 3)
    assert (params.repetition_penalty, params.presence_penalty, params.min_p) == (1.0, 0.0, 0.0)
    assert rollout.llm.kwargs["generation_config"] == "vllm"
    # Every finished response ends with its EOS; a length-capped one does not.
    assert responses[:4] == [[7, 8, 2], [7, 8, 2], [7, 3], [7, 7, 7]]
    assert len(responses) == 8

    model = load_model(str(tiny_model_dir))
    rollout.update_weights(model)
    assert set(rollout.llm.model.loaded) == set(model.state_dict())
    assert rollout.llm.prefix_resets == 1


def test_vllm_sleep_frees_the_engine_while_training(monkeypatch, tiny_model_dir):
    fake = SimpleNamespace(LLM=_FakeLLM, SamplingParams=lambda **kw: SimpleNamespace(**kw))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from era_llm.rollout.vllm import VLLMRollout

    rollout = VLLMRollout(str(tiny_model_dir), eos_token_ids=[2], sleep=True)
    assert rollout.llm.kwargs["enable_sleep_mode"] is True
    model = load_model(str(tiny_model_dir))
    sampling = Sampling(n=2, temperature=1.0, top_p=1.0, max_new_tokens=3)
    for _ in range(2):  # two training steps: sample, (train), push weights
        rollout.generate([[5]], sampling)
        assert rollout.llm.asleep == {"weights", "kv_cache"}  # nothing held while training
        rollout.update_weights(model)
        assert rollout.llm.asleep == {"kv_cache"}
    rollout.generate([[5]], sampling)  # evaluation without a weight push also wakes it
    assert rollout.llm.calls == [
        "sleep",
        "wake_up weights",
        "load weights",
        "wake_up kv_cache",
        "sleep",
        "wake_up weights",
        "load weights",
        "wake_up kv_cache",
        "sleep",
    ]
