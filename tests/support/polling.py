"""Waiting without sleeping for a fixed time, and ports on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll `predicate` every 20 ms until it holds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on `port`."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
