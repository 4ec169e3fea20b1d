import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from era_vision.cli import main
from era_vision.data import load_data
from era_vision.train import TrainConfig, build_model, lr_at, train

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


def test_resume_is_exact(tmp_path):
    # Dropout, augmentation, EMA and accumulation all draw or carry state across the break.
    cfg = dict(
        model="resnet_narrow",
        regularizer="dropout",
        augment="basic",
        ema_decay=0.9,
        grad_accum=2,
        epochs=2,
        **TINY,
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
    with open(tmp_path / "split" / "train.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 14))


def test_sigterm_checkpoints_then_resume_matches(tmp_path):
    cfg = dict(model="mlp", epochs=30, **TINY)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()]
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "era_vision", "train", f"--out={run}", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while (
            not (run / "train.csv").exists()
            or len((run / "train.csv").read_text().splitlines()) < 4
        ):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    stopped = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 3 <= stopped < 240
    resumed = train(TrainConfig(out=str(run), **cfg))
    straight = train(TrainConfig(out=str(tmp_path / "straight"), **cfg))
    assert resumed["step"] == straight["step"] == 240
    _assert_same_weights(_weights(run), _weights(tmp_path / "straight"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            "--nproc-per-node=2",
            f"--master-port={_free_port()}",
            "-m",
            "era_vision",
            "train",
            f"--out={tmp_path / 'ddp'}",
            *flags,
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
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
    with pytest.raises(ValueError, match="unknown model"):
        train(TrainConfig(model="resnet_nope", out=str(tmp_path), **TINY))
    with pytest.raises(ValueError, match="min_entropy"):  # log 10 = 2.30
        train(TrainConfig(regularizer="era", min_entropy=2.5, out=str(tmp_path), **TINY))
    with pytest.raises(ValueError, match="train_subset"):
        train(TrainConfig(**{**TINY, "train_subset": 10**6}, out=str(tmp_path)))
    with pytest.raises(ValueError, match="does not exist"):
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
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "bad.yaml")])
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


@pytest.mark.gpu
def test_cuda_recipe(tmp_path):
    result = train(
        TrainConfig(
            model="resnet_narrow",
            regularizer="era",
            epochs=1,
            channels_last=True,
            compile=True,
            **{**TINY, "device": "cuda"},
            out=str(tmp_path),
        )
    )
    assert result["status"] == "finished"
    assert _row(result["metrics"], "era")["entropy_min"] >= 0.6
