"""``python -m era_vision`` (what ``torchrun ... -m era_vision train`` runs)."""

import sys

from era_vision.cli import main

sys.exit(main())
