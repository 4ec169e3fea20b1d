"""ERA for language models: GRPO and GRPO-ERA for causal LMs, math rewards, pass@k evaluation.

Importing the package loads nothing heavy; the modules (``era_llm.trainer``,
``era_llm.evaluation``, ``era_llm.rewards``, ...) bring in transformers when imported.
"""

from importlib.metadata import version

# The one version source is pyproject.toml, read back from the installed distribution.
__version__ = version("era-llm")

__all__ = ["__version__"]
