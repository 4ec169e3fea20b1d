"""Atomic, resumable checkpoints.

``<run>/checkpoints/step-00000100/`` holds the model and tokenizer in ``save_pretrained``
format (loadable by ``from_pretrained``, vLLM, or ``era-llm eval --model``), plus
``trainer_state.pt`` (optimiser, scheduler, step) and one ``rank<r>.pt`` per process (RNG
and data-sampler state). Weights and optimiser state are saved whole (gathered from FSDP's
shards, keyed by parameter name), so a run resumes under DDP, FSDP or a single process alike. A checkpoint is written to a temporary directory, flushed to disk
and renamed into place; ``checkpoints/latest`` is replaced the same way, so a crash or kill
at any moment leaves the previous checkpoint intact.
"""

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from era_core.cli import write_atomically, writing_to
from era_llm.distributed import barrier
from era_llm.errors import UsageError
from era_llm.lora import ADAPTER_DIR, is_lora, merged_state_dict

__all__ = [
    "latest_checkpoint",
    "load_checkpoint_state",
    "load_optimizer_state",
    "optimizer_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

# Whole tensors on rank 0's CPU (other ranks get nothing): what a checkpoint file holds.
_GATHERED = StateDictOptions(full_state_dict=True, cpu_offload=True)


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's whole state keyed by parameter name (collective: call on every rank).

    Args:
        module: The module whose parameters ``optimizer`` updates (FSDP-sharded or not).
        optimizer: Its optimiser.

    Returns:
        The state on rank 0; an empty dict on other ranks of a sharded run.
    """
    return get_optimizer_state_dict(module, optimizer, options=_GATHERED)


def load_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load what ``optimizer_state`` returned (every rank passes the whole state; FSDP keeps its shard)."""
    set_optimizer_state_dict(
        module, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def rng_state() -> dict[str, Any]:
    """Python, torch CPU and CUDA generator states."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _share_tied(model: nn.Module, weights: dict[str, Any]) -> dict[str, Any]:
    """Make tied parameters (an output projection tied to the embedding) one tensor again.

    FSDP gathers each name separately; ``save_pretrained`` drops a tied copy only when it
    shares storage with the original.
    """
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    for first, *aliases in names.values():
        for alias in aliases:
            if alias in weights:
                weights[alias] = weights[first]
    return weights


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    rank: int = 0,
    keep: int = 2,
) -> Path:
    """Write a checkpoint from every rank; rank 0 writes the shared parts and publishes it.

    Collective: every rank must call it (FSDP's weight shards are gathered to rank 0).

    Args:
        run_dir: Run directory.
        step: Completed training steps.
        model: The transformers model (not a DDP wrapper; FSDP-sharded is fine).
        tokenizer: Its tokenizer.
        trainer_state: Rank-independent state (``optimizer_state``, scheduler, step); rank 0
            saves it.
        rank_state: This rank's state (RNG, sampler).
        rank: This process's rank.
        keep: Number of most recent checkpoints to keep.

    Returns:
        The checkpoint directory.
    """
    root = run_dir / "checkpoints"
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    lora = is_lora(model)
    if lora:
        # The merged weights keep a checkpoint loadable as a plain model (eval, vLLM);
        # a resume loads the adapter beside them onto the base model.
        weights, plain = merged_state_dict(model), model.get_base_model()
    else:
        weights, plain = _share_tied(model, get_model_state_dict(model, options=_GATHERED)), model
    try:
        with writing_to(tmp):
            _save(rank_state, tmp / f"rank{rank}.pt")
            if rank == 0:
                plain.save_pretrained(tmp, state_dict=weights)
                if lora:
                    model.save_pretrained(tmp / ADAPTER_DIR)
                tokenizer.save_pretrained(tmp)
                _save(trainer_state, tmp / "trainer_state.pt")
    except BaseException:
        # The half-written checkpoint goes (on a full disk, its space is what a resume needs);
        # `latest` still names the previous one.
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if rank == 0:
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_atomically(root / "latest", lambda file: file.write(final.name.encode()))
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old)
    barrier()
    return final


def _save(state: dict[str, Any], path: Path) -> None:
    # Into an open file: torch.save given a path reports a full disk without its errno.
    with open(path, "wb") as file:
        torch.save(state, file)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names, or ``None`` without that file (a fresh run).

    Raises:
        UsageError: The file names no complete checkpoint. Complete means a ``step-N``
            folder: ``save_checkpoint`` writes ``.tmp-step-N`` and renames it only once every
            file is on disk. Starting from step 0 instead would rotate the valid ones away.
    """
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    complete = sorted(path.name for path in root.glob("step-*") if path.is_dir())
    if name in complete:
        return root / name
    present = (
        f"the complete ones are {', '.join(complete)}: write one of them into it"
        if complete
        else "there is no complete one"
    )
    raise UsageError(
        f"resume: {str(pointer)!r} names {name!r}, which is not a complete checkpoint; "
        f"{present}, or start over with --overwrite"
    )


def load_checkpoint_state(checkpoint: Path, rank: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(trainer_state, rank_state)`` of a checkpoint (weights load with ``from_pretrained``).

    Raises:
        ValueError: The checkpoint was written by a run with fewer ranks.
    """
    rank_file = checkpoint / f"rank{rank}.pt"
    if not rank_file.is_file():
        raise ValueError(
            f"resume: {checkpoint} has no state for rank {rank} (written with fewer ranks?)"
        )
    trainer_state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    return trainer_state, torch.load(rank_file, weights_only=False)
