"""Model families. Importing this package registers every built-in family in :data:`FAMILIES`.

Adding a family is one file here with one decorator (``@FAMILIES.register("name")``): every
module of this package is imported below, so nothing else needs editing. Nothing imports this
package until a command needs the families (``hpo --help`` never does).
"""

from __future__ import annotations

from hpo.models.base import FAMILIES, ModelFamily, count_parameters
from hpo.registry import import_submodules

# Each family module registers itself in FAMILIES when imported.
import_submodules(__name__, __path__)

__all__ = ["FAMILIES", "ModelFamily", "count_parameters", "get_family"]


def get_family(name: str) -> ModelFamily:
    """An instance of the family registered as ``name``; :class:`KeyError` naming the known ones."""
    return FAMILIES.get(name)()
