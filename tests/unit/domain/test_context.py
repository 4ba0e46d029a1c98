from __future__ import annotations

import os

from app.domain.context import REQUEST_ID_RE, accept_request_id


def test_a_well_formed_caller_id_is_kept_and_anything_else_replaced() -> None:
    assert accept_request_id("abc-123.x:y_z") == "abc-123.x:y_z"
    for bad in (None, "", "a b", "x\n", "é", "a" * 129):
        generated = accept_request_id(bad)
        assert generated != bad and REQUEST_ID_RE.fullmatch(generated) and len(generated) == 32


def test_generated_ids_differ_in_every_forked_worker() -> None:
    """Workers fork from one master: each must not replay the master's random sequence."""
    read, write = os.pipe()
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.write(write, (accept_request_id(None) + "\n").encode())
            os._exit(0)
        children.append(pid)
    os.close(write)
    for pid in children:
        os.waitpid(pid, 0)
    with os.fdopen(read) as lines:
        ids = lines.read().split()
    ids.append(accept_request_id(None))
    assert len(ids) == 4 and len(set(ids)) == 4
