"""Flowstate storage: PostgreSQL persistence of flows, history, idempotency keys, definitions.

The use cases (`flowstate.service`) code against `FlowStore` (one per process) and the values it
returns; rows never leave this package and every failure is a core `FlowStateError`
(`StoreUnavailable` when the database cannot serve now). Modules:

- `store`: `FlowStore` (the SQL and the transaction runner a use case hands its decision to)
  and its result/query values; `statements`: the compiled SQL;
- `schema`: the tables (SQLAlchemy Core metadata, shared with the migrations);
- `migrate`: Alembic configured in code (`upgrade`, `downgrade`, `current_revision`);
- `embedded`: the embedded PostgreSQL and `resolve_database_url`;
- `limits`: input limits checked before any SQL; `errors`: the error mapping.

See docs/storage.md for the schema, transaction shape, idempotency, tenancy and cursors.
"""

from flowstate.storage.embedded import (
    EmbeddedPostgres,
    ResolvedDatabase,
    resolve_database_url,
)
from flowstate.storage.errors import SchemaNotReadyError, StoreUnavailable
from flowstate.storage.store import (
    DEFAULT_IDEMPOTENCY_TTL,
    NOTIFY_CHANNEL,
    ChangeBatch,
    FlowPage,
    FlowQuery,
    FlowStore,
    FlowTransaction,
    HistoryPage,
    IdempotencyKey,
    MutationResult,
    StoredKey,
    TenantChange,
    Write,
)

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL",
    "NOTIFY_CHANNEL",
    "ChangeBatch",
    "EmbeddedPostgres",
    "FlowPage",
    "FlowQuery",
    "FlowStore",
    "FlowTransaction",
    "HistoryPage",
    "IdempotencyKey",
    "MutationResult",
    "ResolvedDatabase",
    "SchemaNotReadyError",
    "StoreUnavailable",
    "StoredKey",
    "TenantChange",
    "Write",
    "resolve_database_url",
]
