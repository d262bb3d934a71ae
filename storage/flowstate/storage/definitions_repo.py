"""The definitions registry: per-tenant, versioned, immutable definition bodies, and their cache.

`DefinitionStore` (the store's `FlowStore.definitions`) runs the registry's SQL in the store's
transaction runner, as the app role in the caller's tenant, so row-level security applies: a
tenant reads its own rows and the built-ins, and inserts only its own. `load` and
`latest_version` take an open `Transaction` (a decision resolves its definition in its own).

**Resolution.** A tenant's view of a name is its own versions plus the built-in's (owner
`BUILTIN_OWNER`). A tenant may register a built-in's name only when it says so
(`allow_shadow_builtin`); its versions then continue after the built-in's latest, so a
(name, version) pair is unique within the tenant's view and a flow of the built-in keeps
resolving to the built-in. Should a later release add a built-in version whose number a
tenant's shadow already uses, the tenant's own row wins for that tenant (its flows keep their
definition); docs/definitions.md says so.

**Registration** (`DefinitionStore.register`): the body (everything but the version) identical
to the latest version visible for the name returns that version; any other body becomes version
n+1.
Concurrent registrations of one (tenant, name) serialize on a transaction-scoped advisory
lock. With a request id, the outcome is also kept as an idempotency key (operation
``create_flow_definition``), so the same request sent again returns the version it got
even after newer versions exist, and the same id with another body is REQUEST_ID_REUSED.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import Integer, Text, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

from flowstate.core.definition_document import definition_body
from flowstate.core.definitions import (
    BUILTIN_DEFINITIONS,
    FlowDefinition,
    definition_from_dict,
    definition_to_dict,
)
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.storage.limits import (
    DEFAULT_DEFINITION_PAGE_SIZE,
    MAX_DEFINITION_PAGE_SIZE,
    MAX_REQUEST_ID_LENGTH,
    check_identifier,
    check_name,
    check_page_size,
    check_tenant,
    check_version,
    malformed,
)
from flowstate.storage.runner import TransactionRunner
from flowstate.storage.schema import BUILTIN_OWNER
from flowstate.storage.sql import Transaction, compile_statement, tenant_params
from flowstate.storage.statements import EXACT_DEFINITION, SEED_DEFINITION
from flowstate.storage.tokens import decode_token, encode_token, query_hash

__all__ = [
    "DefinitionPage",
    "DefinitionStore",
    "StoredDefinition",
    "latest_version",
    "load",
]

_log = logging.getLogger("flowstate.storage")

NIL_FLOW_ID = "00000000-0000-0000-0000-000000000000"
"""`idempotency_keys.flow_id` of a key that belongs to no flow (a definition registration)."""
OPERATION = "create_flow_definition"
"""`idempotency_keys.operation` of a registration."""


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    """A definition as the registry holds it: the body, whose it is, when it was registered."""

    definition: FlowDefinition
    builtin: bool
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class DefinitionPage:
    """One page of definitions; `next_page_token` is empty on the last page."""

    definitions: tuple[StoredDefinition, ...]
    next_page_token: str


_VISIBLE = """
    ((client_account_id = :account AND engagement_id = :engagement)
     OR (client_account_id = '' AND engagement_id = ''))
"""
_COLUMNS = "name, version, body, created_at, client_account_id = '' AS builtin"
_TENANT_PARAMS = (bindparam("account", type_=Text), bindparam("engagement", type_=Text))

# The tenant's own row first: it wins over a built-in of the same (name, version).
_LOAD_EXACT = compile_statement(
    text(
        f"SELECT {_COLUMNS} FROM flow_definitions WHERE {_VISIBLE} AND name = :name "
        "AND version = :version ORDER BY client_account_id = '' LIMIT 1"
    ).bindparams(
        *_TENANT_PARAMS, bindparam("name", type_=Text), bindparam("version", type_=Integer)
    )
)
_LOAD_LATEST = compile_statement(
    text(
        f"SELECT {_COLUMNS} FROM flow_definitions WHERE {_VISIBLE} AND name = :name "
        "ORDER BY version DESC, client_account_id = '' LIMIT 1"
    ).bindparams(*_TENANT_PARAMS, bindparam("name", type_=Text))
)
# Only the number of the latest version: its body is usually in the store's cache already.
_LATEST_VERSION = compile_statement(
    text(
        f"SELECT version FROM flow_definitions WHERE {_VISIBLE} AND name = :name "
        "ORDER BY version DESC LIMIT 1"
    ).bindparams(*_TENANT_PARAMS, bindparam("name", type_=Text))
)
_HAS_BUILTIN = compile_statement(
    text(
        "SELECT EXISTS (SELECT 1 FROM flow_definitions WHERE client_account_id = '' "
        "AND engagement_id = '' AND name = :name)"
    ).bindparams(bindparam("name", type_=Text))
)
_LOCK_NAME = compile_statement(
    text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))").bindparams(
        bindparam("key", type_=Text)
    )
)
_INSERT = compile_statement(
    text(
        "INSERT INTO flow_definitions (client_account_id, engagement_id, name, version, body) "
        "VALUES (:account, :engagement, :name, :version, :body) RETURNING created_at"
    ).bindparams(
        *_TENANT_PARAMS,
        bindparam("name", type_=Text),
        bindparam("version", type_=Integer),
        bindparam("body", type_=JSONB),
    )
)
# Latest version of every visible name, in name order, after a name (keyset pagination).
_LIST_LATEST = compile_statement(
    text(
        f"SELECT DISTINCT ON (name) {_COLUMNS} FROM flow_definitions WHERE {_VISIBLE} "
        "AND name > :after ORDER BY name, version DESC, client_account_id = '' LIMIT :limit"
    ).bindparams(*_TENANT_PARAMS, bindparam("after", type_=Text), bindparam("limit", type_=Integer))
)
# Every visible version of one name, newest first, below a version.
_LIST_VERSIONS = compile_statement(
    text(
        f"SELECT DISTINCT ON (version) {_COLUMNS} FROM flow_definitions WHERE {_VISIBLE} "
        "AND name = :name AND version < :below "
        "ORDER BY version DESC, client_account_id = '' LIMIT :limit"
    ).bindparams(
        *_TENANT_PARAMS,
        bindparam("name", type_=Text),
        bindparam("below", type_=Integer),
        bindparam("limit", type_=Integer),
    )
)
_SELECT_KEY = compile_statement(
    text(
        "SELECT operation, fingerprint, response, expires_at FROM idempotency_keys "
        "WHERE client_account_id = :account AND engagement_id = :engagement "
        "AND request_id = :request_id"
    ).bindparams(*_TENANT_PARAMS, bindparam("request_id", type_=Text))
)
_DELETE_KEY = compile_statement(
    text(
        "DELETE FROM idempotency_keys WHERE client_account_id = :account "
        "AND engagement_id = :engagement AND request_id = :request_id"
    ).bindparams(*_TENANT_PARAMS, bindparam("request_id", type_=Text))
)
_INSERT_KEY = compile_statement(
    text(
        "INSERT INTO idempotency_keys (client_account_id, engagement_id, request_id, operation, "
        "fingerprint, flow_id, response, created_at, expires_at) VALUES (:account, :engagement, "
        f":request_id, '{OPERATION}', :fingerprint, '{NIL_FLOW_ID}', :response, :now, :expires)"
    ).bindparams(
        *_TENANT_PARAMS,
        bindparam("request_id", type_=Text),
        bindparam("fingerprint", type_=Text),
        bindparam("response", type_=JSONB),
        bindparam("now", type_=TIMESTAMP(timezone=True)),
        bindparam("expires", type_=TIMESTAMP(timezone=True)),
    )
)


def _stored(row: asyncpg.Record) -> StoredDefinition:
    body = row["body"]
    if isinstance(body, str):
        body = json.loads(body)
    return StoredDefinition(
        definition=definition_from_dict(body),
        builtin=bool(row["builtin"]),
        created_at=row["created_at"],
    )


def _not_found(name: str, version: int | None) -> FlowStateError:
    which = "" if version is None else f" version {version}"
    return FlowStateError(
        ErrorCode.DEFINITION_NOT_FOUND,
        f"No flow definition {name!r}{which}",
        definition_name=name,
        definition_version=version,
    )


async def load(
    tx: Transaction, tenant: Tenant | None, name: str, version: int | None
) -> StoredDefinition:
    """The definition `name` at `version` (None: the latest) in `tenant`'s view.

    `tenant` None sees the built-ins only. DEFINITION_NOT_FOUND when there is none (also when
    only another tenant has it).
    """
    params = {
        **(
            tenant_params(tenant)
            if tenant
            else {"account": BUILTIN_OWNER, "engagement": BUILTIN_OWNER}
        ),
        "name": name,
    }
    if version is None:
        row = await tx.fetchrow(_LOAD_LATEST, params)
    else:
        row = await tx.fetchrow(_LOAD_EXACT, {**params, "version": version})
    if row is None:
        raise _not_found(name, version)
    return _stored(row)


async def latest_version(tx: Transaction, tenant: Tenant, name: str) -> int:
    """The number of the latest version of `name` in `tenant`'s view (no body is read).

    DEFINITION_NOT_FOUND when the tenant sees no version of it.
    """
    version = await tx.fetchval(_LATEST_VERSION, {**tenant_params(tenant), "name": name})
    if version is None:
        raise _not_found(name, None)
    return int(version)


def fingerprint(body: Mapping[str, Any], allow_shadow_builtin: bool) -> str:
    """What a registration's idempotency key compares: the body and the shadowing flag."""
    raw = json.dumps(
        {"body": body, "shadow": allow_shadow_builtin}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(raw.encode()).hexdigest()


async def _replay(
    tx: Transaction, tenant: Tenant, request_id: str, print_: str, now: datetime
) -> StoredDefinition | None:
    params = {**tenant_params(tenant), "request_id": request_id}
    row = await tx.fetchrow(_SELECT_KEY, params)
    if row is None:
        return None
    if row["expires_at"] <= now:
        await tx.execute(_DELETE_KEY, params)
        return None
    if (row["operation"], row["fingerprint"]) != (OPERATION, print_):
        raise FlowStateError(
            ErrorCode.REQUEST_ID_REUSED,
            f"Request id {request_id!r} was already used for a different request",
            request_id=request_id,
        )
    response = row["response"]
    if isinstance(response, str):
        response = json.loads(response)
    return await load(tx, tenant, response["name"], int(response["version"]))


class DefinitionStore:
    """The registry on the store's runner, with the process's definition cache.

    One per `FlowStore` (`FlowStore.definitions`); every call but `resolve` is a transaction
    of its own. Bodies of a (tenant, name, version) never change, so the cache is never
    invalidated, only bounded (`CACHE_SIZE`, oldest first out).
    """

    CACHE_SIZE = 4096
    """Definitions kept in process."""

    def __init__(self, runner: TransactionRunner, *, key_ttl: timedelta) -> None:
        """Run on `runner`'s pool; registration keys live `key_ttl`."""
        self._run = runner._run
        self._key_ttl = key_ttl
        # (tenant or None for built-ins only, name, version) -> definition.
        self._cache: dict[tuple[Tenant | None, str, int], FlowDefinition] = {}

    async def get(
        self, name: str, version: int | None = None, *, tenant: Tenant | None = None
    ) -> FlowDefinition:
        """The definition `name` at `version` (None: its latest version) in `tenant`'s view
        (its own definitions and the built-ins; None: the built-ins only).

        DEFINITION_NOT_FOUND when there is no such definition (also another tenant's).
        """
        if version is not None:
            cached = self._cache.get((tenant, name, version))
            if cached is not None:
                return cached
        return (await self.get_stored(name, version, tenant=tenant)).definition

    async def get_stored(
        self, name: str, version: int | None = None, *, tenant: Tenant | None = None
    ) -> StoredDefinition:
        """`get` with whose the definition is and when it was registered."""
        check_name("definition_name", name)
        if tenant is not None:
            check_tenant(tenant)
        if version is not None:
            check_version("definition_version", version, minimum=1)
        stored = await self._run(tenant, lambda tx: load(tx, tenant, name, version))
        self._remember(tenant, stored.definition)
        return stored

    async def resolve(
        self, tx: Transaction, tenant: Tenant, name: str, version: int | None
    ) -> FlowDefinition:
        """`get` inside the open transaction `tx` (a decision's `FlowTransaction.definition`)."""
        if version is None:
            # "The latest" can change at any time (a registration, maybe by another process):
            # ask for its number, and take the (immutable) body from the cache when it is there.
            version = await latest_version(tx, tenant, name)
        cached = self._cache.get((tenant, name, version))
        if cached is not None:
            return cached
        definition = (await load(tx, tenant, name, version)).definition
        self._remember(tenant, definition)
        return definition

    def _remember(self, tenant: Tenant | None, definition: FlowDefinition) -> None:
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))  # oldest first: FIFO
        self._cache[(tenant, definition.name, definition.version)] = definition

    async def register(
        self,
        tenant: Tenant,
        submitted: FlowDefinition,
        *,
        request_id: str,
        now: datetime,
        allow_shadow_builtin: bool = False,
        validate_only: bool = False,
    ) -> tuple[StoredDefinition, bool]:
        """Register `submitted` (validated; its version is ignored) for `tenant`:
        (the stored version, created).

        An identical body returns the existing version; idempotent on `request_id` (see the
        module doc for versions, shadowing and idempotency). DEFINITION_SHADOWS_BUILTIN for a
        built-in's name without `allow_shadow_builtin`. With `validate_only`, nothing is
        written.
        """
        check_tenant(tenant)
        check_identifier("request_id", request_id, required=False, max_length=MAX_REQUEST_ID_LENGTH)
        params = tenant_params(tenant)
        body = definition_body(submitted)
        name = submitted.name
        print_ = fingerprint(body, allow_shadow_builtin)
        lock_key = json.dumps([tenant.client_account_id, tenant.engagement_id, name])

        async def work(tx: Transaction) -> tuple[StoredDefinition, bool]:
            if request_id:
                replay = await _replay(tx, tenant, request_id, print_, now)
                if replay is not None:
                    return replay, False
            await tx.fetchval(_LOCK_NAME, {"key": lock_key})
            builtin = name in BUILTIN_DEFINITIONS or await tx.fetchval(_HAS_BUILTIN, {"name": name})
            if builtin and not allow_shadow_builtin:
                raise FlowStateError(
                    ErrorCode.DEFINITION_SHADOWS_BUILTIN,
                    f"{name!r} is a built-in definition; registering it for your tenant shadows "
                    "the built-in (set allow_shadow_builtin to do so)",
                    definition_name=name,
                    field="definition.name",
                )
            latest_row = await tx.fetchrow(_LOAD_LATEST, {**params, "name": name})
            latest = None if latest_row is None else _stored(latest_row)
            if latest is not None and definition_body(latest.definition) == body:
                result, created = latest, False
            else:
                version = 1 if latest is None else latest.definition.version + 1
                definition = FlowDefinition(
                    name=name,
                    version=version,
                    phases=submitted.phases,
                    display_name=submitted.display_name,
                    description=submitted.description,
                )
                if validate_only:
                    return StoredDefinition(definition, builtin=False, created_at=None), False
                created_at = await tx.fetchval(
                    _INSERT,
                    {
                        **params,
                        "name": name,
                        "version": version,
                        "body": {**body, "version": version},
                    },
                )
                result, created = StoredDefinition(definition, False, created_at), True
            if request_id and not validate_only:
                await tx.execute(
                    _INSERT_KEY,
                    {
                        **params,
                        "request_id": request_id,
                        "fingerprint": print_,
                        "response": {"name": name, "version": result.definition.version},
                        "now": now,
                        "expires": now + self._key_ttl,
                    },
                )
            return result, created

        return await self._run(tenant, work, write=not validate_only)

    async def list_page(
        self, tenant: Tenant, *, name: str = "", page_size: int = 0, page_token: str = ""
    ) -> DefinitionPage:
        """The definitions `tenant` can use: the latest version of each name (its own and the
        built-ins) by name, or with `name` every version of it, newest first. AIP-158 pages."""
        check_tenant(tenant)
        if name:
            check_name("name", name)
        size = check_page_size(page_size, DEFAULT_DEFINITION_PAGE_SIZE, MAX_DEFINITION_PAGE_SIZE)
        query_id = query_hash({"definitions": name})
        after: str | int | None = None
        if page_token:
            position = decode_token(page_token, "definitions", query_id)
            valid = len(position) == 1 and isinstance(position[0], int if name else str)
            if not valid or isinstance(position[0], bool):
                raise malformed("page_token", "page_token is not a valid token")
            after = position[0]
        params = {**tenant_params(tenant), "limit": size + 1}
        if name:
            below = after if isinstance(after, int) else 2**31 - 1
            statement, params = _LIST_VERSIONS, {**params, "name": name, "below": below}
        else:
            after_name = after if isinstance(after, str) else ""
            statement, params = _LIST_LATEST, {**params, "after": after_name}

        async def work(tx: Transaction) -> list[StoredDefinition]:
            return [_stored(row) for row in await tx.fetch(statement, params)]

        found = await self._run(tenant, work)
        token = ""
        if len(found) > size:
            found = found[:size]
            last = found[-1].definition
            token = encode_token("definitions", query_id, [last.version if name else last.name])
        return DefinitionPage(tuple(found), token)

    async def seed(self) -> None:
        """Insert missing built-in definitions; warn when a stored body differs from the code."""

        async def work(tx: Transaction) -> list[tuple[FlowDefinition, Any]]:
            seen = []
            for definition in BUILTIN_DEFINITIONS.values():
                key = {"name": definition.name, "version": definition.version}
                await tx.execute(SEED_DEFINITION, {**key, "body": definition_to_dict(definition)})
                seen.append((definition, await tx.fetchval(EXACT_DEFINITION, key)))
            return seen

        for definition, stored in await self._run(None, work):
            if stored != definition_to_dict(definition):
                _log.warning(
                    "stored definition %s v%d differs from the built-in one; the stored one is "
                    "used (a changed definition needs a new version)",
                    definition.name,
                    definition.version,
                )
