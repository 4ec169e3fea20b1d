import csv
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
import yaml

from era_core.cli import UsageError
from era_vision.cli import main
from era_vision.data import load_data
from era_vision.distributed import setup
from era_vision.models import find_classifier
from era_vision.train import (
    RUNTIME_FIELDS,
    TrainConfig,
    _check_same_recipe,
    build_model,
    checkpoint_path,
    lr_at,
    resume_checkpoint,
    setup_data,
    setup_model,
    train,
)

# Tiny budgets on the built-in digits: 256 images, batch 32 -> 8 steps per epoch.
TINY = dict(
    data="digits", train_subset=256, batch_size=32, device="cpu", log_every=1, warmup_epochs=0.0
)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def _row(rows: list[dict], head: str, calibrated: bool = False) -> dict:
    (row,) = [r for r in rows if r["head"] == head and r["calibrated"] == calibrated]
    return row


def _assert_same_weights(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **(tolerance or {"rtol": 0, "atol": 0}), msg=key)


def test_cli_train_writes_a_complete_run(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "resnet_narrow", "--regularizer", "era", "--min-entropy", "0.8"]
    args += [
        "--epochs",
        "3",
        "--warmup-epochs",
        "0",
        "--data",
        "digits",
        "--train-subset",
        "256",
        "--batch-size",
        "32",
    ]
    args += ["--device", "cpu", "--log-every", "4", "--out", str(out)]
    assert main(args) == 0
    for name in (
        "config.yaml",
        "checkpoint.pt",
        "train.csv",
        "eval.csv",
        "eval.json",
        "eval_reliability.png",
    ):
        assert (out / name).exists(), name
    assert any((out / "tb").iterdir())
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["regularizer"] == "era" and saved["label_smoothing"] == 0.0
    with open(out / "train.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [4, 8, 12, 16, 20, 24]
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"])
    report = json.loads((out / "eval.json").read_text())
    # Both heads, before and after temperature scaling fitted on 5 % of the training split.
    heads = [(r["head"], r["calibrated"]) for r in report["rows"]]
    assert heads == [("era", False), ("era", True), ("plain", False), ("plain", True)]
    assert report["holdout_size"] == round(0.05 * 1437)  # digits: 1437 training images
    # The ERA head's floor holds over the whole test set; the plain head has no floor.
    assert _row(report["rows"], "era")["entropy_min"] >= 0.8
    assert _row(report["rows"], "plain")["entropy_min"] < 0.8
    assert _row(report["rows"], "era")["top1"] > 0.3
    with open(out / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["head"], r["calibrated"]) for r in rows[-4:]] == [
        ("24", "era", "False"),
        ("24", "era", "True"),
        ("24", "plain", "False"),
        ("24", "plain", "True"),
    ]

    # `eval` reproduces the final metrics from the checkpoint.
    assert main(["eval", str(out), "--device", "cpu", "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "eval.json").read_text())["rows"]
    assert len(again) == len(report["rows"])
    for mine, theirs in zip(again, report["rows"], strict=True):
        assert mine == pytest.approx(theirs)

    assert main(["plot", str(out), str(out), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "curves.png").exists()
    assert (tmp_path / "plots" / "reliability.png").exists()


@pytest.mark.parametrize("regularizer", ["label-smoothing", "dropout", "confidence-penalty"])
def test_baselines_train(tmp_path, regularizer):
    result = train(
        TrainConfig(model="mlp", regularizer=regularizer, epochs=3, out=str(tmp_path), **TINY)
    )
    assert result["status"] == "finished" and result["step"] == 24
    # No ERA head: only the plain softmax is reported, before and after scaling.
    assert [(r["head"], r["calibrated"]) for r in result["metrics"]] == [
        ("plain", False),
        ("plain", True),
    ]
    assert _row(result["metrics"], "plain")["top1"] > 0.2


def _rows(run: Path, group: str) -> list[dict[str, str]]:
    with open(run / f"{group}.csv") as f:
        return list(csv.DictReader(f))


def test_resume_is_exact(tmp_path):
    # Dropout, augmentation, EMA (with warm-up), accumulation and a train.csv window that
    # straddles the break (rows every 3 steps, break at 5) all carry state across it.
    cfg = dict(
        model="resnet_narrow",
        regularizer="dropout",
        augment="basic",
        ema_decay=0.9,
        ema_warmup=True,
        grad_accum=2,
        epochs=2,
        **{**TINY, "log_every": 3},
    )
    straight = train(TrainConfig(out=str(tmp_path / "straight"), max_steps=13, **cfg))
    first = train(TrainConfig(out=str(tmp_path / "split"), max_steps=5, **cfg))
    assert first["status"] == "paused" and first["step"] == 5  # mid-epoch
    second = train(TrainConfig(out=str(tmp_path / "split"), max_steps=13, **cfg))
    assert second["step"] == 13
    _assert_same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "split"))
    ema = [
        torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["ema"]
        for r in ("straight", "split")
    ]
    _assert_same_weights(*ema)
    assert second["metrics"] == straight["metrics"]
    # The same rows, the first after the break included; the paused run's eval at step 5 is
    # the one extra eval row.
    assert _rows(tmp_path / "split", "train") == _rows(tmp_path / "straight", "train")
    assert [int(r["step"]) for r in _rows(tmp_path / "split", "train")] == [3, 6, 9, 12]
    split_eval = _rows(tmp_path / "split", "eval")
    heads = sorted((r["head"], r["calibrated"]) for r in split_eval if r["step"] == "13")
    assert len(heads) >= 2  # each evaluation writes one row per head and calibration
    assert [int(r["step"]) for r in split_eval] == [s for s in (5, 8, 13) for _ in heads]
    assert split_eval[len(heads) :] == _rows(tmp_path / "straight", "eval")
    # Running a finished (here: paused) run again adds no row.
    again = train(TrainConfig(out=str(tmp_path / "split"), max_steps=13, **cfg))
    assert again["metrics"] == second["metrics"]
    assert _rows(tmp_path / "split", "eval") == split_eval


# A valid value other than the default for each field a resumed run must keep.
RECIPE_CHANGES = {
    "model": "mlp",
    "data": "fashion-mnist",
    "regularizer": "era",
    "label_smoothing": 0.2,
    "dropout": 0.2,
    "confidence_penalty": 0.2,
    "min_entropy": 0.3,
    "era_tau": 5.0,
    "era_calibration": "tight",
    "epochs": 3,
    "batch_size": 64,
    "optimizer": "adamw",
    "lr": 0.05,
    "momentum": 0.5,
    "weight_decay": 0.0,
    "warmup_epochs": 0.5,
    "augment": "none",
    "aa": "rand-m9-mstd0.5-inc1",
    "reprob": 0.6,
    "remode": "pixel",
    "recount": 2,
    "mixup_alpha": 0.2,
    "cutmix_alpha": 0.2,
    "clip_grad_norm": 1.0,
    "grad_accum": 2,
    "ema_decay": 0.9,
    "ema_warmup": True,
    "amp": False,
    "amp_dtype": "float16",
    "dist_bn": "sync",
    "seed": 1,
    "train_subset": 100,
    "calibration_holdout": 0.1,
    "sched": "step",
    "min_lr": 0.01,
    "decay_epochs": 10.0,
    "decay_milestones": [1, 2],
    "decay_rate": 0.5,
    "drop_path": 0.1,
    "init_weights": "weights.pt",
}


def test_a_resume_refuses_every_changed_recipe_field(tmp_path):
    # Every field is either a runtime flag a resumed run applies, or refused when changed:
    # a new field must be put on one side (a resumed run records no value it does not use).
    assert RECIPE_CHANGES.keys() == {f.name for f in fields(TrainConfig)} - RUNTIME_FIELDS
    saved = asdict(TrainConfig())
    for name, value in RECIPE_CHANGES.items():
        with pytest.raises(UsageError) as refused:
            _check_same_recipe(saved, TrainConfig(**{name: value}), tmp_path / "checkpoint.pt")
        assert f"another recipe ({name}={saved[name]!r} -> {value!r}); " in str(refused.value)


def test_a_resume_applies_changed_runtime_flags(tmp_path):
    cfg = dict(model="mlp", regularizer="dropout", epochs=3, **TINY)
    straight = TrainConfig(out=str(tmp_path / "straight"), max_steps=16, **cfg)
    train(straight)
    train(TrainConfig(out=str(tmp_path / "split"), max_steps=5, checkpoint_every=0, **cfg))
    flags = dict(max_steps=16, log_every=2, eval_every=2, checkpoint_every=3)
    train(TrainConfig(out=str(tmp_path / "split"), **{**cfg, **flags}))
    saved = yaml.safe_load((tmp_path / "split" / "config.yaml").read_text())
    assert {k: saved[k] for k in flags} == flags
    # Where and how often it logs is what changed; what it learns is not.
    _assert_same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "split"))
    steps = [int(r["step"]) for r in _rows(tmp_path / "split", "train")]
    assert steps == [1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16]
    # eval_every 1 until step 5 (epoch 1 at step 8 is skipped by eval_every 2), then the end.
    assert sorted({int(r["step"]) for r in _rows(tmp_path / "split", "eval")}) == [5, 16]


def test_a_checkpoint_that_scaled_no_loss_resumes_with_a_fresh_scaler(tmp_path):
    cfg = TrainConfig(model="mlp", epochs=1, max_steps=2, out=str(tmp_path), **TINY)
    train(cfg)
    # As a CPU run resumed on CUDA with --amp-dtype float16: its checkpoint holds no scale.
    ctx = setup("cpu")
    trainee = setup_model(cfg, setup_data(cfg, ctx).data, ctx)
    trainee.scaler = torch.amp.GradScaler("cpu", enabled=True)
    assert resume_checkpoint(checkpoint_path(cfg), cfg, trainee, ctx).step == 2
    assert trainee.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()


def test_evaluation_does_not_change_training(tmp_path):
    # Dropout draws from the global RNG, which an eval DataLoader also seeds itself from.
    cfg = dict(model="mlp", regularizer="dropout", epochs=2, **TINY)
    train(TrainConfig(out=str(tmp_path / "a"), eval_every=1, **cfg))
    train(TrainConfig(out=str(tmp_path / "b"), eval_every=2, **cfg))
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def _wait_for_step(proc: subprocess.Popen, step: int) -> None:
    """Block on the progress bar (stderr) until the run reports ``step``; no sleeps."""
    seen = b""
    while True:
        chunk = proc.stderr.read1(4096)  # type: ignore[union-attr]
        assert chunk, "the run exited before reaching the step"
        seen = (seen + chunk)[-200:]
        done = [int(m) for m in re.findall(rb"(\d+)/\d+ \[", seen)]
        if done and max(done) >= step:
            return


def test_sigterm_checkpoints_then_resume_matches(tmp_path):
    # A window of 3 steps: the signal usually lands inside one, whose partial sums must survive.
    cfg = dict(model="mlp", regularizer="dropout", epochs=10, **{**TINY, "log_every": 3})
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()]
    run = tmp_path / "killed"
    # One thread, like this process (conftest), so both compute with the same kernels.
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "era_vision", "train", f"--out={run}", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        _wait_for_step(proc, 4)
        proc.send_signal(signal.SIGTERM)
        proc.communicate()
        assert proc.returncode == 128 + signal.SIGTERM
    finally:
        proc.kill()
    stopped = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 4 <= stopped < 80
    resumed = train(TrainConfig(out=str(run), **cfg))
    straight = train(TrainConfig(out=str(tmp_path / "straight"), **cfg))
    assert resumed["step"] == straight["step"] == 80
    _assert_same_weights(_weights(run), _weights(tmp_path / "straight"))
    assert _rows(run, "train") == _rows(tmp_path / "straight", "train")
    assert _rows(run, "eval") == _rows(tmp_path / "straight", "eval")
    train(TrainConfig(out=str(run), **cfg))  # a finished run, again: no duplicate eval row
    assert _rows(run, "eval") == _rows(tmp_path / "straight", "eval")


def test_ddp_two_processes_match_one(tmp_path):
    # The MLP has no batch statistics, so two ranks with half batches each must follow the
    # same trajectory as one process with the whole batch (up to float summation order).
    cfg = dict(model="mlp", regularizer="era", epochs=2, augment="basic", **TINY)
    single = train(TrainConfig(out=str(tmp_path / "single"), **cfg))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # torchrun picks a free port itself: no race for one
            "--nproc-per-node=2",
            "-m",
            "era_vision",
            "train",
            f"--out={tmp_path / 'ddp'}",
            *flags,
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    _assert_same_weights(
        _weights(tmp_path / "single"), _weights(tmp_path / "ddp"), rtol=1e-4, atol=1e-5
    )
    ddp = json.loads((tmp_path / "ddp" / "eval.json").read_text())["rows"]
    for mine, theirs in zip(ddp, single["metrics"], strict=True):
        assert (mine["head"], mine["calibrated"]) == (theirs["head"], theirs["calibrated"])
        numbers = {k: v for k, v in theirs.items() if isinstance(v, float)}
        assert {k: mine[k] for k in numbers} == pytest.approx(numbers, rel=1e-3)


def test_arms_with_one_seed_start_from_the_same_weights():
    # bench_accuracy pairs arms by seed: the ERA head wraps the same freshly drawn network.
    data = load_data("digits")
    nets = []
    for regularizer in ("ce", "era"):
        torch.manual_seed(3)
        nets.append(build_model(TrainConfig(regularizer=regularizer), data).state_dict())
    inner = {k.removeprefix("model."): v for k, v in nets[1].items() if k.startswith("model.")}
    _assert_same_weights(nets[0], inner)


def test_lr_schedule():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)
    # cosine to a floor; step and multistep by whole epochs of 10 steps, warm-up included
    assert lr_at(100, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.1)
    assert lr_at(55, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.55)
    step = dict(sched="step", steps_per_epoch=10, decay_epochs=3, decay_rate=0.5)
    assert [lr_at(s, 100, 10, 1.0, **step) for s in (10, 29, 30, 59, 60)] == [
        1.0,
        1.0,
        0.5,
        0.5,
        0.25,
    ]
    multi = dict(sched="multistep", steps_per_epoch=10, milestones=[2, 5], decay_rate=0.1)
    assert [lr_at(s, 100, 10, 1.0, **multi) for s in (19, 20, 49, 50, 99)] == pytest.approx(
        [1.0, 0.1, 0.1, 0.01, 0.01]
    )


def test_drop_path_reaches_timm_and_is_refused_elsewhere():
    pytest.importorskip("timm")
    data = load_data("digits")
    model = build_model(TrainConfig(model="timm:resnet10t", drop_path=0.1), data)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="drop_path needs a timm model"):
        build_model(TrainConfig(model="mlp", drop_path=0.1), data)


def test_init_weights_fine_tune_from_a_local_file(tmp_path, capsys):
    data = load_data("digits")
    torch.manual_seed(1)
    source = build_model(TrainConfig(model="mlp"), data).state_dict()
    torch.save({"state_dict": source}, tmp_path / "timm_style.pt")
    torch.manual_seed(2)
    loaded = build_model(
        TrainConfig(model="mlp", init_weights=str(tmp_path / "timm_style.pt")), data
    )
    _assert_same_weights(source, loaded.state_dict(), rtol=0, atol=0)
    # An ERA run's weights (prefixed model.) into an ERA model; another head shape stays fresh.
    era = build_model(TrainConfig(model="mlp", regularizer="era"), data).state_dict()
    torch.save({"model": era}, tmp_path / "era_run.pt")
    loaded = build_model(TrainConfig(model="mlp", regularizer="era", init_weights=str(tmp_path / "era_run.pt")), data)  # fmt: skip
    _assert_same_weights(era, loaded.state_dict(), rtol=0, atol=0)
    # Weights of a 5-class model of the same body: the 10-class classifier stays fresh.
    head, _ = find_classifier(loaded.model)
    five = {k: v[:5] if k.startswith(head + ".") else v for k, v in source.items()}
    torch.save(five, tmp_path / "five.pt")
    capsys.readouterr()
    torch.manual_seed(3)
    fresh = build_model(TrainConfig(model="mlp"), data).state_dict()
    torch.manual_seed(3)
    tuned = build_model(
        TrainConfig(model="mlp", init_weights=str(tmp_path / "five.pt")), data
    ).state_dict()
    assert "keeps its fresh initialisation" in capsys.readouterr().out
    for key, value in tuned.items():
        expected = fresh[key] if key.startswith(head + ".") else source[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="does not fit the model"):
        build_model(TrainConfig(model="mlp", init_weights=str(tmp_path / "wrong.pt")), data)
    with pytest.raises(ValueError, match="cannot read it"):
        build_model(TrainConfig(model="mlp", init_weights=str(tmp_path / "none.pt")), data)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("label_smoothing", 1.0, "label_smoothing"),
        ("dropout", -0.1, "dropout"),
        ("lr", 0.0, "lr"),
        ("epochs", 0, "epochs"),
        ("warmup_epochs", 20.0, "warmup_epochs"),
        ("ema_decay", 1.0, "ema_decay"),
        ("grad_accum", 3, "divisible by grad_accum"),
        ("min_lr", 0.1, "min_lr"),
        ("decay_rate", 0.0, "decay_rate"),
        ("drop_path", 1.0, "drop_path"),
    ],
)
def test_config_refuses_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_label_smoothing_on_top_of_era_is_explicit():
    assert TrainConfig(regularizer="era").label_smoothing == 0.0
    assert TrainConfig(regularizer="label-smoothing").label_smoothing == 0.1
    assert TrainConfig(regularizer="era", label_smoothing=0.1).loss_fn().keywords == {
        "label_smoothing": 0.1
    }


def test_runtime_errors_are_clear(tmp_path):
    with pytest.raises(UsageError, match="unknown model"):
        train(TrainConfig(model="resnet_nope", out=str(tmp_path), **TINY))
    with pytest.raises(UsageError, match="min_entropy"):  # log 10 = 2.30
        train(TrainConfig(regularizer="era", min_entropy=2.5, out=str(tmp_path), **TINY))
    with pytest.raises(UsageError, match="train_subset"):
        train(TrainConfig(**{**TINY, "train_subset": 10**6}, out=str(tmp_path)))
    with pytest.raises(UsageError, match="does not exist"):
        train(TrainConfig(**{**TINY, "data": "fashion-mnist:/nonexistent"}, out=str(tmp_path)))


def test_config_file_then_flags(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("epochs: 1\nmodel: mlp\nlr: 0.5\n")
    out = tmp_path / "run"
    args = ["train", "--config", str(tmp_path / "c.yaml"), "--lr", "0.01", "--out", str(out)]
    args += ["--train-subset", "64", "--batch-size", "32", "--device", "cpu"]
    assert main(args) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["epochs"], saved["model"], saved["lr"]) == (1, "mlp", 0.01)
    (tmp_path / "bad.yaml").write_text("epochz: 1\n")
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "epochz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--regularizer", "mixup"])


def test_demo(tmp_path):
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(r["regularizer"], r["head"]) for r in rows if not r["calibrated"]] == [
        ("ce", "plain"),
        ("label-smoothing", "plain"),
        ("era", "era"),
        ("era", "plain"),
    ]
    assert _row(rows[-4:], "era")["entropy_min"] >= 0.6
    assert (tmp_path / "results.md").exists() and (tmp_path / "curves.png").exists()
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("## era-vision\n") and "| regularizer |" in summary
    # The sentence quotes the measured numbers; the links resolve inside the demo folder.
    first = {(r["regularizer"], r["head"]): r for r in rows if not r["calibrated"]}
    era, plain, ce = first["era", "era"], first["era", "plain"], first["ce", "plain"]
    assert f"{era['top1']:.3f} against {ce['top1']:.3f}" in summary
    assert (
        f"{era['ece']:.3f} with the floored head and {plain['ece']:.3f} with the plain" in summary
    )
    for link in ("curves.png", "reliability.png"):
        assert f"]({link})" in summary and (tmp_path / link).exists()


@pytest.mark.gpu
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_cuda_recipe(tmp_path, amp_dtype):
    result = train(
        TrainConfig(
            model="resnet_narrow",
            regularizer="era",
            epochs=1,
            amp_dtype=amp_dtype,
            clip_grad_norm=1.0,
            channels_last=True,
            compile=True,
            **{**TINY, "device": "cuda"},
            out=str(tmp_path),
        )
    )
    assert result["status"] == "finished"
    assert _row(result["metrics"], "era")["entropy_min"] >= 0.6


def test_multistep_refuses_milestones_outside_the_run():
    with pytest.raises(ValueError, match="decay_milestones must be increasing epochs"):
        TrainConfig(sched="multistep", decay_milestones=[5, 3])
    with pytest.raises(ValueError, match="decay_milestones must be increasing epochs"):
        TrainConfig(sched="multistep", epochs=10, decay_milestones=[3, 10])
