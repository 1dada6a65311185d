"""The elements of a DIMSE command set, read without pydicom for the few short messages
we decode by hand (a C-ECHO-RQ, a plain C-STORE-RSP): PS3.7 6.3.1, always Implicit VR
Little Endian, group 0000 only."""

from __future__ import annotations

import struct
from collections.abc import Mapping


def command_elements(command: bytes, sizes: Mapping[int, int]) -> dict[int, bytes] | None:
    """Element number -> value bytes, or None when `command` holds anything else than
    the elements of `sizes` (each at most once, of its fixed length where that is not
    0) or is truncated: the caller then leaves the message to upstream's decode."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(command)
    while pos < end:
        if end - pos < 8:
            return None
        group, elem, length = struct.unpack_from("<HHI", command, pos)
        pos += 8
        size = sizes.get(elem)
        if group != 0 or size is None or elem in values or pos + length > end \
                or (size and length != size):
            return None
        values[elem] = command[pos:pos + length]
        pos += length
    return values
