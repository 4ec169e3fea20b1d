"""ERA for continuous control: SAC-ERA, PPO-ERA and their baselines on gymnasium and MuJoCo."""

from importlib.metadata import version

# The one version source is pyproject.toml, read back from the installed distribution.
__version__ = version("era-control")

__all__ = ["__version__"]
