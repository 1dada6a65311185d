"""workers/channel.py's blocking client over a real Unix socket: calls from several
threads are pipelined on its one connection and each gets its own reply; a peer that
goes away fails the waiting calls and the next call connects again."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs_server.workers.channel import Channel, ChannelError


class BatchPeer:
    """Answers nothing until `batch` request lines arrived on a connection, then each
    in order with {"n": its n}; after `hang_up` requests it closes instead."""

    def __init__(self, path: Path, batch: int, hang_up: int | None = None) -> None:
        self.batch, self.hang_up = batch, hang_up
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            got = []
            while len(got) < self.batch:
                line = lines.readline()
                if not line:
                    return
                got.append(json.loads(line))
            if self.hang_up is not None and self.connections <= 1:
                return
            for request in got:
                conn.sendall(json.dumps({"n": request["n"]}).encode() + b"\n")
            while line := lines.readline():       # later ones: one at a time
                conn.sendall(json.dumps({"n": json.loads(line)["n"]}).encode() + b"\n")

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "peer.sock"


def calls_at_once(channel: Channel, count: int) -> list[object]:
    results: list[object] = [None] * count
    barrier = threading.Barrier(count)

    def one(n: int) -> None:
        barrier.wait()
        try:
            results[n] = channel.call({"n": n})["n"]
        except ChannelError as exc:
            results[n] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_calls_from_four_threads_are_in_flight_together_each_with_its_reply(
        sock_path: Path) -> None:
    peer = BatchPeer(sock_path, batch=4)
    channel = Channel(sock_path, timeout=3)
    try:
        # The peer answers only once all four are sent: one call at a time would wait.
        assert calls_at_once(channel, 4) == [0, 1, 2, 3]
        assert channel.call({"n": 9}) == {"n": 9}       # a lone call reads its own
        channel.tell({"n": 10})
        assert peer.connections == 1
    finally:
        channel.close()
        peer.close()


def test_a_peer_that_hangs_up_fails_the_waiting_calls_and_the_next_one_reconnects(
        sock_path: Path) -> None:
    peer = BatchPeer(sock_path, batch=3, hang_up=3)
    channel = Channel(sock_path, timeout=3)
    try:
        results = calls_at_once(channel, 3)
        assert all(isinstance(r, ChannelError) for r in results), results
        peer.batch = 1
        assert channel.call({"n": 5}) == {"n": 5}
        assert peer.connections == 2
    finally:
        channel.close()
        peer.close()
