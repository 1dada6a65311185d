"""systemd's readiness protocol (sd_notify), without a dependency: one datagram to
$NOTIFY_SOCKET. With `Type=notify` the unit is "started" only once READY=1 arrives,
that is once the DICOM listener accepts. Outside systemd this does nothing."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", "STOPPING=1", "RELOADING=1"); False when not under
    systemd or the socket cannot be reached (never raises: it is advisory)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]       # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
