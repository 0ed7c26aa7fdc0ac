"""Neural networks of MedFusion and their weights.

- :mod:`.fusionnet`: :class:`FusionNet`, the review's CNN fusion network (imports torch).
- :mod:`.weights`: the ``models/models.json`` registry, SHA-256 verified loading, saving.

Importing this package does not import torch; ``FusionNet`` is loaded on first access.
"""

from __future__ import annotations

from .weights import (
    WeightsError,
    WeightsIntegrityError,
    WeightsNotFoundError,
    default_model,
    list_models,
    load_model,
    model_for_modalities,
    models_dir,
    pair_type,
)

__all__ = ["FusionNet", "WeightsError", "WeightsIntegrityError", "WeightsNotFoundError",
           "default_model", "list_models", "load_model", "model_for_modalities", "models_dir",
           "pair_type"]


def __getattr__(name):
    if name == "FusionNet":
        from .fusionnet import FusionNet

        return FusionNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
