"""The base of every config model: frozen, no unknown fields, fields classified for the
fingerprint (``OUTPUTS`` / ``NOT_OUTPUTS``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from button_ray.frozen import Frozen
from button_ray.llm.contract import Sampling


class _Config(Frozen):
    #: Fields whose value changes what a run writes: they go into the fingerprint.
    OUTPUTS: ClassVar[frozenset[str]] = frozenset()
    #: Fields that change speed, placement or where things go, never a record.
    NOT_OUTPUTS: ClassVar[frozenset[str]] = frozenset()

    def fingerprint_payload(self) -> dict[str, Any]:
        """The JSON value of the ``OUTPUTS`` fields, nested configs reduced the same way."""
        return {name: _payload(getattr(self, name)) for name in sorted(self.OUTPUTS)}


def _payload(value: Any) -> Any:
    if isinstance(value, _Config):
        return value.fingerprint_payload()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (tuple, list)):
        return [_payload(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _payload(v) for k, v in value.items()}
    return value


def _s(temperature: float, max_tokens: int, top_p: float = 0.95) -> Sampling:
    return Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens)



#: How tightly a role's output is constrained (see docs/constraints.md):
#: ``structure`` guarantees well-formed output (JSON, function names, argument names and
#: types, the ``<call>``/``<final>`` shape) and bounds nothing else; ``tight`` adds the
#: word and length bounds of :class:`TightConstraints` a very small model needs; ``off``
#: sends no constraint (the parsers still check everything).
Strength = Literal["structure", "tight", "off"]


