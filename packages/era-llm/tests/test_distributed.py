import socket
import subprocess
import sys
import textwrap

import torch

from era_llm.metrics import read_metrics
from era_llm.policy import load_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training(tiny_model_dir, addition_data, tmp_path):
    # The entry script swaps in a reward a random model earns half the time, so that the
    # ranks have gradients to average.
    script = tmp_path / "entry.py"
    script.write_text(
        textwrap.dedent("""
        import sys
        import torch
        from era_llm import rewards
        from era_llm.cli import main
        torch.set_num_threads(1)
        rewards.REWARDS["math-verify"] = lambda completion, gold: float(len(completion) % 2 == 0)
        main(sys.argv[1:])
    """)
    )
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        str(script),
        "train",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(addition_data),
        "--output-dir",
        str(out),
        "--max-steps",
        "2",
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
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    checkpoint = out / "checkpoints" / "step-00000002"
    assert (checkpoint / "rank0.pt").is_file() and (checkpoint / "rank1.pt").is_file()
    assert [row["step"] for row in read_metrics(out / "metrics.csv")] == [1, 2]
    start, trained = (
        load_model(str(tiny_model_dir)).state_dict(),
        load_model(str(checkpoint)).state_dict(),
    )
    assert any(not torch.equal(start[k], trained[k]) for k in start)
