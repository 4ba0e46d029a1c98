"""gunicorn's gthread worker, balanced: a new HTTP connection goes to the worker that holds the fewest.

All workers accept from the master's one listening socket. With plain gthread, whichever worker wakes
first takes a whole burst of new connections, and keep-alive clients (a proxy, a load generator, a pooled
client) then stay on it: measured here, 32 keep-alive connections split 23/9, 9/23 and 32/0 between two
workers, and with 32/0 one worker saturated while the other idled. Per-worker SO_REUSEPORT sockets would
spread connections by a hash of their addresses, which for a few dozen connections is still uneven.

So each worker publishes how many connections it holds on a `ConnectionBoard` (shared memory the master
creates before forking; it owns no thread or socket) and accepts a new connection only while it holds no
more than the least busy of its siblings: connections stay balanced within one, whatever the client does.
A gated worker re-checks every 20 ms, and the least busy worker is never gated, so a connection waits in
the accept queue only while another worker is about to take it.
"""

from __future__ import annotations

import mmap
from typing import Any

from app.runtime.head_first import HeadFirstThreadWorker

FREE = -1
GATED_POLL_S = 0.02
_SLOT_BYTES = 8


class ConnectionBoard:
    """Connections held per worker slot, in an anonymous shared mapping inherited by every worker.

    The master (single-threaded) hands out and frees slots; each worker writes only its own slot, and an
    aligned 8-byte store is atomic, so no lock is needed.
    """

    def __init__(self, slots: int) -> None:
        self._map = mmap.mmap(-1, slots * _SLOT_BYTES)
        self._counts = memoryview(self._map).cast("q")
        for i in range(slots):
            self._counts[i] = FREE

    def claim(self) -> int:
        """A free slot for a worker about to be forked (in the master)."""
        for i, count in enumerate(self._counts):
            if count == FREE:
                self._counts[i] = 0
                return i
        raise RuntimeError("no free connection-board slot: more workers than the board was sized for")

    def release(self, slot: int) -> None:
        """The worker of `slot` exited (in the master)."""
        self._counts[slot] = FREE

    def publish(self, slot: int, connections: int) -> None:
        self._counts[slot] = connections

    def least_of_others(self, slot: int) -> int | None:
        """The fewest connections any other live worker holds; None when there is no other worker."""
        others = [count for i, count in enumerate(self._counts) if i != slot and count != FREE]
        return min(others) if others else None


class BalancedThreadWorker(HeadFirstThreadWorker):
    """gthread with an accept gate; needs `worker.app.board` and `worker.slot` (app.gunicorn_server).

    Heads are read by the event loop and errors answered as problem+json (app.runtime.head_first).
    """

    slot: int
    _configured_connections = 1000

    @property
    def worker_connections(self) -> int:
        """gthread's own bound (checked once per event-loop turn), lowered to the fair share."""
        board: ConnectionBoard = self.app.board
        least = board.least_of_others(self.slot)
        if least is None:
            return self._configured_connections
        return min(self._configured_connections, least + 1)

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._configured_connections = value

    def wait_for_and_dispatch_events(self, timeout: float) -> Any:
        if not self.nr_conns < self.worker_connections:
            timeout = min(timeout, GATED_POLL_S)  # gated: look again soon
        result = super().wait_for_and_dispatch_events(timeout)
        self.app.board.publish(self.slot, self.nr_conns)
        return result
