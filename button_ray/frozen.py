"""The one base of button_ray's immutable data models (configs, records, engine requests)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Immutable, and strict about its fields: an unknown field is an error, not ignored,
    so a misspelt config key or a record of another shape cannot pass silently."""

    model_config = ConfigDict(frozen=True, extra="forbid")
