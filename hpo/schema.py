"""The base of every user-facing settings model: unknown fields are refused with "did you mean".

Study-file blocks and data-source options all derive from :class:`StrictModel`, so a typo reads the
same everywhere: ``unknown field 'nmae' (did you mean 'name'?); allowed: name, …``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from hpo.registry import did_you_mean


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown fields and suggests the closest known one."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_field",
                        "unknown field '{key}'{hint}; allowed: {allowed}",
                        {
                            "key": key,
                            "hint": did_you_mean(str(key), known),
                            "allowed": ", ".join(known),
                        },
                    )
        return data
