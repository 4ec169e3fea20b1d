"""``nn.Module`` wrappers: each ``forward`` calls its function in ``era_core.functional``."""

from torch import Tensor, nn

from era_core import functional as F
from era_core.functional import Calibration
from era_core.validation import check_range

__all__ = ["GaussianERA", "SoftmaxERA", "TruncatedGaussianERA"]


class GaussianERA(nn.Module):
    """Raw scale -> log-std with Gaussian entropy >= ``target_entropy``; see ``gaussian_era``."""

    def __init__(
        self, target_entropy: float, log_std_min: float = -8.0, log_std_max: float = 0.0
    ) -> None:
        super().__init__()
        F.check_log_std_bounds(log_std_min, log_std_max)
        self.target_entropy = target_entropy
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max

    def forward(self, raw_scale: Tensor, target_entropy: float | Tensor | None = None) -> Tensor:
        """Args: raw_scale ``(*batch, D)``; ``target_entropy`` overrides the stored one (e.g. ``H0 + delta``)."""
        target = self.target_entropy if target_entropy is None else target_entropy
        return F.gaussian_era(raw_scale, target, self.log_std_min, self.log_std_max)

    def extra_repr(self) -> str:
        """Constructor arguments, for ``print(model)``."""
        return (
            f"target_entropy={self.target_entropy:g}, "
            f"log_std_min={self.log_std_min:g}, log_std_max={self.log_std_max:g}"
        )


class SoftmaxERA(nn.Module):
    """Logits -> logits whose softmax has entropy >= ``min_entropy``; see ``softmax_era``."""

    def __init__(
        self,
        min_entropy: float,
        tau: float = 4.0,
        calibration: Calibration = "paper",
        dim: int = -1,
    ) -> None:
        super().__init__()
        if calibration not in ("paper", "tight"):
            raise ValueError(f"calibration must be 'paper' or 'tight', got {calibration!r}")
        check_range("tau", tau, 2.718281828459045, None, low_inclusive=False)
        self.min_entropy = min_entropy
        self.tau = tau
        self.calibration: Calibration = calibration
        self.dim = dim

    def forward(self, logits: Tensor) -> Tensor:
        """Args: logits with classes along ``dim``."""
        return F.softmax_era(logits, self.min_entropy, self.tau, self.calibration, self.dim)

    def extra_repr(self) -> str:
        """Constructor arguments, for ``print(model)``."""
        return f"min_entropy={self.min_entropy:g}, tau={self.tau:g}, calibration={self.calibration!r}, dim={self.dim}"


class TruncatedGaussianERA(nn.Module):
    """``(loc, raw scale) -> log-std`` whose truncated normals have entropy >= target; see ``truncated_gaussian_era``."""

    def __init__(
        self, target_entropy: float, log_std_min: float = -8.0, log_std_max: float = 0.0
    ) -> None:
        super().__init__()
        F.truncated_normal_entropy_bounds(log_std_min, log_std_max)  # validates the bounds
        self.target_entropy = target_entropy
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max

    def forward(
        self, loc: Tensor, raw_scale: Tensor, target_entropy: float | Tensor | None = None
    ) -> Tensor:
        """Args: loc in ``[-1, 1]`` and raw_scale, both ``(*batch, D)``; ``target_entropy`` overrides the stored one."""
        target = self.target_entropy if target_entropy is None else target_entropy
        return F.truncated_gaussian_era(loc, raw_scale, target, self.log_std_min, self.log_std_max)

    def extra_repr(self) -> str:
        """Constructor arguments, for ``print(model)``."""
        return (
            f"target_entropy={self.target_entropy:g}, "
            f"log_std_min={self.log_std_min:g}, log_std_max={self.log_std_max:g}"
        )
