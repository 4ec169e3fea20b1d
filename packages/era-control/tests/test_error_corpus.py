"""The corpus of bad invocations: each is one ``error:`` line naming its input, exit code 2, no
traceback, and no file of an existing run changes.

Every numeric flag of every subcommand has an out-of-range case here (checked against the
parser itself), so a new flag without its bad-value case fails ``test_every_numeric_flag_has_a_case``.
"""

import argparse
import shutil

import pytest
import torch
import yaml
from cli_asserts import exit_code, one_line_error

from era_control import checkpoint
from era_control.cli import build_parser, main
from era_core.testing import run_digest

TINY = [
    "--env", "Pendulum-v1", "--steps", "120", "--learning-starts", "60", "--eval-every", "120",
    "--eval-episodes", "1", "--hidden", "8", "8", "--batch-size", "16", "--no-tensorboard",
]  # fmt: skip

# A value outside the allowed range of every numeric field of each algorithm's config.
FIELD_CASES = {
    "sac": {
        "steps": "0", "seeds": "0", "seed": "-1", "eval_every": "0", "eval_episodes": "0",
        "log_every": "0", "checkpoint_every": "0", "threads": "0", "target_entropy": "1e9",
        "alpha_init": "0", "entropy_lr": "-1", "log_std_min": "0", "log_std_max": "-1e9",
        "lr": "0", "gamma": "1", "tau": "-1", "batch_size": "0", "buffer_size": "1",
        "learning_starts": "-1", "updates_per_step": "0",
    },
    "ppo": {
        "steps": "0", "seeds": "0", "seed": "-1", "eval_every": "0", "eval_episodes": "0",
        "log_every": "0", "checkpoint_every": "0", "threads": "0", "target_entropy": "1e9",
        "delta_init": "-1", "entropy_lr": "0", "log_std_min": "0", "log_std_max": "-1e9",
        "log_std_init": "nan", "ent_coef": "-1", "lr": "0", "num_envs": "0", "num_steps": "0",
        "num_minibatches": "0", "update_epochs": "0", "gamma": "1", "gae_lambda": "1.5",
        "clip_coef": "0", "vf_coef": "-1", "max_grad_norm": "0", "clip_obs": "0",
        "clip_reward": "0",
    },
    "tdmpc2": {
        "steps": "0", "seeds": "0", "seed": "-1", "eval_every": "0", "eval_episodes": "0",
        "log_every": "0", "checkpoint_every": "0", "threads": "0", "target_entropy": "1e9",
        "horizon": "0", "iterations": "0", "num_samples": "0", "num_elites": "0",
        "num_pi_trajs": "-1", "min_std": "0", "max_std": "0.01", "temperature": "0",
        "simnorm_dim": "0", "num_bins": "1", "vmin": "10", "vmax": "-10", "dropout": "1",
        "log_std_min": "3", "log_std_max": "-1e9", "entropy_coef": "-1", "lr": "0",
        "enc_lr_scale": "0", "grad_clip_norm": "0", "rho": "0", "consistency_coef": "0",
        "reward_coef": "-1", "value_coef": "-1", "tau": "0", "discount": "1", "batch_size": "0",
        "buffer_size": "1", "learning_starts": "1",
    },
}  # fmt: skip
# The other subcommands' numeric flags, each with a bad value (the corpus below uses them).
OTHER_NUMERIC = {("eval", "episodes"): "0", ("demo", "steps"): "1", ("demo", "seeds"): "0"}


NUMBER_TYPES = {"int", "float", "int | None", "float | None"}  # the flag converters' names


def _numeric_flags(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(subcommand path, dest)`` of every int or float option, through every subparser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _numeric_flags(sub, (*path, name))
        elif action.option_strings and getattr(action.type, "__name__", None) in NUMBER_TYPES:
            yield path, action.dest


def test_every_numeric_flag_has_a_case():
    flags = set(_numeric_flags(build_parser()))
    covered = {(("train", algo), field) for algo, cases in FIELD_CASES.items() for field in cases}
    covered |= {((command,), dest) for command, dest in OTHER_NUMERIC}
    assert flags == covered, (
        f"without a case: {sorted(flags - covered)}; stale: {sorted(covered - flags)}"
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "sac", *TINY, "--out", str(out), "--run-name", "done"]) == 0
    return out / "done"


def _refused(capsys, finished_run, argv, *fragments):
    """``argv`` fails by the convention and leaves ``finished_run`` as it was."""
    before = run_digest(finished_run)
    capsys.readouterr()
    assert exit_code(argv) == 2
    line = one_line_error(capsys, *fragments)
    assert run_digest(finished_run) == before
    return line


@pytest.mark.parametrize(
    ("algo", "field", "value"),
    [(algo, field, value) for algo, cases in FIELD_CASES.items() for field, value in cases.items()],
)
def test_out_of_range_flag_is_named(tmp_path, capsys, finished_run, algo, field, value):
    flag = "--" + field.replace("_", "-")
    # `--flag=value`: argparse takes a bare `-1e9` for an option.
    _refused(
        capsys, finished_run, ["train", algo, "--out", str(tmp_path), f"{flag}={value}"], field
    )
    assert not any(tmp_path.iterdir())  # refused before the run folder exists


@pytest.mark.parametrize("value", ["abc", "1.5", ""])
def test_a_flag_that_is_not_a_number_is_named(tmp_path, capsys, finished_run, value):
    argv = ["train", "sac", "--out", str(tmp_path), "--batch-size", value]
    _refused(capsys, finished_run, argv, "--batch-size", "batch_size must be")


def _broken_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("steps: [1000\n")
    return path


CASES = {
    # flags and files of `train`
    "unknown flag": (["train", "sac", "--stpes", "5"], ["--stpes"]),
    "unknown algorithm": (["train", "td3"], ["'td3'"]),
    "invalid YAML config": (["train", "sac", "--config", "{broken}"], ["broken.yaml", "YAML"]),
    "missing config": (["train", "sac", "--config", "{tmp}/nope.yaml"], ["nope.yaml"]),
    "config of a list": (["train", "sac", "--config", "{listed}"], ["--config", "mapping"]),
    "unknown config key": (["train", "sac", "--config", "{unknown_key}"], ["bogus"]),
    "target above the log-std bound": (["train", "sac", "--log-std-max", "-3"], ["target_entropy", "log_std <= -3"]),
    "tanh with ERA": (["train", "sac", "--distribution", "tanh_normal"], ["tanh_normal"]),
    "unknown env": (["train", "sac", "--env", "NoSuchEnv-v9"], ["NoSuchEnv-v9"]),
    "cuda device index": (["train", "sac", "--device", "cuda:7"], ["cuda:7"]),
    "out is a file": (["train", "sac", *TINY, "--out", "{file}"], ["file.txt"]),
    "resume of no run": (["train", "sac", "--resume", "{tmp}"], ["not a run directory"]),
    "resume with flags": (["train", "sac", "--resume", "{run}", "--lr", "1"], ["--resume", "lr"]),
    "resume as the other algorithm": (["train", "ppo", "--resume", "{run}"], ["sac run"]),
    "resume shorter": (["train", "sac", "--resume", "{run}", "--steps", "60"], ["--steps", "120"]),
    # eval, plot, demo
    "eval of no run": (["eval", "{tmp}"], ["not a run directory"]),
    "eval episodes": (["eval", "{run}", "--episodes", "0"], ["--episodes"]),
    "eval device": (["eval", "{run}", "--device", "tpu"], ["--device 'tpu'"]),
    "plot of an empty folder": (["plot", "{tmp}"], ["metrics.csv"]),
    "plot to an unwritable place": (["plot", "{run}", "--out", "/proc/x/p.png"], ["/proc/x"]),
    "plot of an unknown key": (["plot", "{run}", "--key", "nope/none"], ["nope/none"]),
    "plot labels": (["plot", "{run}", "--labels", "a", "b"], ["labels has 2"]),
    "demo steps": (["demo", "--out", "{tmp}/d", "--steps", "1"], ["--steps"]),
    "demo seeds": (["demo", "--out", "{tmp}/d", "--seeds", "0"], ["--seeds"]),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_invocation(tmp_path, capsys, finished_run, case):
    (tmp_path / "file.txt").write_text("not a folder\n")
    (tmp_path / "listed.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "unknown.yaml").write_text("bogus: 1\n")
    paths = {
        "broken": _broken_yaml(tmp_path), "listed": tmp_path / "listed.yaml",
        "unknown_key": tmp_path / "unknown.yaml", "file": tmp_path / "file.txt",
        "tmp": tmp_path, "run": finished_run,
    }  # fmt: skip
    argv, fragments = CASES[case]
    _refused(capsys, finished_run, [arg.format(**paths) for arg in argv], *fragments)


def test_the_numeric_flags_of_other_commands_are_in_the_corpus():
    flags = {(argv[0], argv[i][2:]) for argv, _ in CASES.values() for i in range(1, len(argv))}
    assert set(OTHER_NUMERIC) <= flags
    for (command, dest), value in OTHER_NUMERIC.items():
        assert any(
            argv[0] == command
            and f"--{dest}" in argv
            and argv[argv.index(f"--{dest}") + 1] == value
            for argv, _ in CASES.values()
        ), (command, dest)


def test_resume_of_a_run_whose_config_is_not_yaml(tmp_path, capsys, finished_run):
    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "config.yaml").write_text("env: [Pendulum\n")
    before = run_digest(run)
    assert exit_code(["train", "sac", "--resume", str(run)]) == 2
    one_line_error(capsys, "config.yaml", "YAML")
    assert run_digest(run) == before


def test_resume_of_a_checkpoint_whose_buffer_exceeds_the_capacity(tmp_path, capsys, finished_run):
    # A checkpoint from another run, whose config was copied consistently: the config check
    # passes, the buffer does not fit.
    run = shutil.copytree(finished_run, tmp_path / "run")
    state = checkpoint.load(run / "checkpoint.pt")
    state["config"]["buffer_size"] = 100
    torch.save(state, run / "checkpoint.pt")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "buffer_size": 100}, sort_keys=False))
    before = run_digest(run)
    assert exit_code(["train", "sac", "--resume", str(run)]) == 2
    one_line_error(capsys, "checkpoint.pt", "capacity of 100")
    assert run_digest(run) == before
