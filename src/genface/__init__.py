"""genface: Hydra + Lightning framework for generative face models."""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root (the checkout genface is installed from in editable mode): conf/ and experiments/ live here.
ROOT = Path(__file__).resolve().parents[2]
