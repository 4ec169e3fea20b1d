"""Ensemble-batched MLPs: the parameters of N networks stacked on a leading member axis.

One ``torch.baddbmm`` per layer evaluates every member on its own batch, so N seeds cost
about as much Python and dispatch overhead as one. Inputs and outputs are shaped
``(members, batch, features)``; no operation mixes members, so their gradients are
independent (Adam is element-wise, so one optimiser over the stacked tensors equals N
separate ones).
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "EnsembleLayerNorm",
    "EnsembleLinear",
    "EnsembleMLP",
    "clip_grad_norm_per_seed_",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh}


class EnsembleLinear(nn.Module):
    """``y[m] = x[m] @ weight[m] + bias[m]`` for every member ``m``.

    Initialised like ``nn.Linear`` (uniform in ``±1/sqrt(in_features)``), member ``m`` from
    ``generators[m]``: a member's initial weights depend on its generator only.

    Args:
        generators: One generator per member (a seed's generator may own several members).
        in_features: Input width.
        out_features: Output width.
        device: Where the parameters live.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        in_features: int,
        out_features: int,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        members = len(generators)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features, device=device))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features, device=device))
        bound = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            for m, gen in enumerate(generators):
                self.weight[m].uniform_(-bound, bound, generator=gen)
                self.bias[m].uniform_(-bound, bound, generator=gen)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: ``(members, batch, in) -> (members, batch, out)``."""
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:  # noqa: D102 - nn.Module's
        members, fan_in, fan_out = self.weight.shape
        return f"members={members}, in_features={fan_in}, out_features={fan_out}"


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the feature axis with a separate affine transform per member."""

    def __init__(
        self, members: int, features: int, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, features, device=device))
        self.bias = nn.Parameter(torch.zeros(members, 1, features, device=device))

    def forward(self, x: Tensor) -> Tensor:
        """Shape: ``(members, batch, features)``, unchanged."""
        return nn.functional.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class EnsembleMLP(nn.Sequential):
    """``Linear -> [LayerNorm] -> activation`` per hidden layer, then a linear output layer.

    Args:
        generators: One generator per member.
        in_features: Input width.
        hidden: Hidden layer widths, e.g. ``(256, 256)``.
        out_features: Output width.
        activation: A key of :data:`ACTIVATIONS`.
        layer_norm: LayerNorm after each hidden linear layer (the authors' critics).
        device: Where the parameters live.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        layer_norm: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers.append(EnsembleLinear(generators, width, size, device))
            if layer_norm:
                layers.append(EnsembleLayerNorm(len(generators), size, device))
            layers.append(ACTIVATIONS[activation]())
            width = size
        layers.append(EnsembleLinear(generators, width, out_features, device))
        super().__init__(*layers)


def clip_grad_norm_per_seed_(params: Sequence[Tensor], max_norm: float, seeds: int) -> Tensor:
    """``clip_grad_norm_`` for each seed separately; returns the per-seed norms before clipping.

    Every parameter's leading axis holds the members of all seeds, seed-major (a seed may own
    several consecutive members, e.g. its Q heads).
    """
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.cat([g.reshape(seeds, -1) for g in grads], dim=1).norm(dim=1)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    # One foreach call, as torch's own clip_grad_norm_ does (updates are dispatch-bound at
    # these sizes); torch has no public name for its foreach ops, hence the ignore.
    scales = [
        scale.repeat_interleave(g.shape[0] // seeds).view(-1, *[1] * (g.dim() - 1)) for g in grads
    ]
    torch._foreach_mul_(grads, scales)  # pyright: ignore[reportPrivateImportUsage]
    return norms
