"""`server.workers: 2` stopping and restarting: what a new connection meets.

SIGTERM'd, the server refuses new connections at once while its workers drain (as one
process does), and the associations it holds go on; while every worker restarts after
a crash, a new connection waits in the backlog and is served. Real processes
(`python -m pacs_server`), pynetdicom peers, plain sockets.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.polling import wait_until
from support.scu import SUCCESS, Scu
from support.workers import Held, start, write_config


def refused(port: int) -> bool:
    """Whether a TCP connection to `port` is refused (not queued in a backlog)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_stopping_server_refuses_new_connections_while_its_workers_drain(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    server = start(run_pacs, write_config(tmp_path))
    held = Held()
    try:
        for i in range(2):      # one on each worker: each one drains for its association
            assert held.open(server.port, f"HELD{i}").is_established
        mark = server.mark()
        server.signal(signal.SIGTERM)
        for worker in (1, 2):
            server.wait_for_event("server.draining", start=mark, worker=worker)
        # Refused at once, not left in a backlog to be reset when the supervisor exits.
        wait_until(lambda: refused(server.port), 2, "new connections refused")
        for assoc in held.assocs:             # the held associations go on meanwhile
            assert assoc.send_c_echo().Status == SUCCESS
    finally:
        held.release()
    assert server.wait(30) == 0, server.stderr


def test_while_every_worker_restarts_a_new_connection_waits_and_is_served(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    server = start(run_pacs, write_config(tmp_path))
    mark = server.mark()
    for pid in server.pids.values():
        os.kill(pid, signal.SIGKILL)
    for worker in (1, 2):
        server.wait_for_event("worker.died", start=mark, worker=worker)
    ae = Scu("WAITER").ae()
    ae.acse_timeout = 60       # the restart (0.5 s back-off, then an import) on a busy host
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    try:
        assert assoc.is_established, server.stderr
        assert assoc.send_c_echo().Status == SUCCESS
    finally:
        if assoc.is_established:
            assoc.release()
    assert server.stop() == 0, server.stderr
