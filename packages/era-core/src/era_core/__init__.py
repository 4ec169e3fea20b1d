"""ERA core: output activations that keep a model's sampling entropy above a floor by construction.

- ``era_core.functional``: the activations as pure functions.
- ``era_core.nn``: thin ``nn.Module`` wrappers.
- ``era_core.cli``: ``UsageError`` and the one-line error convention of the ERA commands.
- ``era_core.entropy``: entropies, chunked log-prob/entropy passes, bounded-action helpers, ``DeltaTuner``.
"""

from importlib.metadata import version

from era_core import cli, entropy, functional, nn, validation
from era_core.entropy import DeltaTuner, TruncatedNormal
from era_core.functional import (
    gaussian_era,
    response_entropy,
    softmax_era,
    token_era,
    token_era_scale,
    truncated_gaussian_era,
)
from era_core.nn import GaussianERA, SoftmaxERA, TruncatedGaussianERA

# The one version source is pyproject.toml, read back from the installed distribution.
__version__ = version("era-core")

__all__ = [
    "DeltaTuner",
    "GaussianERA",
    "SoftmaxERA",
    "TruncatedGaussianERA",
    "TruncatedNormal",
    "__version__",
    "cli",
    "entropy",
    "functional",
    "gaussian_era",
    "nn",
    "response_entropy",
    "softmax_era",
    "token_era",
    "token_era_scale",
    "truncated_gaussian_era",
    "validation",
]
