"""The corpus of bad invocations: each is one ``error:`` line naming its input, exit code 2, no
traceback, and the files of an existing run stay as they were.

Every numeric flag of every subcommand has an out-of-range case (``-1`` is out of every
range), checked against the parser itself: a new flag without its case fails
``test_every_numeric_flag_has_a_case``.
"""

import argparse
import shutil

import pytest

from era_core.testing import run_digest
from era_vision.cli import build_parser, main

TINY = ["--data", "digits", "--train-subset", "64", "--batch-size", "32", "--device", "cpu"]
NUMERIC = {
    "train": [
        "label_smoothing", "dropout", "confidence_penalty", "min_entropy", "era_tau", "epochs",
        "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "min_lr", "decay_epochs",
        "decay_milestones", "decay_rate", "drop_path", "reprob", "recount", "mixup_alpha",
        "cutmix_alpha", "clip_grad_norm", "grad_accum", "ema_decay", "workers", "seed",
        "max_steps", "train_subset", "calibration_holdout", "log_every", "eval_every",
        "checkpoint_every",
    ],
    "eval": ["batch_size", "workers"],
    "plot": [],
    "demo": ["epochs", "min_entropy", "seed", "threads"],
}  # fmt: skip


def _numeric_flags():
    (commands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: [
            a.dest for a in sub._actions if getattr(a.type, "__name__", None) in ("int", "float")
        ]
        for name, sub in commands.choices.items()
    }


def test_every_numeric_flag_has_a_case():
    assert _numeric_flags() == NUMERIC


def _refused(capsys, argv, *fragments):
    """``argv`` exits 2 (from argparse or from main) with one ``error:`` line, no traceback."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exited:
        code = exited.code
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize(
    ("command", "field"), [(c, f) for c, fields in NUMERIC.items() for f in fields]
)
def test_out_of_range_flag_is_named(capsys, tmp_path, finished_run, command, field):
    before = run_digest(finished_run)
    flag = f"--{field.replace('_', '-')}=-1"
    target = {
        "train": ["--out", str(finished_run), *TINY],
        "eval": [str(finished_run)],
        "demo": ["--out", str(tmp_path / "demo")],
    }[command]
    _refused(capsys, [command, *target, flag], field)
    assert run_digest(finished_run) == before
    assert not (tmp_path / "demo").exists()


@pytest.fixture
def files(tmp_path):
    (tmp_path / "broken.yaml").write_text("lr: [0.1\n")
    (tmp_path / "listed.yaml").write_text("- 1\n")
    (tmp_path / "unknown.yaml").write_text("bogus: 1\n")
    (tmp_path / "wrong_type.yaml").write_text("epochs: many\n")
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    return tmp_path


CASES = {
    "unknown flag": (["train", "--epoks", "2"], ["--epoks"]),
    "not a number": (["train", "--lr", "fast"], ["--lr"]),
    "unknown choice": (["train", "--augment", "lots"], ["--augment", "lots"]),
    "invalid YAML config": (["train", "--config", "{tmp}/broken.yaml"], ["broken.yaml"]),
    "missing config": (["train", "--config", "{tmp}/nope.yaml"], ["nope.yaml"]),
    "config of a list": (["train", "--config", "{tmp}/listed.yaml"], ["listed.yaml"]),
    "unknown config field": (["train", "--config", "{tmp}/unknown.yaml"], ["bogus"]),
    "wrong type in the config": (["train", "--config", "{tmp}/wrong_type.yaml"], ["epochs"]),
    "unknown model": (["train", "--model", "no_such_net"], ["no_such_net"]),
    "unknown data set": (["train", "--data", "mnist9"], ["mnist9"]),
    "image folder that does not exist": (["train", "--data", "imagenet:{tmp}/none"], ["none"]),
    "out is a file": (["train", "--out", "{tmp}/a_file"], ["a_file"]),
    "cuda without cuda": (["train", "--device", "cuda:9"], ["cuda"]),
    "eval of no run": (["eval", "{tmp}/empty"], ["empty"]),
    "plot of no run": (["plot", "{tmp}/empty", "--out", "{tmp}/plots"], ["empty"]),
    "demo out is a file": (["demo", "--out", "{tmp}/a_file"], ["a_file"]),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_invocation(capsys, files, finished_run, case):
    before = run_digest(finished_run)
    argv, fragments = CASES[case]
    argv = [arg.format(tmp=files) for arg in argv]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(files / "run")]
    _refused(
        capsys, [*argv, *(TINY if argv[0] == "train" and "--data" not in argv else [])], *fragments
    )
    assert run_digest(finished_run) == before


def test_eval_of_a_run_whose_config_is_not_yaml(capsys, tmp_path, finished_run):
    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "config.yaml").write_text("epochs: [1\n")
    before = run_digest(run)
    _refused(capsys, ["eval", str(run)], "config.yaml")
    assert run_digest(run) == before
