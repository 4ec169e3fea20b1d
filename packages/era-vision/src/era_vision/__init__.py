"""ERA for image classification: an entropy-floor head for any classifier, a recipe, metrics."""

from importlib.metadata import version

from era_vision.calibration import evaluate_heads, fit_temperature, head_logits
from era_vision.era import ERAClassifier, with_era
from era_vision.losses import LOSSES, confidence_penalty, cross_entropy
from era_vision.metrics import ClassificationMetrics, expected_calibration_error
from era_vision.models import find_classifier, get_model, list_models, register_model

# The one version source is pyproject.toml, read back from the installed distribution.
__version__ = version("era-vision")

__all__ = [
    "LOSSES",
    "ClassificationMetrics",
    "ERAClassifier",
    "__version__",
    "confidence_penalty",
    "cross_entropy",
    "evaluate_heads",
    "expected_calibration_error",
    "find_classifier",
    "fit_temperature",
    "get_model",
    "head_logits",
    "list_models",
    "register_model",
    "with_era",
]
