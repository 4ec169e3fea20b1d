import json
import random
from pathlib import Path

import pytest
import torch

from era_core.testing import apply_gpu_policy, duplicate_distributions

# Tiny models run fastest (and do not fight other processes) on one thread.
torch.set_num_threads(1)

SHARED_MATH = Path(__file__).parents[3] / ".." / "shared" / "data" / "math"


def pytest_configure(config):
    # `--group test --extra vllm` merges two lock forks (vLLM pins its own torch and transformers):
    # uv installs both versions over each other, and nothing run there means anything.
    duplicated = duplicate_distributions()
    if duplicated:
        installed = ", ".join(f"{name} {' and '.join(v)}" for name, v in duplicated.items())
        raise pytest.UsageError(
            f"this environment holds two versions of: {installed}; an era-llm[vllm] environment "
            "takes the test-vllm group: uv sync --package era-llm --group test-vllm --extra vllm"
        )


def pytest_collection_modifyitems(config, items):
    apply_gpu_policy(items)


def pytest_sessionfinish(session, exitstatus):
    # A GPU-only selection on a machine with no GPU tests collects nothing: not a failure.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and "gpu" in (
        session.config.option.markexpr or ""
    ):
        session.exitstatus = pytest.ExitCode.OK


@pytest.fixture(autouse=True)
def _restore_rng():
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    yield
    torch.set_rng_state(torch_state)
    random.setstate(python_state)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The demo's character tokenizer and a randomly initialised tiny Qwen2, saved."""
    from era_llm.demo import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = build_tokenizer()
    build_model(len(tokenizer), hidden_size=32, num_layers=1, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def addition_data(tmp_path_factory) -> Path:
    """40 one-digit addition problems as jsonl (question/answer fields)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "add.jsonl"
    rows = []
    for _ in range(40):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"question": f"{a}+{b}=", "answer": str(a + b)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def train_argv(tiny_model_dir, addition_data):
    """``era-llm train`` arguments the CLI tests share: the tiny model on addition, on CPU.

    ``train_argv(out, *extra)``: later flags in ``extra`` override these (argparse keeps the
    last value).
    """

    def build(out, *extra):
        return [
            "train",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(addition_data),
            "--output-dir",
            str(out),
            "--prompts-per-step",
            "2",
            "--num-generations",
            "4",
            "--micro-batch-size",
            "4",
            "--max-new-tokens",
            "6",
            "--prompt-template",
            "{prompt}",
            "--lr",
            "1e-2",
            "--device",
            "cpu",
            *map(str, extra),
        ]

    return build


@pytest.fixture
def shared_math() -> Path:
    if not SHARED_MATH.is_dir():
        pytest.skip(
            f"shared math data not found at {SHARED_MATH.resolve()} (CI checks ../shared out beside the repo)"
        )
    return SHARED_MATH
