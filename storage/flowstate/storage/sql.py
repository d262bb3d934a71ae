"""SQLAlchemy Core statements compiled once for asyncpg, and the pool and handle that run them.

The store builds every statement with SQLAlchemy Core on the shared table metadata, compiles
it once (`compile_statement`) to asyncpg's ``$n`` form, and runs it on an `asyncpg.Pool`
connection through `Transaction`. SQLAlchemy's per-execution machinery stays off the hot path;
asyncpg's statement cache prepares each text once per connection. JSON parameters are
serialised with the stdlib (`codec.dumps`) and JSON results decoded with ``json.loads`` (the
codecs `init_connection` installs).
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.sql import ClauseElement, sqltypes
from sqlalchemy.sql.compiler import SQLCompiler

from flowstate.core.model import Tenant
from flowstate.storage.codec import dumps

__all__ = [
    "Compiled",
    "Connection",
    "Transaction",
    "compile_statement",
    "connect_arguments",
    "init_connection",
    "reset_connection",
    "sql_literal",
    "tenant_params",
]

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection of its own or one lent by the pool: both run statements alike."""

_DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves it untyped
_NO_PARAMS: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class Compiled:
    """A statement's SQL text and how to order its parameters."""

    sql: str
    names: tuple[str, ...]
    defaults: tuple[Any, ...]
    """Values bound at build time (literals); None for parameters supplied at execution."""
    json: tuple[bool, ...]
    """Whether each parameter is JSON (serialised before it is sent)."""

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """Positional arguments for `params` (named as in the statement's bind parameters)."""
        values = []
        for name, default, is_json in zip(self.names, self.defaults, self.json, strict=True):
            value = params.get(name, default)
            values.append(dumps(value) if is_json and value is not None else value)
        return values


def compile_statement(statement: ClauseElement) -> Compiled:
    """Compile `statement` for asyncpg (lists go in as arrays: ``= ANY($n)``, never IN)."""
    compiled = statement.compile(dialect=_DIALECT)
    assert isinstance(compiled, SQLCompiler)  # statements, not DDL
    names = tuple(compiled.positiontup or ())
    params = compiled.params
    json_flags = []
    for name in names:
        bind = compiled.binds.get(name)
        json_flags.append(bind is not None and isinstance(bind.type, sqltypes.JSON))
    return Compiled(
        sql=compiled.string,
        names=names,
        defaults=tuple(params.get(name) for name in names),
        json=tuple(json_flags),
    )


def connect_arguments(database_url: str) -> dict[str, Any]:
    """asyncpg connect keyword arguments for a ``postgresql+asyncpg://`` URL.

    As SQLAlchemy's dialect makes them (host, port, user, password, database, unix sockets,
    ssl and other query parameters), without the dialect's own options, which asyncpg does not
    take. The one reading of URLs for the store's pool, the change log's and the listener.
    """
    _, kwargs = _DIALECT.create_connect_args(make_url(database_url))  # type: ignore[no-untyped-call]
    arguments = dict(kwargs)
    arguments.pop("prepared_statement_cache_size", None)
    arguments.pop("async_creator_fn", None)
    return arguments


def _identity(value: str) -> str:
    return value


# The decoder's own scanner (C): typeshed types `make_scanner` as taking itself, not a decoder.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]
)


def _decode_json(text: str) -> Any:
    """`json.loads` of a column's text, without its whitespace handling on the usual path.

    PostgreSQL writes jsonb compactly (no leading or trailing whitespace): the C scanner alone
    reads it. Anything else (a ``json`` column keeps its text as written) goes through
    `json.loads`, which also gives the usual error for text that is not JSON.
    """
    if text == "{}":
        return {}
    if text == "[]":
        return []
    try:
        value, end = _scan_json(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


async def init_connection(connection: Connection) -> None:
    """Per-connection setup: JSON and JSONB as text, decoded with the stdlib."""
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name,
            encoder=_identity,
            decoder=_decode_json,
            schema="pg_catalog",
            format="text",
        )


async def reset_connection(connection: Connection) -> None:
    """Pool reset on release: nothing to undo, the store sets no session state.

    (asyncpg's default reset costs a round trip per release; every store transaction ends in
    COMMIT or ROLLBACK, or its connection is terminated, and settings are transaction-local.)
    """
    if connection.is_in_transaction():  # defensive: never hand out an open transaction
        await connection.execute("ROLLBACK")


def sql_literal(value: str) -> str:
    """`value` as a SQL string literal.

    Only for values already checked by `flowstate.storage.limits` (no NUL), on connections
    that run with ``standard_conforming_strings = on`` (the store sets it), where doubling
    quotes is the complete escaping.
    """
    return "'" + value.replace("'", "''") + "'"


def tenant_params(tenant: Tenant) -> dict[str, Any]:
    """The ``:account`` and ``:engagement`` parameters of a statement scoped to `tenant`."""
    return {"account": tenant.client_account_id, "engagement": tenant.engagement_id}


class Transaction:
    """The statements of one store transaction, run on the asyncpg connection."""

    def __init__(self, connection: Connection) -> None:
        """Wrap a connection whose transaction is already open."""
        self.connection = connection

    async def fetch(
        self, statement: Compiled, params: Mapping[str, Any] = _NO_PARAMS
    ) -> list[asyncpg.Record]:
        """Every row of `statement`."""
        return await self.connection.fetch(statement.sql, *statement.args(params))

    async def fetchrow(
        self, statement: Compiled, params: Mapping[str, Any] = _NO_PARAMS
    ) -> asyncpg.Record | None:
        """The first row of `statement`, or None."""
        return await self.connection.fetchrow(statement.sql, *statement.args(params))

    async def fetchval(self, statement: Compiled, params: Mapping[str, Any] = _NO_PARAMS) -> Any:
        """The first column of the first row of `statement`, or None."""
        return await self.connection.fetchval(statement.sql, *statement.args(params))

    async def execute(self, statement: Compiled, params: Mapping[str, Any] = _NO_PARAMS) -> str:
        """Run `statement`; return its command status (e.g. ``"DELETE 3"``)."""
        return await self.connection.execute(statement.sql, *statement.args(params))
