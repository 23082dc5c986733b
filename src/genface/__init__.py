"""genface: Hydra + Lightning framework for generative face models."""

__version__ = "0.1.0"
