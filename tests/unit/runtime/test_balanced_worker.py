"""The balanced accept's rule, on the shared board: a worker takes a new connection only while it holds no
more than the least busy of its siblings, so the least busy one always can."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from app.runtime.balanced_worker import BalancedThreadWorker, ConnectionBoard


def worker(board: ConnectionBoard, slot: int, configured: int = 1000) -> Any:
    """The accept bound as gthread reads it, on a worker object without a running event loop."""
    instance = object.__new__(BalancedThreadWorker)
    instance.app = SimpleNamespace(board=board)
    instance.slot = slot
    instance.worker_connections = configured
    return instance


def test_slots_are_handed_out_and_freed_by_the_master() -> None:
    board = ConnectionBoard(3)
    assert [board.claim(), board.claim(), board.claim()] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="no free connection-board slot"):
        board.claim()
    board.release(1)
    assert board.claim() == 1


def test_a_worker_takes_connections_only_up_to_its_fair_share() -> None:
    board = ConnectionBoard(4)
    a, b = worker(board, board.claim()), worker(board, board.claim())
    held = {a.slot: 0, b.slot: 0}
    # A burst of 32 connections while b never gets to run (a starved worker): a stops at one ahead.
    while held[a.slot] < a.worker_connections:
        held[a.slot] += 1
        board.publish(a.slot, held[a.slot])
    assert held[a.slot] == 1
    # b takes its turn whenever it runs; they alternate, never more than one apart.
    for _ in range(31):
        accepting = min(
            (w for w in (a, b) if held[w.slot] < w.worker_connections), key=lambda w: held[w.slot]
        )
        held[accepting.slot] += 1
        board.publish(accepting.slot, held[accepting.slot])
        assert abs(held[a.slot] - held[b.slot]) <= 1
    assert held[a.slot] + held[b.slot] == 32


def test_alone_or_with_gone_siblings_a_worker_is_bounded_by_its_configuration_only() -> None:
    board = ConnectionBoard(3)
    alone = worker(board, board.claim(), configured=50)
    assert alone.worker_connections == 50
    sibling = board.claim()
    board.publish(sibling, 7)
    assert alone.worker_connections == 8
    board.release(sibling)  # it exited: child_exit frees the slot
    assert alone.worker_connections == 50
