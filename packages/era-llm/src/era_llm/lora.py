"""LoRA adapters through PEFT: wrap a causal LM, resume its adapter, merge it for sampling.

Only the adapters train; the base weights stay frozen (in float32, or bfloat16 with
``param_dtype=bfloat16``). A checkpoint holds the adapter (``adapter/``, what a resume loads
onto the base model) and the merged weights (``save_pretrained`` format, what ``era-llm eval``
and vLLM load); vLLM also receives the merged weights after every optimiser step.

Needs the ``era-llm[lora]`` extra; ``peft`` is imported only when LoRA is on.
"""

import warnings
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from era_llm.errors import UsageError

__all__ = ["ADAPTER_DIR", "add_lora", "is_lora", "merged_state_dict"]

# The adapter's sub-directory of a checkpoint.
ADAPTER_DIR = "adapter"
# How many of the model's layer names an unknown target's error lists.
_SHOWN = 16


def _peft() -> Any:
    try:
        import peft
    except ImportError as error:
        raise UsageError(
            "LoRA needs PEFT, which is not installed: pip install 'era-llm[lora]' (--lora-rank)"
        ) from error
    return peft


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    target_modules: list[str],
    adapter: Path | None = None,
) -> Any:
    """Wrap ``model`` in trainable LoRA adapters (base weights frozen).

    Args:
        model: A transformers causal LM.
        rank: Adapter rank ``r``.
        alpha: Scaling numerator: the update is ``alpha / r * B @ A``.
        target_modules: Module names to adapt (``["all-linear"]``: every linear layer but
            the output projection).
        adapter: A saved adapter directory to continue from (a resume), or ``None`` for a
            fresh one (``B = 0``: the wrapped model starts equal to ``model``).

    Returns:
        The ``PeftModel``; its trainable parameters are the adapters'.
    """
    peft = _peft()
    if target_modules != ["all-linear"]:
        _check_targets(model, target_modules)
    targets = target_modules[0] if target_modules == ["all-linear"] else list(target_modules)
    # No dropout: the trainer must score exactly the policy that sampled.
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none"
    )
    with warnings.catch_warnings():
        # PEFT reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning
        # under transformers 5); nothing for a user to act on.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        if adapter is not None:
            return peft.PeftModel.from_pretrained(model, adapter, is_trainable=True)
        return peft.get_peft_model(model, config)


def _check_targets(model: nn.Module, target_modules: list[str]) -> None:
    """Refuse target names no module of ``model`` has (PEFT drops them when others match)."""
    paths = [name for name, _ in model.named_modules() if name]
    # PEFT's match: the target is the module's dotted path or the end of it.
    unknown = [t for t in target_modules if not any(p == t or p.endswith(f".{t}") for p in paths)]
    if unknown:
        leaves = [p for p, m in model.named_modules() if p and next(m.children(), None) is None]
        layers = sorted({p.rsplit(".", 1)[-1] for p in leaves})
        shown = ", ".join(layers[:_SHOWN]) + (", ..." if len(layers) > _SHOWN else "")
        raise UsageError(
            f"lora_target_modules: the model has no module named {', '.join(unknown)} "
            f"(its module names: {shown}; or all-linear)"
        )


def is_lora(model: Any) -> bool:
    """Whether ``model`` is a PEFT-wrapped model (without importing PEFT when it is not)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def merged_state_dict(model: Any) -> dict[str, Tensor]:
    """The base model's weights with every active LoRA update added in; ``model`` is unchanged.

    Keys are the base model's own (``model.layers.0.self_attn.q_proj.weight``), so the dict
    loads into the plain architecture (``save_pretrained``, vLLM's ``load_weights``). Each
    merged weight is ``W + (alpha / r) * B @ A`` in ``W``'s dtype, the sum PEFT's
    ``merge_and_unload`` computes, without merging in place (which could not be undone
    bit for bit) or copying the model.
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            delta = sum(
                # PEFT defines get_delta_weight on each concrete LoraLayer, not on the base class.
                module.get_delta_weight(a)  # pyright: ignore[reportAttributeAccessIssue]
                for a in module.active_adapters
            )
            deltas[f"{name}.base_layer.weight"] = delta
    merged = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        value = value.detach()
        if key in deltas:
            value = value + deltas[key].detach().to(value.dtype)
        merged[key.replace(".base_layer.", ".")] = value
    return merged
