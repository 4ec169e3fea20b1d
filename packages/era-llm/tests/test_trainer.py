import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import parity_reward, tiny_train_config

from era_core.testing import failing_torch_save, folder_digest, held_run_dir, run_digest
from era_llm import rewards, trainer
from era_llm.checkpoint import latest_checkpoint
from era_llm.cli import main
from era_llm.data import PromptSampler
from era_llm.distributed import Distributed
from era_llm.errors import UsageError
from era_llm.losses import LOSSES
from era_llm.metrics import COMPLETIONS_FILE, MetricLogger, read_metrics
from era_llm.policy import TokenScorer, enable_activation_checkpointing, load_model, load_tokenizer
from era_llm.trainer import Groups, collate, collect_groups, train, update_policy


@pytest.fixture
def parity(monkeypatch):
    monkeypatch.setitem(rewards.REWARDS, "math-verify", parity_reward)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_generations": 1}, "num_generations must be >= 2"),
        ({"num_minibatches": 3}, "num_minibatches .* must divide"),
        ({"reward": "exact"}, "reward must be NAME"),
        ({"reward": ["math-verify", "format:x"]}, "WEIGHT must be"),
        ({"lr": 0.0}, "lr must be in"),
        ({"micro_batch_size": 0}, "micro_batch_size must be in"),
    ],
)
def test_train_config_refuses_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_train_config("m", "d", "o", **overrides)


def test_collate_layout():
    ids, attention, mask, start = collate(
        [[5, 6], [7]], [[1], [2, 3], [4, 5, 6], [9]], 0, torch.device("cpu")
    )
    assert start == 2
    assert ids.tolist() == [[5, 6, 1, 0, 0], [5, 6, 2, 3, 0], [0, 7, 4, 5, 6], [0, 7, 9, 0, 0]]
    assert attention.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1],
        [0, 1, 1, 0, 0],
    ]
    assert mask.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]]


class ScriptedRollout:
    """Even prompt ids get n identical responses, odd ones two different answers."""

    def generate(self, prompts, sampling):
        out = []
        for (token,) in prompts:
            out += [[token] if token % 2 == 0 or i % 2 else [token + 1] for i in range(sampling.n)]
        return out

    def update_weights(self, model):
        pass


def _exact_reward(text, gold):
    return float(text == gold)


def test_dynamic_sampling_keeps_informative_groups(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompts = [[t] for t in (4, 5, 6, 7, 8, 9)]
    answers = [tokenizer.decode(p) for p in prompts]
    cfg = tiny_train_config(
        "m", "d", "o", prompts_per_step=2, num_generations=4, max_sampling_rounds=10
    )
    groups = collect_groups(
        ScriptedRollout(), prompts, answers, PromptSampler(6, 0), tokenizer, _exact_reward, cfg
    )
    assert len(groups.prompts) == 2 and len(groups.responses) == 8
    assert all(p[0] % 2 == 1 for p in groups.prompts)
    assert groups.stats["train/informative_frac"] == 1.0
    assert torch.all(groups.rewards.sum(1) == 2.0)


def test_dynamic_sampling_tops_up_when_rounds_run_out(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompts = [[t] for t in (4, 6, 8)]  # every group uninformative
    answers = [tokenizer.decode(p) for p in prompts]
    cfg = tiny_train_config(
        "m", "d", "o", prompts_per_step=2, num_generations=2, max_sampling_rounds=2
    )
    groups = collect_groups(
        ScriptedRollout(), prompts, answers, PromptSampler(3, 0), tokenizer, _exact_reward, cfg
    )
    assert len(groups.prompts) == 2
    assert groups.stats == {
        "train/reward": 1.0,
        "train/informative_frac": 0.0,
        "train/sampling_rounds": 2.0,
    }
    assert groups.in_loss.tolist() == [False, False]


def test_dynamic_sampling_without_a_cap_stops_when_no_group_can_be_informative(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompts = [[t] for t in (4, 6, 8)]  # every group uninformative, every reward 1
    answers = [tokenizer.decode(p) for p in prompts]
    cfg = tiny_train_config("m", "d", "o", prompts_per_step=2, num_generations=2)
    with pytest.raises(UsageError, match=r"4 prompts sampled in 2 rounds and no group"):
        collect_groups(
            ScriptedRollout(), prompts, answers, PromptSampler(3, 0), tokenizer, _exact_reward, cfg
        )


def test_dynamic_sampling_samples_until_the_batch_is_full(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    # One prompt in ten is informative; four are needed: many rounds, no cap by default.
    prompts = [[t] for t in (5, 4, 6, 8, 10, 12, 14, 16, 18, 20)]
    answers = [tokenizer.decode(p) for p in prompts]
    cfg = tiny_train_config("m", "d", "o", prompts_per_step=4, num_generations=2)
    assert cfg.max_sampling_rounds is None
    groups = collect_groups(
        ScriptedRollout(), prompts, answers, PromptSampler(10, 0), tokenizer, _exact_reward, cfg
    )
    assert [p[0] for p in groups.prompts] == [5, 5, 5, 5]
    assert groups.in_loss.all() and groups.stats["train/informative_frac"] == 1.0
    assert groups.stats["train/sampling_rounds"] > 3


@pytest.mark.parametrize("algo", ["grpo", "grpo-entropy-bonus"])
def test_top_up_groups_change_nothing(tiny_model_dir, algo):
    groups = _groups()
    # The same batch plus two uninformative groups marked out of the loss.
    filler = [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    padded = Groups(
        [*groups.prompts, [11], [12, 13]],
        [*groups.responses, *[[5, 6, 7]] * 4, *[[8]] * 4],
        torch.cat([groups.rewards, torch.tensor(filler)]),
        {},
        in_loss=torch.tensor([True] * 4 + [False] * 2),
    )
    base = load_model(str(tiny_model_dir))
    models = [copy.deepcopy(base) for _ in range(2)]
    for model, batch in zip(models, (groups, padded), strict=True):
        torch.manual_seed(0)
        cfg = tiny_train_config(
            "m", "d", "o", algo=algo, entropy_coef=0.1, prompts_per_step=len(batch.prompts)
        )
        _update(model, cfg, batch)
    for p0, p1 in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p1, p0, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(p0, p) for p0, p in zip(models[0].parameters(), base.parameters()))


def _groups(seed=0):
    generator = torch.Generator().manual_seed(seed)
    prompts = [[4, 5], [6], [7, 8, 9], [10]]
    responses = [
        torch.randint(3, 20, (int(n),), generator=generator).tolist()
        for n in torch.randint(1, 6, (16,), generator=generator)
    ]
    rewards = torch.tensor(
        [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]]
    )
    return Groups(prompts, responses, rewards, {})


def _update(model, cfg, groups, ref_scorer=None):
    """The metrics of one ``update_policy`` call."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return update_policy(
        groups,
        TokenScorer(model),
        model,
        optimizer,
        scheduler,
        LOSSES[cfg.algo],
        cfg,
        0,
        Distributed(0, 1, torch.device("cpu")),
        contextlib.nullcontext,
        ref_scorer,
    )[0]


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir, aggregation):
    base = load_model(str(tiny_model_dir))
    models = [copy.deepcopy(base) for _ in range(2)]
    for model, micro in zip(models, (16, 3), strict=True):
        torch.manual_seed(0)
        _update(
            model,
            tiny_train_config(
                "m", "d", "o", algo="grpo", micro_batch_size=micro, aggregation=aggregation
            ),
            _groups(),
        )
    changed = False
    for p0, p1, p in zip(
        models[0].parameters(), models[1].parameters(), base.parameters(), strict=True
    ):
        torch.testing.assert_close(p0, p1, atol=1e-6, rtol=1e-5)
        changed |= not torch.equal(p0, p)
    assert changed


def test_gradient_checkpointing_gives_the_same_update(tiny_model_dir):
    base = load_model(str(tiny_model_dir))
    models = [copy.deepcopy(base).train() for _ in range(2)]
    enable_activation_checkpointing(models[1])
    for model in models:
        torch.manual_seed(0)
        _update(
            model, tiny_train_config("m", "d", "o", algo="grpo-era", micro_batch_size=4), _groups()
        )
    for p0, p1 in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p0, p1)


def test_aggregation_modes_give_different_updates(tiny_model_dir):
    base = load_model(str(tiny_model_dir))
    updated = []
    for aggregation in ("token-mean", "seq-mean-token-mean"):
        model = copy.deepcopy(base)
        torch.manual_seed(0)
        _update(
            model, tiny_train_config("m", "d", "o", algo="grpo", aggregation=aggregation), _groups()
        )
        updated.append(model.get_output_embeddings().weight)
    assert not torch.allclose(*updated)


def test_on_policy_update_never_clips(tiny_model_dir):
    metrics = _update(
        load_model(str(tiny_model_dir)), tiny_train_config("m", "d", "o", algo="grpo"), _groups()
    )
    assert metrics["loss/clip_frac"] == 0.0


def test_era_sharpens_every_positive_response_below_the_floor(tiny_model_dir):
    groups = _groups()
    cfg = tiny_train_config("m", "d", "o", algo="grpo-era", era_omega_low=10.0, era_omega_high=20.0)
    metrics = _update(load_model(str(tiny_model_dir)), cfg, groups)
    positive = (groups.rewards - groups.rewards.mean(1, keepdim=True) > 0).float().mean().item()
    assert metrics["era/sharpened_frac"] == pytest.approx(positive)
    assert metrics["era/flattened_frac"] == 0.0


def test_minibatches_and_kl_run(tiny_model_dir):
    cfg = tiny_train_config(
        "m", "d", "o", algo="grpo", num_minibatches=2, micro_batch_size=4, kl_coef=0.1
    )
    model = load_model(str(tiny_model_dir))
    ref = TokenScorer(copy.deepcopy(model).requires_grad_(False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    metrics, _ = update_policy(
        _groups(),
        TokenScorer(model),
        model,
        optimizer,
        scheduler,
        LOSSES["grpo"],
        cfg,
        0,
        Distributed(0, 1, torch.device("cpu")),
        contextlib.nullcontext,
        ref,
    )
    # The second mini-batch sees a moved policy: KL to the reference is positive, and the
    # first mini-batch's update clips some ratios at this learning rate.
    assert metrics["loss/kl"] > 0.0
    assert scheduler.last_epoch == 2


@pytest.mark.parametrize(("omega_low", "scaled"), [(10.0, True), (0.0, False)])
def test_reference_is_scored_without_era(tiny_model_dir, omega_low, scaled):
    # The reference is the policy's own copy, so on-policy its KL is 0 unless ERA rescales
    # the policy's logits and not the reference's (the authors' rule).
    cfg = tiny_train_config(
        "m", "d", "o", algo="grpo-era", kl_coef=0.1, era_omega_low=omega_low, era_omega_high=20.0
    )
    model = load_model(str(tiny_model_dir))
    ref = TokenScorer(copy.deepcopy(model).requires_grad_(False))
    metrics = _update(model, cfg, _groups(), ref)
    assert (metrics["era/sharpened_frac"] > 0) == scaled
    if scaled:
        assert metrics["loss/kl"] > 1e-4
    else:
        assert metrics["loss/kl"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize(
    ("algo", "metric"), [("clip-cov", "clip_cov_frac"), ("kl-cov", "kl_cov_frac")]
)
def test_cov_losses_train_through_minibatches(tiny_model_dir, algo, metric):
    # Every token is selected (fraction 1, wide bounds) so the metric counts each valid token.
    cfg = tiny_train_config(
        "m",
        "d",
        "o",
        algo=algo,
        num_minibatches=2,
        micro_batch_size=4,
        clip_cov_frac=1.0,
        clip_cov_low=-100.0,
        clip_cov_high=100.0,
        kl_cov_frac=1.0,
    )
    model = load_model(str(tiny_model_dir))
    before = model.get_output_embeddings().weight.clone()
    metrics = _update(model, cfg, _groups())
    # kl-cov penalises every token; clip-cov drops every token the ratio clip leaves alone
    expected = 1.0 if algo == "kl-cov" else 1.0 - metrics["loss/clip_frac"]
    assert metrics[f"loss/{metric}"] == pytest.approx(expected)
    moved = not torch.equal(before, model.get_output_embeddings().weight)
    assert moved == (algo == "kl-cov")


def _parameters(path):
    return {k: v.clone() for k, v in load_model(str(path)).state_dict().items()}


def test_train_checkpoint_resume_eval(tiny_model_dir, addition_data, tmp_path, parity, train_argv):
    out = tmp_path / "run"
    args = train_argv(
        out,
        "--prompts-per-step",
        4,
        "--micro-batch-size",
        8,
        "--algo",
        "grpo-era",
        "--save-every",
        2,
    )
    main([*args, "--max-steps", "3"])
    assert (out / "config.yaml").is_file() and (out / "tb").is_dir()
    assert [row["step"] for row in read_metrics(out / "metrics.csv")] == [1, 2, 3]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == [
        "step-00000002",
        "step-00000003",
    ]
    start, trained = _parameters(tiny_model_dir), _parameters(out / "checkpoints" / "step-00000003")
    assert any(not torch.equal(start[k], trained[k]) for k in start)

    main([*args, "--max-steps", "5", "--resume"])  # resumes from step 3 with more steps
    assert [row["step"] for row in read_metrics(out / "metrics.csv")] == [1, 2, 3, 4, 5]
    assert (out / "checkpoints" / "latest").read_text() == "step-00000005"
    assert "max_steps: 3" in (out / "config.step-00000003.yaml").read_text()
    assert "max_steps: 5" in (out / "config.yaml").read_text()

    evaluated = tmp_path / "eval"
    main(
        [
            "eval",
            "--model",
            str(out / "checkpoints" / "step-00000005"),
            "--data",
            str(addition_data),
            "--n",
            "2",
            "--max-new-tokens",
            "6",
            "--max-problems",
            "4",
            "--prompt-template",
            "{prompt}",
            "--output-dir",
            str(evaluated),
            "--device",
            "cpu",
        ]
    )
    assert (evaluated / "summary.json").is_file()


def test_sigterm_then_resume_equals_uninterrupted(
    tiny_model_dir, addition_data, tmp_path, monkeypatch
):
    # Without dynamic sampling every step rewards exactly 16 responses.
    overrides = dict(
        max_steps=4,
        algo="grpo-era",
        num_minibatches=2,
        micro_batch_size=4,
        era_omega_low=2.0,
        save_every=100,
        dynamic_sampling=False,
    )
    monkeypatch.setitem(rewards.REWARDS, "math-verify", parity_reward)
    train(tiny_train_config(tiny_model_dir, addition_data, tmp_path / "a", **overrides))

    calls = []

    def interrupting_reward(completion, gold, **_):
        calls.append(1)
        if len(calls) == 20:  # during step 2's sampling (16 responses per step)
            os.kill(os.getpid(), signal.SIGTERM)
        return parity_reward(completion, gold)

    monkeypatch.setitem(rewards.REWARDS, "math-verify", interrupting_reward)
    with pytest.raises(SystemExit) as stopped:
        train(tiny_train_config(tiny_model_dir, addition_data, tmp_path / "b", **overrides))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == "step-00000002"
    monkeypatch.setitem(rewards.REWARDS, "math-verify", parity_reward)
    train(tiny_train_config(tiny_model_dir, addition_data, tmp_path / "b", **overrides))

    a = _parameters(tmp_path / "a" / "checkpoints" / "step-00000004")
    b = _parameters(tmp_path / "b" / "checkpoints" / "step-00000004")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a, rows_b = (read_metrics(tmp_path / run / "metrics.csv") for run in ("a", "b"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)


def _usage_error(capsys, argv):
    """Run the CLI; it must exit 2 with one ``error:`` line on stderr and no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    # (Progress bars of model and data loading may come before it.)
    last = stderr.splitlines()[-1]
    assert last.startswith("error: ") and stderr.count("error:") == 1, stderr
    assert "Traceback" not in stderr
    return last


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-generations", "1"], "num_generations must be >= 2"),
        (["--model", "/nonexistent/model"], "model: cannot load"),
        (["--device", "gpu"], "device: unknown device 'gpu'"),
        (["--resume", "--overwrite"], "give one of them, not both"),
        (["--config", "/nonexistent/run.yaml"], "--config /nonexistent/run.yaml: cannot read"),
    ],
)
def test_cli_reports_clear_errors(tmp_path, capsys, train_argv, extra, message):
    assert message in _usage_error(capsys, train_argv(tmp_path / "run", *extra))


def test_cli_debug_shows_the_traceback(tmp_path, capsys, train_argv, monkeypatch):
    argv = train_argv(tmp_path / "run", "--model", "/nonexistent/model")
    with pytest.raises(ValueError, match="model: cannot load"):
        main([*argv, "--debug"])
    monkeypatch.setenv("ERA_DEBUG", "1")
    with pytest.raises(ValueError, match="model: cannot load"):
        main(argv)


def test_cli_refuses_cuda_without_cuda(tmp_path, capsys, train_argv, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stderr = _usage_error(capsys, train_argv(tmp_path / "run", "--device", "cuda"))
    assert "device: 'cuda' was asked for, but CUDA is not available" in stderr


def test_cli_refuses_an_unwritable_output_dir(tmp_path, capsys, train_argv):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    stderr = _usage_error(capsys, train_argv(blocker / "run"))
    assert f"output_dir: cannot write to '{blocker / 'run'}'" in stderr


def test_cli_reports_a_dataset_without_the_fields(tmp_path, capsys, train_argv):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"q": "1+1=", "a": "2"}\n')
    stderr = _usage_error(capsys, train_argv(tmp_path / "o", "--data", data))
    assert "has none of the fields" in stderr
    data.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2=", "answer": 4\n')
    stderr = _usage_error(capsys, train_argv(tmp_path / "o", "--data", data))
    assert f"data: {data}:2: malformed JSON line" in stderr


def test_a_changed_run_is_refused_until_resume_or_overwrite(tmp_path, capsys, train_argv, parity):
    out = tmp_path / "run"
    main(train_argv(out, "--max-steps", 1, "--algo", "grpo-era"))
    main(train_argv(out, "--max-steps", 1, "--algo", "grpo-era"))  # the same run: continues
    assert [row["step"] for row in read_metrics(out / "metrics.csv")] == [1]
    saved = (out / "config.yaml").read_text()
    stderr = _usage_error(capsys, train_argv(out, "--max-steps", 2, "--algo", "grpo", "--lr", 0.1))
    assert (
        "holds a run with another config (algo: 'grpo-era' -> 'grpo'; lr: 0.01 -> 0.1; "
        "max_steps: 1 -> 2); add --resume" in stderr
    )
    assert (out / "config.yaml").read_text() == saved  # untouched
    main(train_argv(out, "--max-steps", 2, "--algo", "grpo", "--overwrite"))
    assert [row["step"] for row in read_metrics(out / "metrics.csv")] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000002"]
    assert "algo: grpo\n" in (out / "config.yaml").read_text()


def test_a_corrupt_checkpoint_is_reported(tmp_path, capsys, train_argv, parity):
    out = tmp_path / "run"
    main(train_argv(out, "--max-steps", 1))
    (out / "checkpoints" / "step-00000001" / "trainer_state.pt").write_bytes(b"not a checkpoint")
    stderr = _usage_error(capsys, train_argv(out, "--max-steps", 1))
    assert f"resume: checkpoint '{out / 'checkpoints' / 'step-00000001'}' cannot be read" in stderr
    assert "--overwrite" in stderr


@pytest.mark.gpu
def test_bf16_training_step_on_cuda(tiny_model_dir, addition_data, tmp_path, parity):
    out = train(
        tiny_train_config(
            tiny_model_dir,
            addition_data,
            tmp_path,
            device="cuda",
            max_steps=2,
            gradient_checkpointing=True,
        )
    )
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss/policy"])) for r in rows)


def test_trains_on_dapo_math_shaped_parquet(tiny_model_dir, tmp_path, train_argv, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from era_llm.policy import load_tokenizer

    model_dir = tmp_path / "chat-model"
    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }};{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    tokenizer.save_pretrained(model_dir)
    rows = [
        {
            "prompt": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"{a}+{b}= Answer: $Answer"},
            ],
            "reward_model": {"ground_truth": str(a + b), "style": "rule"},
        }
        for a, b in [(1, 2), (3, 4), (5, 1), (2, 2)]
    ]
    data = tmp_path / "dapo.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    seen = []

    def recording_reward(completion, gold, answer_format="boxed"):
        seen.append((gold, answer_format))
        return parity_reward(completion, gold)

    monkeypatch.setitem(rewards.REWARDS, "math-verify", recording_reward)
    out = tmp_path / "run"
    main(
        train_argv(
            out,
            *("--model", model_dir, "--data", data, "--max-steps", 1, "--no-dynamic-sampling"),
            *("--answer-field", "reward_model.ground_truth", "--answer-format", "answer-line"),
        )
    )
    assert [row["step"] for row in read_metrics(out / "metrics.csv")] == [1]
    assert len(seen) == 8 and {f for _, f in seen} == {"answer-line"}
    assert {g for g, _ in seen} <= {"3", "7", "6", "4"}


def test_the_trainer_scores_at_the_sampling_temperature(tmp_path, train_argv, parity, monkeypatch):
    from era_llm import trainer

    built = []

    class RecordingScorer(TokenScorer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append((self.temperature, self.topk, self.topk_mode))

    monkeypatch.setattr(trainer, "TokenScorer", RecordingScorer)
    argv = ("--temperature", 0.7, "--topk-logprobs", 3, "--kl-coef", 0.1, "--max-steps", 1)
    main(train_argv(tmp_path / "run", *argv))
    assert built == [(0.7, 3, "mask"), (0.7, 3, "mask")]  # the KL reference and the policy


def test_a_second_process_in_the_output_dir_is_refused_and_changes_nothing(
    tmp_path, capsys, train_argv, parity
):
    out = tmp_path / "run"
    main(train_argv(out, "--max-steps", 1))
    with held_run_dir(out) as pid:
        before = folder_digest(out)
        # The same run (it would continue) and --overwrite (it would delete the run).
        for extra in (["--max-steps", 1], ["--max-steps", 2, "--overwrite"]):
            stderr = _usage_error(capsys, train_argv(out, *extra))
            assert f"output_dir: run folder '{out}' is in use by process {pid} " in stderr
            assert folder_digest(out) == before
    main(train_argv(out, "--max-steps", 2, "--resume"))  # the holder was killed: its lock is free
    assert [row["step"] for row in read_metrics(out / "metrics.csv")] == [1, 2]


def test_a_template_without_the_prompt_is_refused(tmp_path, capsys, train_argv, parity):
    out = tmp_path / "run"
    main(train_argv(out, "--max-steps", 1))
    before = folder_digest(out)
    stderr = _usage_error(capsys, train_argv(out, "--prompt-template", "Solve it."))
    assert (
        "prompt_template must contain {prompt}, where each question goes, got 'Solve it.'" in stderr
    )
    assert folder_digest(out) == before


def test_a_failing_overwrite_leaves_the_old_run_as_it_was(tmp_path, capsys, train_argv, parity):
    out = tmp_path / "run"
    main(train_argv(out, "--max-steps", 1))
    shutil.copyfile(out / "config.yaml", out / "config.step-00000001.yaml")  # an earlier resume's
    before = run_digest(out)
    for extra, message in [
        (["--data", tmp_path / "missing.jsonl"], "data: "),
        (["--model", "/nonexistent/model"], "model: cannot load"),
        (["--max-prompt-length", 2], "max_prompt_length: all 40 prompts are longer than 2"),
        (["--lora-rank", 4, "--lora-target-modules", "q_prj"], "lora_target_modules: "),
    ]:
        stderr = _usage_error(capsys, train_argv(out, "--max-steps", 2, "--overwrite", *extra))
        assert message in stderr
        assert run_digest(out) == before, extra
        assert not (out / ".replaced").exists()


def test_an_overwrite_failing_before_its_first_checkpoint_restores_the_old_run(
    tiny_model_dir, addition_data, tmp_path, monkeypatch, parity
):
    out = tmp_path / "run"
    train(tiny_train_config(tiny_model_dir, addition_data, out, max_steps=1))
    (out / "config.step-00000001.yaml").write_text("seed: 0\n")
    before = run_digest(out)

    def failing_reward(completion, gold, **_):
        # The old run is set aside, and the new one has begun writing.
        assert (out / ".replaced" / "files" / "checkpoints" / "latest").is_file()
        assert "max_steps: 2" in (out / "config.yaml").read_text()
        raise RuntimeError("a crash in the first step")

    monkeypatch.setitem(rewards.REWARDS, "math-verify", failing_reward)
    overwrite = tiny_train_config(tiny_model_dir, addition_data, out, max_steps=2, overwrite=True)
    with pytest.raises(RuntimeError, match="a crash in the first step"):
        train(overwrite)
    assert run_digest(out) == before and not (out / ".replaced").exists()

    monkeypatch.setitem(rewards.REWARDS, "math-verify", parity_reward)
    train(overwrite)
    assert [row["step"] for row in read_metrics(out / "metrics.csv")] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000002"]
    assert not (out / "config.step-00000001.yaml").exists() and not (out / ".replaced").exists()


def test_latest_checkpoint_is_the_complete_one_the_pointer_names(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None  # a fresh run folder
    for name in ("step-00000001", "step-00000002", ".tmp-step-00000003"):
        (checkpoints / name).mkdir(parents=True)
    assert latest_checkpoint(tmp_path) is None  # no pointer: still a fresh start
    (checkpoints / "latest").write_text("step-00000001")
    assert latest_checkpoint(tmp_path) == checkpoints / "step-00000001"
    # .tmp-step-N is one save_checkpoint had not finished (it renames it when complete).
    for broken in ("step-00000009", ".tmp-step-00000003", ""):
        (checkpoints / "latest").write_text(broken)
        with pytest.raises(UsageError) as error:
            latest_checkpoint(tmp_path)
        assert str(error.value) == (
            f"resume: '{checkpoints / 'latest'}' names {broken!r}, which is not a complete "
            "checkpoint; the complete ones are step-00000001, step-00000002: write one of them "
            "into it, or start over with --overwrite"
        )
    for name in ("step-00000001", "step-00000002"):
        (checkpoints / name).rmdir()
    with pytest.raises(
        UsageError, match="there is no complete one, or start over with --overwrite"
    ):
        latest_checkpoint(tmp_path)


def test_a_broken_latest_pointer_is_refused_and_changes_nothing(
    tmp_path, capsys, train_argv, parity
):
    out = tmp_path / "run"
    main(train_argv(out, "--max-steps", 2, "--save-every", 1))
    (out / "checkpoints" / "latest").write_text("step-00000007\n")
    before = run_digest(out)
    for extra in ([], ["--resume", "--max-steps", 3]):
        stderr = _usage_error(capsys, train_argv(out, "--max-steps", 2, "--save-every", 1, *extra))
        assert (
            f"error: resume: '{out / 'checkpoints' / 'latest'}' names 'step-00000007', which is "
            "not a complete checkpoint; the complete ones are step-00000001, step-00000002"
        ) in stderr
        assert run_digest(out) == before
    (out / "checkpoints" / "latest").write_text("step-00000001")  # what the error suggests
    main(train_argv(out, "--max-steps", 2, "--save-every", 1))
    assert [row["step"] for row in read_metrics(out / "metrics.csv")] == [1, 2]


def test_resume_applies_a_new_lr_weight_decay_and_warmup(tmp_path, train_argv, parity, monkeypatch):
    out = tmp_path / "run"
    main(train_argv(out, "--max-steps", 1))
    used = []

    def recording_update(groups, trainable, model, optimizer, scheduler, *args):
        used.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]))
        return update_policy(groups, trainable, model, optimizer, scheduler, *args)

    monkeypatch.setattr(trainer, "update_policy", recording_update)
    # A new template that keeps every problem is applied too.
    changed = ("--lr", 5e-2, "--weight-decay", 0.1, "--warmup-steps", 4)
    main(train_argv(out, "--max-steps", 3, "--resume", *changed, "--prompt-template", "Q{prompt}"))
    # One optimiser step was taken before the checkpoint: warm-up factors 2/4, then 3/4.
    assert used == [(pytest.approx(0.025), 0.1), (pytest.approx(0.0375), 0.1)]
    rows = read_metrics(out / "metrics.csv")
    assert [row["optim/lr"] for row in rows] == pytest.approx([1e-2, 0.0375, 0.05])
    assert "lr: 0.05\n" in (out / "config.yaml").read_text()


def test_resume_refuses_what_the_checkpoint_fixes(tmp_path, capsys, train_argv, parity):
    # Two prompt lengths: a max_prompt_length between them changes which problems are sampled.
    data = tmp_path / "mixed.jsonl"
    rows = [{"question": q, "answer": "2"} for q in ["1+1="] * 4 + ["1111111+1111111="] * 4]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    other = tmp_path / "other.jsonl"
    shutil.copyfile(data, other)
    out = tmp_path / "run"
    main(train_argv(out, "--data", data, "--max-steps", 2))
    before = run_digest(out)
    for extra, message in [
        (["--seed", 1], "seed: 0 -> 1 (the random state and the prompt order continue from"),
        (["--data", other], f"data: '{data}' -> '{other}' (the checkpoint's data position"),
        (["--prompt-field", "question"], "prompt_field: None -> 'question' (the checkpoint's"),
        (["--answer-field", "answer"], "answer_field: None -> 'answer' (the checkpoint's"),
        (
            ["--max-prompt-length", 10],
            "resume: the problems that fit this prompt_template, chat_template and "
            "max_prompt_length (4 of 8) are not the 8 that the checkpoint's data position indexes",
        ),
        (["--max-steps", 1], "max_steps: 1 is below the 2 steps of the checkpoint to resume; give"),
    ]:
        argv = train_argv(out, "--data", data, "--max-steps", 3, "--resume", *extra)
        stderr = _usage_error(capsys, argv)
        assert message in stderr
        if " -> " in message:  # a field the checkpoint fixes
            assert "cannot change in a run with a checkpoint; keep the saved value" in stderr
        assert run_digest(out) == before, extra


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes_exactly(
    tmp_path, capsys, train_argv, parity, monkeypatch
):
    flags = ("--max-steps", 3, "--save-every", 1)
    main(train_argv(tmp_path / "straight", *flags))
    run = tmp_path / "split"
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", failing_torch_save(2, "disk-full"))
        line = _usage_error(capsys, train_argv(run, *flags))
    assert "No space left on device" in line and str(run / "checkpoints") in line
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000001"]
    assert (checkpoints / "latest").read_text() == "step-00000001"
    main(train_argv(run, *flags, "--resume"))
    straight = _parameters(tmp_path / "straight" / "checkpoints" / "step-00000003")
    resumed = _parameters(checkpoints / "step-00000003")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


KILLED_WHILE_SAVING = """
import sys, torch
from tiny_runs import parity_reward
from era_core.testing import failing_torch_save
from era_llm import rewards
from era_llm.cli import main
rewards.REWARDS["math-verify"] = parity_reward
torch.set_num_threads(1)  # as the tests' own processes (conftest): the same float sums
torch.save = failing_torch_save(2, "kill")
main(sys.argv[1:])
"""


def test_a_kill_while_checkpointing_keeps_the_last_checkpoint_and_the_run_resumes_exactly(
    tmp_path, train_argv, parity
):
    flags = ("--max-steps", 3, "--save-every", 1)
    main(train_argv(tmp_path / "straight", *flags))
    run = tmp_path / "split"
    # The child imports tiny_runs from this folder, as pytest's pythonpath does here.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SAVING, *train_argv(run, *flags)],
        capture_output=True,
        check=False,
        env=env,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert (run / "checkpoints" / "latest").read_text() == "step-00000001"
    main(train_argv(run, *flags, "--resume"))
    straight = _parameters(tmp_path / "straight" / "checkpoints" / "step-00000003")
    resumed = _parameters(run / "checkpoints" / "step-00000003")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("algo", ["grpo", "grpo-era"])
def test_completions_are_logged_with_their_rewards_and_advantages(
    tiny_model_dir, addition_data, tmp_path, parity, algo
):
    out = tmp_path / "run"
    cfg = tiny_train_config(
        tiny_model_dir, addition_data, out, algo=algo, max_steps=2, log_completions_every=2,
        dynamic_sampling=False,
    )  # fmt: skip
    train(cfg)
    rows = [json.loads(line) for line in (out / COMPLETIONS_FILE).read_text().splitlines()]
    assert [row["step"] for row in rows] == [2] * 16  # 4 prompts x 4 completions, step 2 only
    assert set(rows[0]) == {
        "step", "prompt", "completion", "reward", "advantage", "entropy", "logit_scale", "in_loss"
    }  # fmt: skip
    logged = {int(row["step"]): row for row in read_metrics(out / "metrics.csv")}
    assert sum(r["reward"] for r in rows) / 16 == pytest.approx(logged[2]["train/reward"])
    assert all(r["reward"] == parity_reward(r["completion"], "") for r in rows)
    for group in range(4):  # group-relative advantages sum to zero within each group
        assert sum(r["advantage"] for r in rows[4 * group : 4 * group + 4]) == pytest.approx(
            0.0, abs=1e-5
        )
    assert all(r["entropy"] > 0 and r["in_loss"] for r in rows)
    if algo == "grpo":
        assert {r["logit_scale"] for r in rows} == {1.0}
    else:
        assert all(r["logit_scale"] > 0 for r in rows)


def test_logged_completions_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    logger = MetricLogger(tmp_path)
    for step in (1, 2, 3):
        logger.log_completions(step, [{"completion": f"c{step}|x\ny", "reward": 1.0}])
    logger.close()
    with open(tmp_path / COMPLETIONS_FILE, "a") as handle:
        handle.write('{"step": 4, "compl')  # a line cut short by a kill
    MetricLogger(tmp_path, resume_step=2).close()
    lines = (tmp_path / COMPLETIONS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
