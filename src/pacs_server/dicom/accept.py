"""Worker processes accepting on one listening socket, the least busy first.

With `server.workers` > 1 the supervisor binds and listens once per port and every
worker inherits that socket (workers/supervisor.py). Before, each worker bound its own
SO_REUSEPORT socket and the kernel hashed each connection to one of them: 4 concurrent
associations split 2/2 only 3 times in 8, and a 3/1 or 4/0 run lasts as long as the
busier worker needs (docs/performance.md, "Results: worker balance"). Here every
worker's accept loop wakes for a new connection, and one that holds more live
connections than a sibling steps back for at most `BALANCE_WAIT_S`, so the least busy
one takes it; past that bound anyone does, so no connection waits on a worker that is
slow to run its accept loop.

The live connections of each worker are a `LoadBoard`: one 64-bit slot per worker in a
small file of the supervisor's run directory that every worker maps. A worker writes
only its own slot (accepted connections not yet closed, plain and TLS together); a slot
reads `ABSENT` while its worker does not accept (starting, draining, dead), and nobody
steps back for it.
"""

from __future__ import annotations

import mmap
import select
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any, cast

from pacs_server.dicom.connection import PacsAssociationServer, start_association_thread
from pacs_server.dicom.requestor import PacsAE

ABSENT = (1 << 62)
# A worker's accept thread that is woken with its sibling takes the connection within
# microseconds when its process is idle, within a GIL switch interval (5 ms) when its
# association threads keep the GIL busy; on a loaded machine (load 10 on 2 cores) a 5 ms
# bound still split 4 associations 3/1 or 4/0 in 3 runs of 20, 20 ms in none
# (docs/performance.md). Past this, a busier worker accepts too.
BALANCE_WAIT_S = 0.02
RECHECK_S = 0.0005
_SLOT = 8


class LoadBoard:
    """Live connections per worker (slots 1..N) in a shared, memory-mapped file."""

    def __init__(self, path: Path, slots: int, own: int | None = None) -> None:
        self._slots = slots
        self._own = own
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), _SLOT * (slots + 1))
        self._cells = memoryview(self._map).cast("q")
        self._lock = threading.Lock()
        self._live = 0

    @classmethod
    def create(cls, path: Path, slots: int) -> LoadBoard:
        """The supervisor's board: every slot ABSENT until its worker listens."""
        path.write_bytes(ABSENT.to_bytes(_SLOT, "little") * (slots + 1))
        return cls(path, slots)

    def get(self, index: int) -> int:
        return int(self._cells[index])

    def set(self, index: int, value: int) -> None:
        self._cells[index] = value

    def absent(self, index: int) -> None:
        """Worker `index` does not accept (it stopped listening, or died)."""
        self.set(index, ABSENT)

    # ---------------------------------------------------------- a worker's own slot
    def present(self) -> None:
        """This worker accepts: its slot shows its live connections again."""
        assert self._own is not None
        with self._lock:
            self.set(self._own, self._live)

    def leave(self) -> None:
        assert self._own is not None
        self.absent(self._own)

    def up(self) -> None:
        self._add(1)

    def down(self) -> None:
        self._add(-1)

    def _add(self, delta: int) -> None:
        assert self._own is not None
        with self._lock:
            self._live = max(0, self._live + delta)
            if self.get(self._own) != ABSENT:
                self.set(self._own, self._live)

    def busier(self) -> bool:
        """Whether a sibling that accepts holds fewer live connections than this worker."""
        assert self._own is not None
        mine = self._live
        return any(self.get(i) < mine for i in range(1, self._slots + 1) if i != self._own)

    def close(self) -> None:
        self._cells.release()
        self._map.close()


class SharedListen:
    """What a worker's listeners share: the inherited listening sockets and the board."""

    def __init__(self, board: LoadBoard, fds: dict[str, int]) -> None:
        self.board = board
        self.fds = fds          # "plain" / "tls": descriptor numbers inherited at spawn

    def fd(self, tls: bool) -> int:
        return self.fds["tls" if tls else "plain"]


class BalancedAssociationServer(PacsAssociationServer):
    """A worker's listener: the supervisor's socket, accepted from least busy first."""

    def __init__(self, *args: Any, shared: SharedListen, listen_fd: int,
                 **kwargs: Any) -> None:
        self.shared = shared
        self._listen_fd = listen_fd
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """The inherited listening socket instead of upstream's bind.

        Upstream `AssociationServer.server_bind` sets SO_REUSEADDR and binds the
        socket `TCPServer.__init__` just made. Here that one is replaced by the
        descriptor inherited from the supervisor itself, not a duplicate: closing it
        at shutdown must leave this process holding none, so that once every process
        has closed its own (the supervisor closes its copy when it stops) the port
        refuses new connections instead of queueing them in a backlog nobody accepts
        from (docs/operations.md, worker processes, "Signals"). Non-blocking: every
        worker wakes for a connection and the ones that lose the race must not block
        in accept().
        Upstream change that would remove it: a `sock` argument to `AE.make_server`.
        """
        cast(socket.socket, self.socket).close()
        self.socket = socket.socket(fileno=self._listen_fd)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Listen on the shared socket (the first worker to start makes it listen; the
        supervisor only binds it, so a connection before any worker listens is refused
        at once rather than left waiting in a backlog nobody accepts from)."""
        cast(socket.socket, self.socket).listen(self.request_queue_size)

    def server_close(self) -> None:
        """Close this worker's descriptor only.

        Upstream `AssociationServer.server_close` calls `shutdown(SHUT_RDWR)` first; on
        a listening socket that stops the socket itself, not this descriptor: every
        sibling's accept would fail from then on (a draining worker would stop them
        all). Upstream change that would remove it: no shutdown() of a listening socket.
        """
        cast(socket.socket, self.socket).close()

    def get_request(self) -> tuple[Any, Any]:
        """Step back while a sibling is less busy, at most BALANCE_WAIT_S; then accept.

        Upstream `AssociationServer.get_request` accepts at once (relied upon: it
        wraps the socket only when `ssl_context` is set, which we never set). A
        sibling that took the connection meanwhile ends the wait: BlockingIOError,
        which socketserver's loop takes for "nothing to accept". Nothing upstream to
        change: pynetdicom serves one process; the balance across processes is ours.
        """
        board = self.shared.board
        if board.busier():
            pending = select.poll()      # not select(): no FD_SETSIZE limit
            pending.register(cast(socket.socket, self.socket), select.POLLIN)
            deadline = time.monotonic() + BALANCE_WAIT_S
            while board.busier() and time.monotonic() < deadline:
                time.sleep(RECHECK_S)
                if not pending.poll(0):
                    raise BlockingIOError("taken by a sibling")
        request, address = super().get_request()
        board.up()
        return request, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admitted later, in the connection's own thread (`process_request_thread`).

        `PacsAssociationServer.verify_request` asks the policy in the accept loop; a
        worker's policy is a round trip to the supervisor (workers/admission.py, 0.3 to
        1 ms on a busy host), during which this worker accepts nothing and its siblings,
        stepping back for it, wait too: 4 associations requested at once queued behind
        each other's admission (docs/performance.md, "Results: workers (2026-12-02)").
        A refused connection now costs a thread start before it is closed.
        """
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """The thread start of `PacsAssociationServer.process_request` (on `events` the
        association's own, dicom/connection.py), without its slot give-back on failure:
        no slot is taken before the thread runs."""
        try:
            if cast(PacsAE, self.ae).event_reactors:
                start_association_thread(self, request, client_address)
            else:
                socketserver.ThreadingMixIn.process_request(self, request, client_address)
        except BaseException:
            self.shared.board.down()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Admit the connection as unassociated, then serve it; refused: close it."""
        if not self.policy.admit_connection(str(client_address[0])):
            self.shared.board.down()
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def connection_ended(self) -> None:
        self.shared.board.down()
