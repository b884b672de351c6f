"""Model families. Importing this package registers every built-in family in :data:`FAMILIES`."""

from __future__ import annotations

# Imported for their side effect: each family module registers itself in FAMILIES.
from hpo.models import cnn, mlp, resnet, vgg  # noqa: F401
from hpo.models.base import FAMILIES, ModelFamily, count_parameters

__all__ = ["FAMILIES", "ModelFamily", "count_parameters", "get_family"]


def get_family(name: str) -> ModelFamily:
    """An instance of the family registered as ``name``; :class:`KeyError` naming the known ones."""
    return FAMILIES.get(name)()
