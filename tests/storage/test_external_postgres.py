"""The external PostgreSQL 15 harness itself: non-root, TCP with passwords, crash and restart."""

from __future__ import annotations

import os
import pwd

import pytest

from flowstate.testing_postgres import RUN_AS_USER, ExternalPostgres


def test_the_cluster_runs_as_a_non_root_user_on_loopback(pg15: ExternalPostgres) -> None:
    assert pg15.pid is not None
    owner = os.stat(pg15.data_dir).st_uid
    assert owner != 0
    if os.geteuid() == 0:
        assert pwd.getpwuid(owner).pw_name == RUN_AS_USER
    assert pg15.psql("SHOW listen_addresses") == "127.0.0.1"
    assert pg15.psql("SHOW server_version_num").startswith("15")


def test_password_authentication_over_tcp(pg15: ExternalPostgres) -> None:
    pg15.psql("CREATE ROLE harness_login LOGIN PASSWORD 'right'")
    try:
        assert pg15.psql("SELECT current_user", user="harness_login", password="right") == (
            "harness_login"
        )
        with pytest.raises(RuntimeError, match="password authentication failed"):
            pg15.psql("SELECT 1", user="harness_login", password="wrong")
    finally:
        pg15.psql("DROP ROLE harness_login")


def test_a_killed_cluster_recovers_on_the_same_port_with_its_data(pg15: ExternalPostgres) -> None:
    pg15.psql("CREATE TABLE harness_kept (n int); INSERT INTO harness_kept VALUES (7)")
    port, before = pg15.port, pg15.pid

    pg15.kill()
    assert not pg15.running
    with pytest.raises(RuntimeError, match="psql failed"):
        pg15.psql("SELECT 1")
    pg15.start()

    assert pg15.port == port
    assert pg15.pid not in (None, before)
    assert pg15.psql("SELECT n FROM harness_kept") == "7"
    pg15.psql("DROP TABLE harness_kept")
