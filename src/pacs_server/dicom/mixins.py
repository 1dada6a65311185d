"""`with_mixin`: behaviour added to a live pynetdicom object by switching its class."""

from __future__ import annotations

from typing import Any


def with_mixin(obj: Any, mixin: type[Any]) -> None:
    """Give `obj` the behaviour of `mixin` on top of its present class (the event-driven
    reactors replace the DIMSE provider's class too, so a plain assignment would undo
    theirs): one combined class per pair, made once."""
    obj.__class__ = _combined(mixin, obj.__class__)


_COMBINED: dict[tuple[type[Any], type[Any]], type[Any]] = {}


def _combined(mixin: type[Any], base: type[Any]) -> type[Any]:
    if issubclass(base, mixin):
        return base
    combined = _COMBINED.get((mixin, base))
    if combined is None:        # a lost race makes two equal classes: harmless
        combined = type(f"{mixin.__name__}_{base.__name__}", (mixin, base), {})
        _COMBINED[(mixin, base)] = combined
    return combined
