"""medaug: contrastive pretraining sweeps for chest X-rays with metadata-chosen positive pairs."""

__version__ = "0.1.0"

from medaug.errors import MedaugError

__all__ = ["MedaugError", "__version__"]
