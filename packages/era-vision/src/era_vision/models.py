"""Model registry: small CPU-friendly networks, torchvision classifiers and, with the extra, timm.

Every builder takes the same arguments, so the trainer can build any model from a name:
``builder(num_classes, in_chans, image_size, drop_rate, **kwargs) -> nn.Module``.
Names resolve in this order: models registered here, ``timm:<name>`` (needs ``era-vision[timm]``),
then any torchvision classification model.
"""

from collections import OrderedDict
from collections.abc import Callable
from typing import cast

import torch
import torchvision
from torch import Tensor, nn

__all__ = [
    "ClassifierHead",
    "NarrowResNet",
    "find_classifier",
    "get_model",
    "list_models",
    "register_model",
    "reset_classifier",
]

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}
# Up to this input side, torchvision ResNets get a CIFAR-style stem (see `_torchvision_resnet`).
SMALL_INPUT_MAX = 64


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers a model builder under ``name``.

    Args:
        name: The name ``get_model`` will accept.

    Returns:
        The decorator, which returns the builder unchanged.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Names ``get_model`` accepts without a prefix: registered models and torchvision classifiers.

    Any timm model is also accepted as ``timm:<name>`` when ``era-vision[timm]`` is installed.
    """
    return sorted(set(_REGISTRY) | set(torchvision.models.list_models(torchvision.models)))


def get_model(
    name: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    image_size: int = 224,
    drop_rate: float = 0.0,
    **kwargs,
) -> nn.Module:
    """Build a randomly initialised classifier by name.

    Args:
        name: A name from ``list_models()`` or ``timm:<name>``.
        num_classes: Number of output logits.
        in_chans: Input channels (1 for grayscale data).
        image_size: Input side in pixels; torchvision ResNets switch to a 3x3 stride-1 stem
            without max-pool up to 64 px.
        drop_rate: Dropout probability right before the classifier (0 disables it).
        **kwargs: Passed on to the builder (e.g. ``width`` for ``resnet_narrow``).

    Returns:
        The model; its ``forward`` returns logits of shape ``(batch, num_classes)``.

    Raises:
        ValueError: If the name is unknown or an argument is out of range.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate={drop_rate} must be in [0, 1)")
    if name.startswith("timm:"):
        builder = _timm_model(name.removeprefix("timm:"))
    elif name in _REGISTRY:
        builder = _REGISTRY[name]
    elif name in torchvision.models.list_models(torchvision.models):
        builder = _torchvision_model(name)
    else:
        raise ValueError(
            f"unknown model {name!r}; choose one of list_models() or 'timm:<name>' "
            f"(registered here: {', '.join(sorted(_REGISTRY))})"
        )
    return builder(num_classes, in_chans, image_size, drop_rate, **kwargs)


def find_classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """Locate a classifier's final layer the way timm and torchvision expose it.

    timm models (and the ones registered here) answer ``get_classifier()``; torchvision models keep
    it in ``fc``, ``classifier``, ``heads`` or ``head``.

    Args:
        model: A classifier.

    Returns:
        The submodule's dotted path in ``model`` and the submodule.

    Raises:
        ValueError: If no classifier can be found.
    """
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is not None:
        classifier = get_classifier()
        for path, module in model.named_modules():
            if module is classifier and path:
                return path, module
    for path in ("fc", "classifier", "heads", "head"):
        module = getattr(model, path, None)
        if isinstance(module, nn.Module):
            return path, module
    raise ValueError(
        f"cannot find the classifier of {type(model).__name__}: expected timm's get_classifier() "
        "or a torchvision fc/classifier/heads/head attribute"
    )


def num_classes_of(classifier: nn.Module) -> int:
    """Number of outputs of a classifier module: its last Linear or Conv2d layer's width."""
    for module in reversed(list(classifier.modules())):
        if isinstance(module, nn.Linear):
            return module.out_features
        if isinstance(module, nn.Conv2d):
            return module.out_channels
    raise ValueError(f"classifier {type(classifier).__name__} has no Linear or Conv2d layer")


def reset_classifier(model: nn.Module, num_classes: int) -> None:
    """Give ``model`` a fresh classifier with ``num_classes`` outputs, in place.

    Uses the model's own ``reset_classifier`` (timm, registered models); otherwise replaces the
    last ``nn.Linear`` of the classifier that ``find_classifier`` locates (torchvision).
    """
    own_reset = getattr(model, "reset_classifier", None)
    if own_reset is not None:
        own_reset(num_classes)
        return
    path, classifier = find_classifier(model)
    linears = [(name, m) for name, m in classifier.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"classifier {type(classifier).__name__} has no Linear layer to reset")
    name, last = linears[-1]
    fresh = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
    model.set_submodule(".".join(filter(None, (path, name))), fresh.to(last.weight.device))


def add_dropout(model: nn.Module, drop_rate: float) -> nn.Module:
    """Put ``nn.Dropout(drop_rate)`` in front of the model's classifier, in place."""
    if drop_rate > 0:
        path, classifier = find_classifier(model)
        model.set_submodule(path, nn.Sequential(nn.Dropout(drop_rate), classifier))
    return model


class ClassifierHead(nn.Module):
    """Global average pool, dropout and a linear classifier (timm's ``ClassifierHead`` shape)."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.num_features = num_features
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def reset(self, num_classes: int) -> None:
        """Replace the linear layer with a fresh one with ``num_classes`` outputs."""
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool ``(batch, features, h, w)`` maps; return pooled features or logits."""
        x = self.drop(x.mean((-2, -1)))
        return x if pre_logits else self.fc(x)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class NarrowResNet(nn.Module):
    """A ResNet for 8x8 to 32x32 images that trains on a CPU.

    A 3x3 stem keeps full resolution, then three stages of basic blocks with widths
    ``width, 2*width, 4*width`` halve it twice (28x28 -> 7x7, 8x8 -> 2x2). With the defaults
    (width 16, two blocks per stage) it has 0.17 M parameters, like the CIFAR ResNet-14 of He et al.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        width: int = 16,
        depths: tuple[int, ...] = (2, 2, 2),
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks, cin = [], width
        for stage, depth in enumerate(depths):
            cout = width * 2**stage
            for i in range(depth):
                blocks.append(_BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(cin, num_classes, drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature maps before pooling, ``(batch, 4*width, h/4, w/4)``."""
        return self.blocks(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooled features (``pre_logits=True``) or logits from feature maps."""
        return self.head(x, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        """The final linear layer."""
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer with a fresh one with ``num_classes`` outputs."""
        self.head.reset(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, num_classes)`` from images ``(batch, in_chans, h, w)``."""
        return self.forward_head(self.forward_features(x))


@register_model("resnet_narrow")
def _resnet_narrow(
    num_classes: int, in_chans: int, image_size: int, drop_rate: float, **kwargs
) -> nn.Module:
    return NarrowResNet(num_classes, in_chans, drop_rate=drop_rate, **kwargs)


@register_model("mlp")
def _mlp(
    num_classes: int, in_chans: int, image_size: int, drop_rate: float, hidden: int = 256
) -> nn.Module:
    """One hidden layer on flattened pixels; has no batch statistics, so DDP equals one process."""
    layers = {
        "flatten": nn.Flatten(),
        "hidden": nn.Linear(in_chans * image_size**2, hidden),
        "act": nn.ReLU(),
        "drop": nn.Dropout(drop_rate),
        "fc": nn.Linear(hidden, num_classes),  # named `fc` so find_classifier sees it
    }
    return nn.Sequential(OrderedDict(layers))


def _torchvision_resnet(name: str) -> ModelBuilder:
    def build(
        num_classes: int, in_chans: int, image_size: int, drop_rate: float, **kwargs
    ) -> nn.Module:
        # get_model is typed to return any nn.Module; these names are ResNets.
        model = cast(
            torchvision.models.ResNet,
            torchvision.models.get_model(name, num_classes=num_classes, **kwargs),
        )
        small = image_size <= SMALL_INPUT_MAX
        if small or in_chans != 3:
            # The CIFAR variant of He et al. (2016): a 7x7/2 stem plus max-pool would shrink a
            # 32x32 image to 1x1 by the last stage.
            kernel, stride = (3, 1) if small else (7, 2)
            width = model.conv1.out_channels
            model.conv1 = nn.Conv2d(in_chans, width, kernel, stride, kernel // 2, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            if small:
                model.maxpool = nn.Identity()  # pyright: ignore[reportAttributeAccessIssue]  # ResNet infers MaxPool2d
        return add_dropout(model, drop_rate)

    return build


for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register_model(_name)(_torchvision_resnet(_name))


def _torchvision_model(name: str) -> ModelBuilder:
    def build(
        num_classes: int, in_chans: int, image_size: int, drop_rate: float, **kwargs
    ) -> nn.Module:
        if in_chans != 3:
            raise ValueError(
                f"torchvision model {name!r} takes in_chans=3, got {in_chans}; "
                "use a registered model or a timm model for other channel counts"
            )
        return add_dropout(
            torchvision.models.get_model(name, num_classes=num_classes, **kwargs), drop_rate
        )

    return build


def _timm_model(name: str) -> ModelBuilder:
    try:
        import timm
    except ImportError as error:
        raise ImportError("timm models need the extra: pip install 'era-vision[timm]'") from error
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")

    def build(
        num_classes: int, in_chans: int, image_size: int, drop_rate: float, **kwargs
    ) -> nn.Module:
        return timm.create_model(
            name, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **kwargs
        )

    return build
