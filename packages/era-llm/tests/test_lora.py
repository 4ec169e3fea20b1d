"""LoRA adapters (PEFT) and bf16 weights: merged weights, frozen base, checkpoints, dtypes."""

import copy
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
from tiny_runs import parity_reward, tiny_train_config

from era_core.cli import LOCK_FILE, UsageError
from era_llm import rewards
from era_llm.cli import main
from era_llm.lora import ADAPTER_DIR, add_lora, is_lora, merged_state_dict
from era_llm.policy import TokenScorer, load_model
from era_llm.trainer import train

pytest.importorskip("peft")


def _cfg(model_dir, data, out, **overrides):
    lora = dict(max_steps=2, lora_rank=4, lora_alpha=8.0, dynamic_sampling=False)
    return tiny_train_config(model_dir, data, out, **(lora | overrides))


def _lora_model(model_dir, targets=("all-linear",)):
    model = add_lora(load_model(str(model_dir)), 4, 8.0, list(targets))
    # PEFT starts B at zero (an exact no-op); give every adapter a real update.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def _batch():
    ids = torch.tensor([[0, 4, 5, 6, 7, 8, 9], [3, 4, 6, 8, 10, 12, 1]])
    return ids, torch.ones_like(ids), 3


def test_merged_weights_equal_peft_merge_and_leave_the_model_unchanged(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merged_state_dict(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=0)
    plain = load_model(str(tiny_model_dir))
    changed = [k for k, v in plain.state_dict().items() if not torch.equal(v, merged[k])]
    # every linear layer of the decoder, not the (tied) embedding / output projection
    assert changed and all("proj" in k for k in changed)

    # The plain architecture with the merged weights scores tokens as the adapted model does.
    plain.load_state_dict(merged)
    ids, attention, start = _batch()
    with torch.no_grad():
        adapted = TokenScorer(model)(ids, attention, start)[0]
        merged_scores = TokenScorer(plain)(ids, attention, start)[0]
    torch.testing.assert_close(merged_scores, adapted, rtol=1e-5, atol=1e-5)


def test_target_modules_choose_what_is_adapted(tiny_model_dir):
    model = _lora_model(tiny_model_dir, targets=("q_proj", "v_proj"))
    adapted = {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted and all(n.endswith(("q_proj", "v_proj")) for n in adapted)
    assert is_lora(model) and not is_lora(load_model(str(tiny_model_dir)))


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_lora_training_freezes_the_base_and_checkpoints_merged_weights(
    tiny_model_dir, addition_data, tmp_path, monkeypatch, param_dtype
):
    monkeypatch.setitem(rewards.REWARDS, "math-verify", parity_reward)
    run = train(_cfg(tiny_model_dir, addition_data, tmp_path / "run", param_dtype=param_dtype))
    dtype = getattr(torch, param_dtype)
    checkpoint = run / "checkpoints" / "step-00000002"
    assert (checkpoint / ADAPTER_DIR / "adapter_config.json").is_file()
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)["optimizer"]["state"]
    assert state and all(".lora_" in name for name in state)

    base = load_model(str(tiny_model_dir), dtype=dtype)
    trained = add_lora(
        load_model(str(tiny_model_dir), dtype=dtype),
        4,
        8.0,
        ["all-linear"],
        checkpoint / ADAPTER_DIR,
    )
    # The checkpoint's plain weights (what eval and vLLM load) are the starting model plus
    # the saved adapter's update, bit for bit: the base stayed frozen.
    merged = load_model(str(checkpoint), dtype=dtype).state_dict()
    expected = merged_state_dict(trained)
    assert any(not torch.equal(merged[k], base.state_dict()[k]) for k in merged)
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=0)


def test_bf16_weights_keep_weights_and_adam_state_in_bf16(
    tiny_model_dir, addition_data, tmp_path, monkeypatch
):
    monkeypatch.setitem(rewards.REWARDS, "math-verify", parity_reward)
    run = train(
        _cfg(tiny_model_dir, addition_data, tmp_path / "run", lora_rank=0, param_dtype="bfloat16")
    )
    checkpoint = run / "checkpoints" / "step-00000002"
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)["optimizer"]["state"]
    assert {v["exp_avg"].dtype for v in state.values()} == {torch.bfloat16}
    weights = load_model(str(checkpoint), dtype=torch.bfloat16).state_dict()
    start = load_model(str(tiny_model_dir), dtype=torch.bfloat16).state_dict()
    assert any(not torch.equal(weights[k], start[k]) for k in start)
    assert all(torch.isfinite(v.float()).all() for v in weights.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lora_rank": -1}, "lora_rank must be in"),
        ({"lora_alpha": 0.0}, "lora_alpha must be"),
        ({"lora_target_modules": []}, "lora_target_modules: name at least one"),
        ({"parallel": "fsdp"}, "LoRA under fsdp is not supported"),
    ],
)
def test_lora_config_refuses_bad_values(tiny_model_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        _cfg(tiny_model_dir, "d", "o", **overrides)


def test_vllm_receives_the_merged_weights_of_a_lora_model(monkeypatch, tiny_model_dir):
    loaded = {}
    engine_model = SimpleNamespace(load_weights=lambda weights: loaded.update(weights))
    llm = SimpleNamespace(
        apply_model=lambda function: [function(engine_model)], reset_prefix_cache=lambda: None
    )
    fake = SimpleNamespace(LLM=lambda **kwargs: llm)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # restored after the test
    from era_llm.rollout.vllm import VLLMRollout

    model = _lora_model(tiny_model_dir)
    VLLMRollout(str(tiny_model_dir), eos_token_ids=[1]).update_weights(model)
    # vLLM's plain architecture gets plain names and the adapters' update merged in.
    expected = merged_state_dict(model)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())


def test_adapters_stay_float32_over_a_bf16_base(tiny_model_dir):
    # What the README's memory table counts: 2 bytes per frozen base weight, and float32
    # adapters (PEFT's default) with float32 gradients and AdamW state.
    model = add_lora(load_model(str(tiny_model_dir), dtype=torch.bfloat16), 4, 8.0, ["all-linear"])
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}


def test_lora_without_peft_says_how_to_install(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'era-llm\[lora\]' \(--lora-rank\)"):
        add_lora(load_model(str(tiny_model_dir)), 4, 8.0, ["all-linear"])


def test_resume_cannot_change_what_the_checkpoint_was_built_for(
    tiny_model_dir, addition_data, tmp_path, monkeypatch
):
    monkeypatch.setitem(rewards.REWARDS, "math-verify", parity_reward)
    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, addition_data, out, max_steps=1, save_every=1))
    for change in (dict(lora_rank=8), dict(lora_rank=0), dict(lora_alpha=16.0)):
        with pytest.raises(UsageError, match="cannot change in a run with a checkpoint"):
            train(_cfg(tiny_model_dir, addition_data, out, max_steps=2, resume=True, **change))


def test_resume_with_a_missing_base_model_names_the_model(
    tiny_model_dir, addition_data, tmp_path, monkeypatch
):
    monkeypatch.setitem(rewards.REWARDS, "math-verify", parity_reward)
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    out = tmp_path / "run"
    train(_cfg(base, addition_data, out, max_steps=1, save_every=1))
    shutil.rmtree(base)
    with pytest.raises(UsageError) as refused:
        train(_cfg(base, addition_data, out, max_steps=2, save_every=1, resume=True))
    assert str(base) in str(refused.value) and "checkpoint" not in str(refused.value)


def test_an_unknown_target_module_is_refused_before_anything_is_written(
    tmp_path, capsys, train_argv
):
    out = tmp_path / "run"
    argv = train_argv(out, "--lora-rank", 4, "--lora-target-modules", "q_proj", "q_prj")
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: lora_target_modules: the model has no module named q_prj (")
    assert "k_proj, lm_head" in last  # the names it has
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # no config, metrics or checkpoint
