"""Neural networks of MedFusion and their weights.

- :mod:`.fusionnet`: :class:`FusionNet`, the review's CNN fusion network (imports torch).
- :mod:`.weights`: the ``models/models.json`` registry, SHA-256 verified loading, saving.

Importing this package does not import torch (:mod:`.fusionnet` does: import it where the
network itself is needed, or reach it through :mod:`MedFusionLib.optional`).
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

__all__ = ["WeightsError", "WeightsIntegrityError", "WeightsNotFoundError",
           "default_model", "list_models", "load_model", "model_for_modalities", "models_dir",
           "pair_type"]

