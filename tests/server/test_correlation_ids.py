"""Correlation ids made for calls that sent none: unique, sane, different in a forked child."""

from __future__ import annotations

import os
import sys

import pytest

from flowstate.server.rpc import _sane_correlation_id, new_correlation_id


def test_ids_are_unique_and_pass_the_servers_own_sanity_check() -> None:
    ids = [new_correlation_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(_sane_correlation_id(i) for i in ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)  # the shape of uuid4().hex
    assert len({i[:16] for i in ids}) == 1  # one process prefix


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="POSIX fork")
def test_a_forked_child_draws_another_prefix() -> None:
    parent = new_correlation_id()[:16]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_correlation_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child[:16] != parent
