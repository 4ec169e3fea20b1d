"""Multi-process training on CPU: two torchrun ranks on gloo, DDP and FSDP2."""

import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from era_llm.distributed import fsdp_available
from era_llm.metrics import read_metrics
from era_llm.policy import load_model

# The entry script swaps in a reward a random model earns half the time, so that the ranks
# have gradients to average.
ENTRY = """
import sys
import torch
from era_llm import rewards
from era_llm.cli import main
torch.set_num_threads(1)
rewards.REWARDS["math-verify"] = lambda completion, gold, **_: float(len(completion) % 2 == 0)
main(sys.argv[1:])
"""

needs_fsdp2 = pytest.mark.skipif(not fsdp_available(), reason="FSDP2 needs torch >= 2.6")

# One update_policy step after another on fixed groups: rank r of W trains on the r-th W-th
# of every global batch. Writes the final whole weights and whether they were sharded.
UPDATES = """
import contextlib
import sys
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from era_llm.distributed import init_distributed, parallelize, shutdown
from era_llm.losses import LOSSES
from era_llm.policy import TokenScorer, load_model
from era_llm.trainer import Groups, TrainConfig, update_policy
torch.set_num_threads(1)
model_dir, out = sys.argv[1:]
dist = init_distributed("cpu")
share = 4 // dist.world_size
cfg = TrainConfig(
    model=model_dir, data="-", algo="grpo-era", kl_coef=0.05, prompts_per_step=share,
    num_generations=4, micro_batch_size=3, lr=1e-2, max_grad_norm=0.5, parallel="fsdp",
)
model = load_model(model_dir)
scorer = TokenScorer(model)
trainable = parallelize(scorer, "fsdp", dist)
ref = TokenScorer(load_model(model_dir).requires_grad_(False))
ref = parallelize(ref, "fsdp", dist, trainable=False)
optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=True)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
norms = []
for step in range(3):
    generator = torch.Generator().manual_seed(step)
    prompts = [[4, 5], [6], [7, 8, 9], [10]]
    responses = [
        torch.randint(3, 20, (int(n),), generator=generator).tolist()
        for n in torch.randint(1, 6, (16,), generator=generator)
    ]
    rewards = torch.randint(0, 2, (4, 4), generator=generator).float()
    mine = slice(dist.rank * share, (dist.rank + 1) * share)
    groups = Groups(prompts[mine], responses[mine.start * 4 : mine.stop * 4], rewards[mine], {})
    metrics, _ = update_policy(
        groups, trainable, model, optimizer, scheduler, LOSSES[cfg.algo], cfg, 0, dist,
        contextlib.nullcontext, ref,
    )
    norms.append(metrics["optim/grad_norm"])
weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
sharded = type(next(model.parameters())).__name__ == "DTensor"
if dist.is_main:
    torch.save({"weights": weights, "sharded": sharded, "norms": norms}, out)
shutdown()
"""


def _torchrun(script, *args, nproc=2):
    """Run ``script`` on ``nproc`` gloo ranks (torchrun), or as one plain process for 1."""
    # --standalone: torchrun picks its own free port (no race with other processes).
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    command = [sys.executable, *(launcher if nproc > 1 else []), str(script), *map(str, args)]
    # No timeout: on a busy 2-core runner a fixed deadline is a flake; CI's job limit bounds hangs.
    process = subprocess.run(command, capture_output=True, text=True)
    assert process.returncode == 0, process.stderr[-4000:]


@pytest.fixture
def entry(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent(ENTRY))
    return script


def test_two_process_gloo_training(tiny_model_dir, tmp_path, entry, train_argv):
    out = tmp_path / "run"
    _torchrun(entry, *train_argv(out, "--max-steps", "2"))
    checkpoint = out / "checkpoints" / "step-00000002"
    assert (checkpoint / "rank0.pt").is_file() and (checkpoint / "rank1.pt").is_file()
    assert [row["step"] for row in read_metrics(out / "metrics.csv")] == [1, 2]
    start, trained = (
        load_model(str(tiny_model_dir)).state_dict(),
        load_model(str(checkpoint)).state_dict(),
    )
    assert any(not torch.equal(start[k], trained[k]) for k in start)


@needs_fsdp2
def test_fsdp_on_two_ranks_matches_one_process(tiny_model_dir, tmp_path):
    # Same global batches, GRPO-ERA with a KL reference, gradient accumulation over
    # micro-batches and active clipping: two FSDP ranks give one process's weights.
    script = tmp_path / "updates.py"
    script.write_text(textwrap.dedent(UPDATES))
    _torchrun(script, tiny_model_dir, tmp_path / "fsdp.pt")
    _torchrun(script, tiny_model_dir, tmp_path / "single.pt", nproc=1)
    fsdp, single = (torch.load(tmp_path / f"{n}.pt") for n in ("fsdp", "single"))
    assert fsdp["sharded"] and not single["sharded"]
    assert min(single["norms"]) > 0.5  # clipping was active
    torch.testing.assert_close(fsdp["norms"], single["norms"], rtol=1e-4, atol=0)
    start = load_model(str(tiny_model_dir)).state_dict()
    assert fsdp["weights"].keys() == single["weights"].keys() == start.keys()
    # Adam's first steps move an element by about lr (1e-2) whatever its gradient's size, so a
    # gradient near eps that the two reduction orders round differently moves the weight by a
    # small part of a step (1.1e-5 seen once): allow 1 % of one step. A wrong gradient scale is
    # caught by the norms above, which Adam's scale invariance would hide here.
    for key, value in single["weights"].items():
        torch.testing.assert_close(fsdp["weights"][key], value, rtol=1e-4, atol=1e-4)
    assert any(not torch.equal(start[k], single["weights"][k]) for k in start)


@needs_fsdp2
def test_fsdp_training_resumes_exactly(tiny_model_dir, tmp_path, entry, train_argv):
    # Two FSDP steps straight, against one step, then a restart from that checkpoint.
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["--parallel", "fsdp", "--save-every", "1", "--max-steps", "2"]
    _torchrun(entry, *train_argv(straight, *args))
    checkpoints = straight / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000001", "step-00000002"]
    assert (checkpoints / "step-00000001" / "rank1.pt").is_file()
    shutil.copytree(checkpoints / "step-00000001", resumed / "checkpoints" / "step-00000001")
    (resumed / "checkpoints" / "latest").write_text("step-00000001")
    _torchrun(entry, *train_argv(resumed, *args))
    assert [row["step"] for row in read_metrics(resumed / "metrics.csv")] == [2]

    start = load_model(str(tiny_model_dir)).state_dict()
    final = [
        load_model(str(run / "checkpoints" / "step-00000002")).state_dict()
        for run in (straight, resumed)
    ]
    # The tied output projection is stored once, as save_pretrained does unsharded.
    stored = safe_open(checkpoints / "step-00000002" / "model.safetensors", "pt").keys()
    assert set(stored) == set(start) - {"lm_head.weight"}
    assert any(not torch.equal(start[k], final[0][k]) for k in start)
    for key in start:
        torch.testing.assert_close(final[1][key], final[0][key], rtol=0, atol=0)
    optimizer = [
        torch.load(run / "checkpoints" / "step-00000002" / "trainer_state.pt", weights_only=False)[
            "optimizer"
        ]
        for run in (straight, resumed)
    ]
    assert optimizer[0]["state"].keys() == {f"model.{k}" for k in start if k != "lm_head.weight"}
    # (A loaded state holds betas as a list, a fresh one as a tuple.)
    groups = [[g | {"betas": tuple(g["betas"])} for g in o["param_groups"]] for o in optimizer]
    assert groups[1] == groups[0]
    torch.testing.assert_close(optimizer[1]["state"], optimizer[0]["state"], rtol=0, atol=0)


def test_ddp_lora_training_resumes_exactly(tiny_model_dir, tmp_path, entry, train_argv):
    # LoRA under DDP: two steps straight, against one step and a restart from its checkpoint.
    pytest.importorskip("peft")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["--lora-rank", "4", "--lora-alpha", "8", "--save-every", "1", "--max-steps", "2"]
    _torchrun(entry, *train_argv(straight, *args))
    checkpoints = straight / "checkpoints"
    shutil.copytree(checkpoints / "step-00000001", resumed / "checkpoints" / "step-00000001")
    (resumed / "checkpoints" / "latest").write_text("step-00000001")
    _torchrun(entry, *train_argv(resumed, *args))
    assert [row["step"] for row in read_metrics(resumed / "metrics.csv")] == [2]

    final = [run / "checkpoints" / "step-00000002" for run in (straight, resumed)]
    adapters = [safe_open(path / "adapter" / "adapter_model.safetensors", "pt") for path in final]
    keys = set(adapters[0].keys())
    assert keys == set(adapters[1].keys()) and all("lora_" in key for key in keys)
    for key in keys:
        torch.testing.assert_close(
            adapters[1].get_tensor(key), adapters[0].get_tensor(key), rtol=0, atol=0
        )
    start = load_model(str(tiny_model_dir)).state_dict()
    merged = [load_model(str(path)).state_dict() for path in final]
    assert any(not torch.equal(start[k], merged[0][k]) for k in start)
    for key in start:
        torch.testing.assert_close(merged[1][key], merged[0][key], rtol=0, atol=0)
    optimizer = [
        torch.load(path / "trainer_state.pt", weights_only=False)["optimizer"] for path in final
    ]
    assert optimizer[0]["state"] and all(".lora_" in name for name in optimizer[0]["state"])
    torch.testing.assert_close(optimizer[1]["state"], optimizer[0]["state"], rtol=0, atol=0)


def test_fsdp_is_refused_where_it_cannot_work(monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    from era_llm import trainer
    from era_llm.distributed import Distributed, parallelize
    from era_llm.policy import TokenScorer

    monkeypatch.setattr(trainer, "fsdp_available", lambda: False)
    with pytest.raises(ValueError, match=r"parallel=fsdp needs torch\.distributed with FSDP2"):
        trainer.TrainConfig(model="m", data="d", parallel="fsdp")
    # A decoder without a `layers` list (GPT-2 calls its blocks `h`): nothing to shard by.
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)
    config.eos_token_id = config.bos_token_id = 1
    scorer = TokenScorer(GPT2LMHeadModel(config))
    with pytest.raises(ValueError, match=r"parallel=fsdp: GPT2LMHeadModel has no decoder\.layers"):
        parallelize(scorer, "fsdp", Distributed(0, 2, torch.device("cpu")))
