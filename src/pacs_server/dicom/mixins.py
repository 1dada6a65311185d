"""`with_mixin`: behaviour added to a live pynetdicom object by switching its class."""

from __future__ import annotations

import functools
from typing import Any


def with_mixin(obj: Any, mixin: type) -> None:
    """Give `obj` the behaviour of `mixin` on top of its present class (the event-driven
    reactors replace the DIMSE provider's class too, so a plain assignment would undo
    theirs): one combined class per pair, made once."""
    obj.__class__ = _combined(mixin, type(obj))


@functools.cache
def _combined(mixin: type, base: type) -> type:
    if issubclass(base, mixin):
        return base
    return type(f"{mixin.__name__}_{base.__name__}", (mixin, base), {})
