"""Bad input: one line ``error: ...`` on stderr, exit code 2, a traceback only with --debug."""

import os
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from era_core.cli import SET_ASIDE_DIR, UsageError
from era_core.testing import failing_torch_save, folder_digest, held_run_dir, run_digest
from era_vision.cli import main
from era_vision.models import register_model

TINY = ["--data", "digits", "--train-subset", "64", "--batch-size", "32", "--device", "cpu"]


@register_model("test_pool_linear")
def _pool_linear(num_classes, in_chans, image_size, drop_rate):
    layers = {
        "pool": nn.AdaptiveAvgPool2d(1),
        "flat": nn.Flatten(),
        "fc": nn.Linear(in_chans, num_classes),
    }
    return nn.Sequential(OrderedDict(layers))


def _error_line(capsys, args: list[str]) -> str:
    """Run the CLI; it must fail with code 2 and end stderr with one `error:` line."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last


def _image_folder(root, classes, splits=("train", "val"), per_class=2):
    for split in splits:
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (100 * k, 50, i)).save(root / split / name / f"{i}.png")


def _image_run_args(tmp_path: Path) -> tuple[list[str], Path]:
    """``train`` of 2 epochs of 2 steps on a folder of 8 images (made here), and its run folder."""
    _image_folder(tmp_path / "data", ["cat", "dog"], per_class=4)
    run = tmp_path / "run"
    args = ["train", "--data", f"imagenet:{tmp_path / 'data'}", "--model", "test_pool_linear"]
    args += ["--batch-size", "4", "--device", "cpu", "--augment", "none", "--out", str(run)]
    args += ["--warmup-epochs", "0", "--epochs", "2", "--log-every", "1"]
    args += ["--calibration-holdout", "0"]  # 5% of 8 images is none
    return args, run


def _eval_rows(capsys, run: Path) -> str:
    """What ``eval`` of the run prints: its rows."""
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    return capsys.readouterr().out


def test_missing_data(tmp_path, capsys):
    line = _error_line(capsys, ["train", *TINY, "--data", "fashion-mnist:/nonexistent"])
    assert "/nonexistent" in line and "--data" in line


def test_empty_one_class_and_mismatched_image_folders(tmp_path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    line = _error_line(capsys, ["train", "--data", f"imagenet:{tmp_path / 'empty'}"])
    assert "holds no images" in line
    _image_folder(tmp_path / "one", ["cat"])
    assert "1 class folder" in _error_line(
        capsys, ["train", "--data", f"imagenet:{tmp_path / 'one'}"]
    )
    _image_folder(tmp_path / "mix", ["cat", "dog"], splits=("train",))
    _image_folder(tmp_path / "mix", ["cat", "emu"], splits=("val",))
    line = _error_line(capsys, ["train", "--data", f"imagenet:{tmp_path / 'mix'}"])
    assert "different class folders" in line and "dog" in line and "emu" in line


def test_unknown_model_and_missing_timm(tmp_path, capsys, monkeypatch):
    out = ["--out", str(tmp_path / "run")]
    assert "unknown model 'resnet_nope'" in _error_line(
        capsys, ["train", *TINY, *out, "--model", "resnet_nope"]
    )
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    assert "era-vision[timm]" in _error_line(
        capsys, ["train", *TINY, *out, "--model", "timm:resnet18"]
    )


@pytest.mark.parametrize(("floor", "match"), [("2.5", "min_entropy"), ("-0.1", "min_entropy")])
def test_infeasible_or_negative_floor(tmp_path, capsys, floor, match):
    args = ["train", *TINY, "--out", str(tmp_path), "--regularizer", "era", "--min-entropy", floor]
    assert match in _error_line(capsys, args)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_named_and_the_checkpoint_kept(tmp_path, capsys, workers):
    args, run = _image_run_args(tmp_path)
    args += ["--workers", str(workers)]
    assert main([*args, "--max-steps", "2"]) == 0  # one epoch of 8 images
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    bad = tmp_path / "data" / "train" / "dog" / "1.png"
    bad.write_bytes(b"not a png")
    line = _error_line(capsys, args)
    assert str(bad) in line
    kept = torch.load(run / "checkpoint.pt", weights_only=True)
    assert kept["step"] == saved["step"] == 2


def test_corrupt_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--model", "mlp", "--epochs", "1", "--out", str(run)]
    assert main(args) == 0
    (run / "checkpoint.pt").write_bytes(b"\x00garbage")
    for command in (args, ["eval", str(run), "--device", "cpu"]):
        line = _error_line(capsys, command)
        assert "checkpoint" in line and "weights_only" not in line


def test_another_recipe_in_an_existing_out(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "1", "--out", str(run)]
    assert main([*args, "--model", "mlp"]) == 0
    capsys.readouterr()
    before = run_digest(run)
    line = _error_line(capsys, [*args, "--model", "resnet_narrow", "--regularizer", "era"])
    assert "model='mlp' -> 'resnet_narrow'" in line and "regularizer='ce' -> 'era'" in line
    assert run_digest(run) == before


def test_test_only_without_resume_is_refused(tmp_path, capsys):
    # --test-only used to evaluate the checkpoint regardless: --no-resume was ignored.
    line = _error_line(
        capsys, ["train", *TINY, "--out", str(tmp_path), "--test-only", "--no-resume"]
    )
    assert "test_only=True" in line and "resume=False" in line


def test_a_resume_to_below_the_checkpoint_step_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--model", "mlp", "--epochs", "2", "--out", str(run)]
    assert main([*args, "--max-steps", "3"]) == 0
    capsys.readouterr()
    before = run_digest(run)
    # It used to exit 0 with max_steps: 2 in config.yaml beside a checkpoint of step 3.
    assert _error_line(capsys, [*args, "--max-steps", "2"]) == (
        f"error: --max-steps 2 is below the step of {run / 'checkpoint.pt'}, 3: the run is past "
        "it (give 3 or more, or --no-resume to start over)"
    )
    assert run_digest(run) == before
    assert main([*args, "--max-steps", "3"]) == 0  # the paused run's own step: a rerun


def test_run_of_an_older_recipe_or_config(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--model", "mlp", "--epochs", "1", "--out", str(run)]
    assert main(args) == 0
    capsys.readouterr()
    # A 0.1 run held no calibration images out: resuming it with the new default is refused.
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["config"]["calibration_holdout"]
    torch.save(state, run / "checkpoint.pt")
    assert "calibration_holdout=0.0 -> 0.05" in _error_line(capsys, args)
    # An edited config.yaml with a field era-vision does not know is named with its file.
    config = run / "config.yaml"
    config.write_text(config.read_text() + "colour: blue\n")
    line = _error_line(capsys, ["eval", str(run), "--device", "cpu"])
    assert "colour" in line and "config.yaml" in line


def test_out_not_writable(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    line = _error_line(
        capsys, ["train", *TINY, "--model", "mlp", "--out", str(tmp_path / "file" / "run")]
    )
    assert "--out" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path, capsys):
    line = _error_line(capsys, ["train", *TINY, "--out", str(tmp_path), "--device", "cuda"])
    assert "CUDA is not available" in line and "--device cuda" in line


@pytest.mark.parametrize(
    ("yaml", "field"), [("epochs: ten\n", "epochs"), ("lr: fast\n", "lr"), ("amp: 3\n", "amp")]
)
def test_yaml_value_of_the_wrong_type(tmp_path, capsys, yaml, field):
    (tmp_path / "c.yaml").write_text(yaml)
    line = _error_line(capsys, ["train", "--config", str(tmp_path / "c.yaml")])
    assert f"field {field!r}" in line and "c.yaml" in line


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    args = ["train", *TINY, "--out", str(tmp_path), "--model", "resnet_nope"]
    with pytest.raises(UsageError, match="unknown model"):
        main([*args, "--debug"])
    monkeypatch.setenv("ERA_DEBUG", "1")
    with pytest.raises(UsageError, match="unknown model"):
        main(args)


def test_a_second_training_in_one_out_is_refused_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--model", "mlp", "--epochs", "1", "--out", str(run)]
    assert main(args) == 0
    with held_run_dir(run) as pid:
        before = folder_digest(run)
        capsys.readouterr()
        for extra in ([], ["--epochs", "2"], ["--no-resume"], ["--test-only"]):
            line = _error_line(capsys, [*args, *extra])
            assert line == (
                f"error: --out: run folder '{run}' is in use by process {pid} (one process per "
                "run folder: wait for it to end, or use another folder)"
            )
            assert folder_digest(run) == before
    assert main(args) == 0  # the holder was killed: its lock is free


def test_a_holdout_that_rounds_to_no_image_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--model", "mlp", "--epochs", "1", "--out", str(run)]
    assert main(args) == 0
    before = folder_digest(run)
    capsys.readouterr()
    line = _error_line(capsys, [*args, "--calibration-holdout", "1e-9"])
    assert line.startswith("error: calibration_holdout must be in (")
    assert "got 1e-09 (or 0: below that it holds out no image of the " in line
    assert line.endswith("(--calibration-holdout)")
    assert folder_digest(run) == before


@pytest.mark.parametrize("failure", ["corrupt image", "missing data", "unknown model"])
def test_a_restart_that_fails_leaves_the_old_run_as_it_was(tmp_path, capsys, failure):
    args, run = _image_run_args(tmp_path)
    assert main(args) == 0
    rows = _eval_rows(capsys, run)
    before = run_digest(run)
    restart = [*args, "--no-resume", "--lr", "0.05"]
    if failure == "corrupt image":  # read in the first batch, after the new run's first write
        bad = tmp_path / "data" / "train" / "dog" / "1.png"
        bad.write_bytes(b"not a png")
        assert str(bad) in _error_line(capsys, restart)
    elif failure == "missing data":
        line = _error_line(capsys, [*restart, "--data", f"imagenet:{tmp_path / 'none'}"])
        assert "--data" in line
    else:
        assert "unknown model" in _error_line(capsys, [*restart, "--model", "resnet_nope"])
    # A new config.yaml beside the old checkpoint made eval read a mix of the two runs.
    assert run_digest(run) == before
    assert _eval_rows(capsys, run) == rows


def test_a_restart_replaces_the_whole_old_run(tmp_path, capsys):
    args, run = _image_run_args(tmp_path)
    assert main(args) == 0
    _image_folder(tmp_path / "other", ["cat", "dog"], splits=("train", "val"))
    assert (
        main(["eval", str(run), "--device", "cpu", "--data", f"imagenet:{tmp_path / 'other'}"]) == 0
    )
    assert (run / "eval-imagenet" / "eval.json").exists()
    assert main([*args, "--no-resume", "--lr", "0.05"]) == 0
    entries = {p.name for p in run.iterdir()}
    assert entries == {".lock", "config.yaml", "checkpoint.pt", "tb", "eval.json"} | {
        "eval_reliability.png",
        "train.csv",
        "speed.csv",
        "eval.csv",
    }  # the old run's eval-imagenet/ report went with it, and nothing is set aside
    assert len(list((run / "tb").iterdir())) == 1
    with open(run / "train.csv") as f:
        rows = f.read().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["1", "2", "3", "4"]  # no row of the old run
    assert torch.load(run / "checkpoint.pt", weights_only=True)["config"]["lr"] == 0.05


def test_a_killed_restart_is_undone_by_the_next_train(tmp_path, capsys):
    args, run = _image_run_args(tmp_path)
    assert main(args) == 0
    rows = _eval_rows(capsys, run)
    before = run_digest(run)
    # An image the restart blocks on when it reads it, in its first epoch: before any
    # checkpoint, after it set the old run aside and wrote its own config.yaml.
    fifo = tmp_path / "data" / "train" / "dog" / "1.png"
    fifo.unlink()
    os.mkfifo(fifo)
    # Another model: this process's test_pool_linear is unknown to the child.
    restart = [*args, "--no-resume", "--model", "resnet_narrow"]
    log = tmp_path / "restart.log"  # a file, not a pipe: a full pipe would block the child
    with (
        log.open("wb") as stderr,
        subprocess.Popen(
            [sys.executable, "-m", "era_vision", *restart],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
        ) as proc,
    ):

        def open_the_fifo_if_it_exits() -> None:  # else the open below would wait forever
            proc.wait()
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))

        unblock = threading.Thread(target=open_the_fifo_if_it_exits)
        unblock.start()
        try:
            with open(fifo, "wb"):  # returns once a reader has the image open
                assert proc.poll() is None, log.read_text()
                assert (run / SET_ASIDE_DIR).is_dir()
                line = _error_line(capsys, ["eval", str(run), "--device", "cpu"])
                assert "is being replaced" in line
                proc.kill()  # before the image is closed, which the run would report as unreadable
                proc.wait()
        finally:
            proc.kill()
            unblock.join()
    fifo.unlink()
    assert (run / SET_ASIDE_DIR).is_dir() and run_digest(run) != before
    after_kill = run_digest(run)
    line = _error_line(capsys, ["eval", str(run), "--device", "cpu"])
    assert line == (
        f"error: run={str(run)!r} is being replaced: {SET_ASIDE_DIR}/ holds the earlier run "
        "until the training that started over there checkpoints, or, if that training was "
        "killed, until the next era-vision train there restores it (command line)"
    )
    assert run_digest(run) == after_kill
    # The next train takes the folder and restores the old run, then refuses a changed recipe.
    assert main([*args, "--lr", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "the earlier run's files are back" in err and "lr=0.1 -> 0.2" in err
    assert run_digest(run) == before
    assert _eval_rows(capsys, run) == rows


def test_workers_whose_batches_could_not_reach_the_loader_are_refused(
    tmp_path, capsys, monkeypatch
):
    # A TMPDIR this long made every batch of a worker vanish and training hang (the worker's
    # socket for handing over file descriptors cannot be bound): refused before any file.
    deep = tmp_path / ("d" * 100)
    monkeypatch.setattr("multiprocessing.util.get_temp_dir", lambda: str(deep))
    run = tmp_path / "run"
    line = _error_line(capsys, ["train", *TINY, "--workers", "1", "--out", str(run)])
    assert "--workers 1" in line and "TMPDIR" in line and "--workers 0" in line
    assert not run.exists()


def test_the_handover_check_reads_tmpdir(tmp_path):
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    code = "from era_vision.data import check_worker_handover as c; c(0); c(1)"
    env = {**os.environ, "TMPDIR": str(deep)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "UsageError: --workers 1" in result.stderr
    env["TMPDIR"] = "/tmp"  # short, unlike tmp_path under some runners
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def _checkpointing_every_step(tmp_path: Path, name: str) -> list[str]:
    """Four steps (two epochs of two batches), a checkpoint after each."""
    run = ["--model", "mlp", "--epochs", "2", "--checkpoint-every", "1"]
    return ["train", *TINY, *run, "--out", str(tmp_path / name)]


def _assert_resumed_exactly(tmp_path: Path) -> None:
    straight, resumed = (
        torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
        for name in ("straight", "split")
    )
    assert resumed["step"] == straight["step"] == 4
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes_exactly(
    tmp_path, capsys, monkeypatch
):
    assert main(_checkpointing_every_step(tmp_path, "straight")) == 0
    monkeypatch.setattr(torch, "save", failing_torch_save(2, "disk-full"))
    run = tmp_path / "split"
    line = _error_line(capsys, _checkpointing_every_step(tmp_path, "split"))
    assert "No space left on device" in line and str(run / "checkpoint.pt") in line
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 1
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(_checkpointing_every_step(tmp_path, "split")) == 0
    _assert_resumed_exactly(tmp_path)


KILLED_WHILE_SAVING = """
import sys, torch
from era_core.testing import failing_torch_save
from era_vision.cli import main
torch.set_num_threads(1)  # as the tests' own processes (conftest): the same float sums
torch.save = failing_torch_save(2, "kill")
raise SystemExit(main(sys.argv[1:]))
"""


def test_a_kill_while_checkpointing_keeps_the_last_checkpoint_and_the_run_resumes_exactly(
    tmp_path,
):
    assert main(_checkpointing_every_step(tmp_path, "straight")) == 0
    argv = _checkpointing_every_step(tmp_path, "split")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SAVING, *argv], capture_output=True, check=False
    )
    assert killed.returncode == -9, killed.stderr.decode()
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["step"] == 1
    assert main(argv) == 0
    _assert_resumed_exactly(tmp_path)
