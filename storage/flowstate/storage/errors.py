"""Database failures as domain errors: nothing SQL-shaped leaves the storage layer.

Exception tree of what the store raises (all `FlowStateError`)::

    FlowStateError (flowstate.core.errors)
    ├── StoreUnavailable         TEMPORARY_RESOURCE_UNAVAILABLE, retry_allowed: the database
    │                            cannot be reached or is restarting, the pool is exhausted, a
    │                            lock or statement timed out, contention outlasted the retries
    ├── DatabaseSetupError       INTERNAL to an RPC, FAILED_PRECONDITION in the CLI: only an
    │   │                        operator can fix it; the message says how
    │   ├── SchemaNotReadyError  the database is not migrated to this build's head
    │   ├── MigrationPrivilegesError  the migrating role lacks a privilege; details["sql"] is
    │   │                        what a DBA must run
    │   └── AppRoleNotGrantedError  the server's role may not switch to the app role
    └── FlowStateError           refusals: FLOW_NOT_FOUND, VERSION_CONFLICT, REQUEST_ID_REUSED,
                                 MALFORMED_REQUEST (limits, bad ids, bad tokens), the core's own
                                 refusals, and INTERNAL for anything unexpected (logged here with
                                 its cause; the message says only "internal storage error")

`classify` decides, for one exception raised while talking to PostgreSQL, whether the
transaction may be retried and which error to raise otherwise; `to_store_error` also logs the
unexpected ones (the only place that does).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode
from flowstate.storage.schema import APP_ROLE

__all__ = [
    "AppRoleNotGrantedError",
    "Classified",
    "DatabaseSetupError",
    "MigrationPrivilegesError",
    "SchemaNotReadyError",
    "StoreUnavailable",
    "classify",
    "constraint_name",
    "postgres_message",
    "sqlstate",
    "to_store_error",
]

_log = logging.getLogger("flowstate.storage")


class StoreUnavailable(FlowStateError):  # noqa: N818 - name fixed by the storage API
    """The database cannot serve the request now; the same request may succeed later.

    ``details["reason"]`` says why: ``unreachable`` (refused, reset, restarting, shut down),
    ``pool_timeout``, ``timeout`` (lock or statement timeout), ``contention`` (serialization
    failures or deadlocks past the retries), ``overloaded`` (too many connections, out of
    resources), ``read_only`` (connected to a standby).
    """

    def __init__(self, message: str = "the flow store is temporarily unavailable", **details: Any):
        """Build the error; keyword arguments are details (e.g. ``reason``)."""
        super().__init__(
            ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE, message, retry_allowed=True, **details
        )


class DatabaseSetupError(FlowStateError):
    """The database is not ready for this build and only an operator can change that.

    Raised at startup and by migrations, never for one request. Its code stays INTERNAL (no
    request could succeed), and the CLI prints it as FAILED_PRECONDITION with the message,
    which names the fix.
    """


class SchemaNotReadyError(DatabaseSetupError):
    """The database schema is not at the revision this build needs (run ``flowstate migrate``)."""

    def __init__(self, current: str | None, required: str) -> None:
        """Build the error from the database's revision and the required head."""
        where = "has never been migrated" if current is None else f"is at revision {current}"
        super().__init__(
            ErrorCode.INTERNAL,
            f"the database {where}; this build needs {required}: run `flowstate migrate upgrade`",
            retry_allowed=False,
            current_revision=current,
            required_revision=required,
        )


class MigrationPrivilegesError(DatabaseSetupError):
    """The migrating role may not do what a migration needs; ``details["sql"]`` fixes it.

    The SQL is for a DBA (a superuser or a role with CREATEROLE) to run once; the migration
    can then be run again by the database owner.
    """

    def __init__(self, problem: str, *, sql: str, user: str) -> None:
        """Build the error from what is missing, the SQL that grants it and the migrating user."""
        super().__init__(
            ErrorCode.INTERNAL,
            f"{problem}. Ask a DBA to run, then run `flowstate migrate upgrade` again:\n\n"
            f"    {sql}\n",
            retry_allowed=False,
            sql=sql,
            user=user,
        )


class AppRoleNotGrantedError(DatabaseSetupError):
    """The role the server connects as is not a member of the app role (``details["sql"]``).

    Every store transaction switches to ``flowstate_app``; without the membership each would
    fail, so `FlowStore.open` refuses to start instead.
    """

    def __init__(self, user: str) -> None:
        """Build the error from the connected role's (quoted) name."""
        sql = f"GRANT {APP_ROLE} TO {user};"
        super().__init__(
            ErrorCode.INTERNAL,
            f"the role {user} is not a member of the role {APP_ROLE}, which every "
            f"transaction switches to. Ask a DBA to run, then start again:\n\n    {sql}\n",
            retry_allowed=False,
            sql=sql,
            user=user,
        )


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return chain


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE carried by `exc` or one of its causes, if any."""
    for cause in _causes(exc):
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
    return None


def postgres_message(exc: BaseException) -> str | None:
    """PostgreSQL's own message for `exc` or one of its causes (for operators, not callers)."""
    for cause in _causes(exc):
        if isinstance(cause, asyncpg.PostgresError):
            return str(cause)
    return None


def constraint_name(exc: BaseException) -> str | None:
    """The violated constraint named by `exc` or one of its causes, if any."""
    for cause in _causes(exc):
        name = getattr(cause, "constraint_name", None)
        if isinstance(name, str) and name:
            return name
    return None


_UNAVAILABLE_STATES = {
    "57P01": "unreachable",  # admin_shutdown
    "57P02": "unreachable",  # crash_shutdown
    "57P03": "unreachable",  # cannot_connect_now (starting up, shutting down, recovering)
    "57P04": "unreachable",  # database_dropped
    "57P05": "unreachable",  # idle_session_timeout
    "57014": "timeout",  # query_canceled (statement_timeout)
    "55P03": "timeout",  # lock_not_available (lock_timeout)
    "25006": "read_only",  # read_only_sql_transaction (a standby after failover)
    "40001": "contention",  # serialization_failure
    "40P01": "contention",  # deadlock_detected
}
_UNAVAILABLE_CLASSES = {"08": "unreachable", "53": "overloaded"}
_MALFORMED_STATES = frozenset({"22P05", "22021", "54000", "22001"})
_RETRYABLE_CONTENTION = frozenset({"40001", "40P01"})


@dataclass(frozen=True, slots=True)
class Classified:
    """How to handle one exception: retry the transaction (`retry`) or raise `error`."""

    error: FlowStateError
    retry: bool = False
    disconnect: bool = False
    """The connection broke: a retry is only safe when the commit was not sent yet."""


def _unavailable(reason: str) -> StoreUnavailable:
    return StoreUnavailable(reason=reason)


def classify(exc: BaseException) -> Classified:
    """Map an exception raised by SQLAlchemy/asyncpg (or the network) to a domain error."""
    state = sqlstate(exc)
    if state in _RETRYABLE_CONTENTION:
        return Classified(_unavailable("contention"), retry=True)
    if state is not None:
        reason = _UNAVAILABLE_STATES.get(state) or _UNAVAILABLE_CLASSES.get(state[:2])
        if reason is not None:
            disconnect = reason == "unreachable"
            return Classified(_unavailable(reason), retry=disconnect, disconnect=disconnect)
        if state in _MALFORMED_STATES:
            return Classified(
                FlowStateError(
                    ErrorCode.MALFORMED_REQUEST,
                    "a value of the request cannot be stored",
                    field="request",
                )
            )
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no connection to give in time
        return Classified(_unavailable("pool_timeout"))
    invalidated = isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    network = isinstance(
        exc,
        OSError
        | asyncio.TimeoutError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InterfaceError
        # The server ended an idle connection and asyncpg has not processed it yet: the next
        # statement finds the protocol mid-way ("cannot switch to state ...").
        | asyncpg.exceptions.InternalClientError,
    )
    if invalidated or network or (state is not None and state.startswith("08")):
        return Classified(_unavailable("unreachable"), retry=True, disconnect=True)
    if isinstance(exc, sa_exc.InterfaceError | sa_exc.OperationalError) and state is None:
        return Classified(_unavailable("unreachable"), retry=True, disconnect=True)
    return Classified(
        FlowStateError(ErrorCode.INTERNAL, "internal storage error", retry_allowed=False)
    )


def to_store_error(exc: BaseException) -> FlowStateError:
    """The domain error for `exc` (see `classify`); an INTERNAL one is logged with its cause."""
    error = classify(exc).error
    if error.code is ErrorCode.INTERNAL:
        _log.error("internal storage error (sqlstate %s)", sqlstate(exc), exc_info=exc)
    return error
