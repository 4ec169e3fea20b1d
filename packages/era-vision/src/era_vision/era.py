"""The ERA head: any classifier's logits go through ``era_core.nn.SoftmaxERA``."""

import fnmatch
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from era_core.nn import SoftmaxERA
from era_vision.models import find_classifier, num_classes_of, reset_classifier

__all__ = ["ERAClassifier", "no_weight_decay", "with_era"]

# timm's duck-typed model API, forwarded to the wrapped model when it has it (hasattr() on the
# wrapper answers as on the model, so timm's own fallbacks still apply to torchvision models).
_FORWARDED = {"pretrained_cfg", "default_cfg", "num_features", "set_grad_checkpointing"}


class ERAClassifier(nn.Module):
    """A classifier whose logits pass through ``SoftmaxERA``, in training and in evaluation.

    Every output distribution then has entropy >= ``min_entropy`` (paper calibration: a lower
    bound; ``"tight"``: the attained minimum), and the argmax is unchanged. The wrapped model
    is kept as ``self.model``, so its state dict keys gain a ``model.`` prefix; load pretrained
    weights into the model before wrapping it.

    Args:
        model: A classifier whose ``forward`` returns logits ``(batch, num_classes)``.
        min_entropy: The entropy floor H0 in nats; must be below ``log(num_classes)``.
        tau: ERA's temperature constant, > e (paper: 4).
        calibration: ``"paper"`` (the paper's mapping) or ``"tight"``.
    """

    def __init__(
        self,
        model: nn.Module,
        min_entropy: float,
        tau: float = 4.0,
        calibration: Literal["paper", "tight"] = "paper",
    ):
        super().__init__()
        self.num_classes = num_classes_of(find_classifier(model)[1])
        self.model = model
        self.era = SoftmaxERA(min_entropy, tau=tau, calibration=calibration)
        self._check_feasible()
        self.register_load_state_dict_pre_hook(_accept_unwrapped_keys)

    def __getattr__(self, name: str) -> Any:
        """Parameters and submodules as any module; then timm's model API, from the model.

        ``pretrained_cfg``/``default_cfg`` (what ``timm.data.resolve_data_config`` reads),
        ``num_features`` and ``set_grad_checkpointing`` come from the wrapped model as they
        are; ``no_weight_decay`` and ``group_matcher`` (``create_optimizer_v2``, with and
        without ``layer_decay``) name the wrapper's parameters, which carry a ``model.``
        prefix. A model without the attribute raises AttributeError, as timm expects.
        """
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in _FORWARDED | {"no_weight_decay", "group_matcher"}:
                raise
        model = self._modules["model"]
        if name in _FORWARDED:
            return getattr(model, name)
        inner = getattr(model, name)  # AttributeError: not a timm model
        if name == "no_weight_decay":
            return lambda: {f"model.{pattern}" for pattern in inner()}
        return lambda coarse=False: _prefixed_matcher(inner(coarse=coarse))

    def _check_feasible(self) -> None:
        # era-core validates H0 against the class count when it sees logits; one dummy row
        # surfaces that ValueError when the model is built instead of at the first batch.
        self.era(torch.zeros(1, self.num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """ERA logits ``(batch, num_classes)``; computed in float32 even under autocast."""
        return self.era(self.model(x).float())

    def _timm_method(self, name: str) -> Callable:
        method = getattr(self.model, name, None)
        if method is None:
            raise AttributeError(
                f"{type(self.model).__name__} has no {name}() (a timm API that torchvision "
                "models lack); call the ERAClassifier on images instead"
            )
        return method

    def forward_features(self, x: Tensor) -> Tensor:
        """The wrapped model's ``forward_features`` (timm and registered models only)."""
        return self._timm_method("forward_features")(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """The wrapped model's ``forward_head``, with ERA applied unless ``pre_logits``.

        timm and registered models only: torchvision models have no such method.
        """
        x = self._timm_method("forward_head")(x, pre_logits=pre_logits)
        return x if pre_logits else self.era(x.float())

    def get_classifier(self) -> nn.Module:
        """The wrapped model's final layer."""
        return find_classifier(self.model)[1]

    def reset_classifier(self, num_classes: int) -> None:
        """Give the wrapped model a fresh classifier and recheck H0 against it.

        timm models reset their own; for torchvision models the last linear layer of the
        classifier is replaced.
        """
        reset_classifier(self.model, num_classes)
        self.num_classes = num_classes
        self._check_feasible()


def _prefixed_matcher(matcher: Any) -> Any:
    """A timm ``group_matcher`` rewritten for the wrapper's parameter names, ``model.<name>``.

    timm's matchers are regexes matched from the start of a name, or a function of the name.
    """
    if callable(matcher):
        return lambda name: matcher(name.removeprefix("model."))

    def prefixed(pattern: str) -> str:
        return rf"^model\.(?:{pattern.removeprefix('^')})"

    return {
        group: spec if spec is None
        else prefixed(spec) if isinstance(spec, str)
        else [(prefixed(regex), *rest) for regex, *rest in spec]
        for group, spec in matcher.items()
    }  # fmt: skip


def _accept_unwrapped_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """Let the wrapper load a state dict of the bare model (timm's ``load_checkpoint``).

    Keys without ``model.`` get it, as long as none has it (then it is the wrapper's own).
    """
    own = [k for k in state_dict if k.startswith(prefix)]
    if own and not any(k.startswith(f"{prefix}model.") for k in own):
        for key in own:
            state_dict[f"{prefix}model.{key.removeprefix(prefix)}"] = state_dict.pop(key)


def no_weight_decay(model: nn.Module) -> set[str]:
    """Names of ``model``'s parameters that take no weight decay, as timm decides it.

    1-d parameters (norm weights, biases) and those the model's ``no_weight_decay()`` names
    (fnmatch patterns, e.g. a ViT's ``pos_embed`` and ``cls_token``), for wrapped and bare
    timm models alike.
    """
    patterns: set[str] = getattr(model, "no_weight_decay", set)()
    return {
        name
        for name, param in model.named_parameters()
        if param.ndim <= 1 or any(fnmatch.fnmatch(name, pattern) for pattern in patterns)
    }


def with_era(
    model: nn.Module,
    min_entropy: float,
    tau: float = 4.0,
    calibration: Literal["paper", "tight"] = "paper",
) -> ERAClassifier:
    """Wrap a torchvision, timm or registered classifier so its logits go through ERA.

    Args:
        model: A classifier whose ``forward`` returns logits ``(batch, num_classes)``; its
            classifier is found through timm's ``get_classifier`` or torchvision's
            ``fc``/``classifier``/``heads``/``head``.
        min_entropy: The entropy floor H0 in nats; must be below ``log(num_classes)``.
        tau: ERA's temperature constant, > e (paper: 4).
        calibration: ``"paper"`` (default, comparable with the paper) or ``"tight"``.

    Returns:
        The wrapped model.

    Raises:
        ValueError: If the classifier cannot be found or H0 is infeasible for the class count.

    Example:
        >>> import torchvision
        >>> model = with_era(torchvision.models.resnet18(num_classes=10), min_entropy=0.6)
    """
    return ERAClassifier(model, min_entropy, tau=tau, calibration=calibration)
