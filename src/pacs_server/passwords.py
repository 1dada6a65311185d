"""Password hashes for the DICOMweb HTTP Basic users: scrypt from the standard library.

A hash reads `scrypt$<n>$<r>$<p>$<salt b64>$<key b64>`; only the hash is kept in the
configuration, never the password. A leaf module (config checks the format).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_N, _R, _P = 1 << 14, 8, 1
_KEY_BYTES = 32


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The scrypt hash of `password` with a new random salt."""
    salt = salt if salt is not None else os.urandom(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P,
                         dklen=_KEY_BYTES)
    return "$".join(["scrypt", str(_N), str(_R), str(_P),
                     base64.b64encode(salt).decode(), base64.b64encode(key).decode()])


def _parts(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    fields = stored.split("$")
    if len(fields) != 6 or fields[0] != "scrypt":
        return None
    try:
        n, r, p = (int(v) for v in fields[1:4])
        salt = base64.b64decode(fields[4], validate=True)
        key = base64.b64decode(fields[5], validate=True)
    except ValueError:
        return None
    if n < 2 or n & (n - 1) or not 0 < r <= 64 or not 0 < p <= 16 or not salt or not key:
        return None
    return n, r, p, salt, key


def is_password_hash(stored: str) -> bool:
    return _parts(stored) is not None


def check_password(password: str, stored: str) -> bool:
    """True when `password` hashes to `stored` (compared in constant time)."""
    parts = _parts(stored)
    if parts is None:
        return False
    n, r, p, salt, key = parts
    try:
        got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                             dklen=len(key), maxmem=256 << 20)
    except ValueError:
        return False
    return hmac.compare_digest(got, key)
