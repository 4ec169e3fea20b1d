"""The corpus of bad invocations: each is one ``error:`` line naming its input, exit code 2, no
traceback, and the files of an existing run stay as they were.

Every numeric flag of ``train``, ``eval`` and ``demo`` has an out-of-range case here, checked
against the parsers themselves: a new flag without its case fails
``test_every_numeric_flag_has_a_case``.
"""

import argparse
import importlib.util
import json
import re
import shutil

import pytest

from era_core.testing import run_digest
from era_llm.cli import main
from era_llm.config import build_parser
from era_llm.demo import DemoConfig
from era_llm.evaluation import EvalConfig
from era_llm.trainer import TrainConfig

CONFIGS = {"train": TrainConfig, "eval": EvalConfig, "demo": DemoConfig}
# A value outside the allowed range of every numeric flag (``-1`` unless said otherwise).
NOT_MINUS_ONE = {"clip_cov_low": "1e9"}
# The sampling flags every command shares (RolloutConfig), then each command's own.
SAMPLING = [
    "temperature", "top_p", "max_new_tokens", "generation_batch_size",
    "vllm_gpu_memory_utilization", "vllm_max_model_len",
]  # fmt: skip
NUMERIC = {
    "train": [
        *SAMPLING, "clip_low", "clip_high", "kl_coef", "entropy_coef", "era_omega_low",
        "era_omega_high", "era_k", "era_top_frac", "clip_cov_frac", "clip_cov_low",
        "clip_cov_high", "kl_cov_frac", "kl_cov_coef", "seed", "max_steps", "prompts_per_step",
        "num_generations", "num_minibatches", "micro_batch_size", "max_sampling_rounds",
        "max_prompt_length", "lr", "weight_decay", "warmup_steps", "max_grad_norm", "lora_rank",
        "lora_alpha", "logprob_chunk_size", "topk_logprobs", "save_every", "keep_checkpoints",
        "log_completions_every",
    ],
    "eval": [*SAMPLING, "n", "max_problems", "seed"],
    "demo": [
        "digits", "hidden_size", "num_layers", "sft_steps", "sft_lr", "rl_steps", "rl_lr",
        "prompts_per_step", "num_generations", "entropy_coef", "era_omega_low",
        "train_problems", "eval_problems", "eval_n", "threads", "seed",
    ],
}  # fmt: skip
NUMBER_TYPES = {"int", "float"}  # the flag converters' names (optional fields included)


def test_every_numeric_flag_has_a_case():
    for command, cls in CONFIGS.items():
        flags = {
            action.dest
            for action in build_parser(cls)._actions
            if isinstance(action, argparse.Action)
            and getattr(action.type, "__name__", None) in NUMBER_TYPES
        }
        assert flags == set(NUMERIC[command]), (
            f"{command}: without a case {sorted(flags - set(NUMERIC[command]))}, "
            f"stale {sorted(set(NUMERIC[command]) - flags)}"
        )


PROGRESS = re.compile(r"\d+%\||/s\]\s*$")  # tqdm bars and counters (model and data loading)


def _refused(capsys, argv, *fragments):
    """``main(argv)`` exits 2 with one ``error:`` line holding every fragment, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.search(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


def _train_args(model, data, out, *extra):
    return [
        "train", "--model", str(model), "--data", str(data), "--output-dir", str(out),
        "--prompts-per-step", "2", "--num-generations", "4", "--micro-batch-size", "4",
        "--max-new-tokens", "4", "--prompt-template", "{prompt}", "--max-steps", "1",
        "--no-dynamic-sampling",
        "--device", "cpu", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir, addition_data):
    """A one-step run whose files every refused invocation must leave alone."""
    run = tmp_path_factory.mktemp("runs") / "done"
    main(_train_args(tiny_model_dir, addition_data, run))
    return run


@pytest.mark.parametrize(
    ("command", "field"), [(c, f) for c, fields in NUMERIC.items() for f in fields]
)
def test_out_of_range_flag_is_named(
    capsys, tmp_path, finished_run, tiny_model_dir, addition_data, command, field
):
    flag = f"--{field.replace('_', '-')}={NOT_MINUS_ONE.get(field, '-1')}"
    before = run_digest(finished_run)
    if command == "train":
        argv = _train_args(tiny_model_dir, addition_data, finished_run, flag)
    elif command == "eval":
        argv = ["eval", "--model", str(tiny_model_dir), "--data", str(addition_data), flag]
    else:
        argv = ["demo", "--output-dir", str(tmp_path / "demo"), flag]
    _refused(capsys, argv, field)
    assert run_digest(finished_run) == before
    assert not (tmp_path / "demo").exists()


@pytest.fixture
def files(tmp_path, tiny_model_dir):
    """Bad inputs, made here: broken YAML, a wrong-typed config value, chat data whose role
    the model's chat template refuses (it raises, as Qwen's and Llama's templates do)."""
    (tmp_path / "broken.yaml").write_text("lr: [0.1\n")
    (tmp_path / "answer_format.yaml").write_text("answer_format: 3\n")
    (tmp_path / "steps.yaml").write_text("max_steps: 1.5\n")
    (tmp_path / "listed.yaml").write_text("- 1\n")
    (tmp_path / "unknown.yaml").write_text("bogus: 1\n")
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "data.csv").write_text("question,answer\n1+1=,2\n")
    chat = [{"role": "banana", "content": "1+2="}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"prompt": chat, "answer": "3"}) + "\n")
    model = shutil.copytree(tiny_model_dir, tmp_path / "chat-model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}{{ m['content'] }}"
        "{% endfor %}"
    )
    tokenizer.save_pretrained(model)
    return tmp_path


TRAIN_CASES = {
    "unknown flag": (["--stpes", "5"], ["--stpes"]),
    "not a number": (["--lr", "fast"], ["--lr"]),
    "invalid YAML config": (["--config", "{tmp}/broken.yaml"], ["broken.yaml"]),
    "missing config": (["--config", "{tmp}/nope.yaml"], ["nope.yaml"]),
    "config of a list": (["--config", "{tmp}/listed.yaml"], ["mapping"]),
    "unknown config field": (["--config", "{tmp}/unknown.yaml"], ["bogus"]),
    "int field given 1.5 in the config": (["--config", "{tmp}/steps.yaml"], ["max_steps must be int"]),
    "template without {prompt}": (["--prompt-template", "Q:"], ["prompt_template", "{prompt}"]),
    "missing model": (["--model", "{tmp}/no-model"], ["model"]),
    "missing data": (["--data", "{tmp}/none.jsonl"], ["none.jsonl"]),
    "data of another type": (["--data", "{tmp}/data.csv"], [".csv"]),
    "chat role the template refuses": (
        ["--model", "{tmp}/chat-model", "--data", "{tmp}/chat.jsonl", "--prompt-field", "prompt"],
        ["chat template", "banana"],
    ),
    "LoRA target the model lacks": (["--lora-rank", "2", "--lora-target-modules", "nope"], ["nope"]),
    "unknown device": (["--device", "gpu"], ["device"]),
    "output dir is a file": (["--output-dir", "{tmp}/a_file"], ["a_file"]),
    "resume and overwrite": (["--resume", "--overwrite"], ["resume", "overwrite"]),
    "unknown reward": (["--reward", "math-verify", "--reward", "style:2"], ["reward", "'style:2'"]),
    "reward weight not a number": (["--reward", "format:lots"], ["reward 'format:lots'", "WEIGHT"]),
}  # fmt: skip
if importlib.util.find_spec("vllm") is None:
    TRAIN_CASES["vLLM not installed"] = (["--rollout", "vllm"], ["era-llm[vllm]"])


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_bad_train_invocation(capsys, files, tmp_path, tiny_model_dir, addition_data, case):
    extra, fragments = TRAIN_CASES[case]
    argv = _train_args(tiny_model_dir, addition_data, tmp_path / "run")
    _refused(capsys, [*argv, *(arg.format(tmp=files) for arg in extra)], *fragments)


def test_a_refused_setting_leaves_an_existing_run_alone(capsys, finished_run, tiny_model_dir):
    # Another data file for the same folder: refused (not resumed, not overwritten).
    before = run_digest(finished_run)
    other = finished_run.parent / "other.jsonl"
    other.write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n")
    _refused(capsys, _train_args(tiny_model_dir, other, finished_run), "output_dir")
    assert run_digest(finished_run) == before


EVAL_CASES = {
    "answer_format 3 in the config": (["--config", "{tmp}/answer_format.yaml"], ["answer_format"]),
    "missing data": (["--data", "{tmp}/none.jsonl"], ["none.jsonl"]),
    "no model": (["--model", "{tmp}/no-model"], ["model"]),
}  # fmt: skip


@pytest.mark.parametrize("case", EVAL_CASES)
def test_bad_eval_invocation(capsys, files, tiny_model_dir, addition_data, case):
    extra, fragments = EVAL_CASES[case]
    argv = ["eval", "--model", str(tiny_model_dir), "--data", str(addition_data)]
    _refused(capsys, [*argv, *(arg.format(tmp=files) for arg in extra)], *fragments)


def test_demo_digits_beyond_the_range(capsys, tmp_path):
    _refused(capsys, ["demo", "--output-dir", str(tmp_path), "--digits", "9"], "digits")
