"""dicom/accept.py's LoadBoard: what a worker's accept loop reads before it accepts."""

from __future__ import annotations

from pathlib import Path

from pacs_server.dicom.accept import ABSENT, LoadBoard


def test_a_worker_is_busier_only_than_a_sibling_that_accepts(tmp_path: Path) -> None:
    path = tmp_path / "load"
    supervisor = LoadBoard.create(path, 2)
    one, two = LoadBoard(path, 2, own=1), LoadBoard(path, 2, own=2)
    assert [supervisor.get(i) for i in (1, 2)] == [ABSENT, ABSENT]
    one.up()                      # accepted before its listener reported: not shown
    one.present()
    assert supervisor.get(1) == 1 and not one.busier()   # worker 2 does not accept yet
    two.present()
    assert one.busier() and not two.busier()
    two.up()
    assert not one.busier() and not two.busier()
    two.up()
    assert two.busier()
    supervisor.absent(1)          # worker 1 died: nobody waits for it
    assert not two.busier()
    two.down()
    two.down()
    two.down()                    # never below zero
    assert supervisor.get(2) == 0
    two.leave()
    two.up()                      # a draining worker's slot stays ABSENT
    assert supervisor.get(2) == ABSENT
    for board in (one, two, supervisor):
        board.close()
