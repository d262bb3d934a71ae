"""Flowstate storage: PostgreSQL persistence of flows, history, idempotency keys, definitions.

The server codes against `FlowStore` (one per process) and the values it returns; rows never
leave this package and every failure is a core `FlowStateError` (`StoreUnavailable` when the
database cannot serve now). Modules:

- `store`: `FlowStore` and its result/query values;
- `schema`: the tables (SQLAlchemy Core metadata, shared with the migrations);
- `migrate`: Alembic configured in code (`upgrade`, `downgrade`, `current_revision`);
- `embedded`: the embedded PostgreSQL and `resolve_database_url`;
- `legacy`: import of flows from the old per-phase boolean rows;
- `limits`: input limits checked before any SQL; `errors`: the error mapping.

See docs/storage.md for the schema, transaction shape, idempotency, tenancy and cursors.
"""

from flowstate.storage.embedded import (
    EmbeddedPostgres,
    ResolvedDatabase,
    resolve_database_url,
)
from flowstate.storage.errors import SchemaNotReadyError, StoreUnavailable
from flowstate.storage.legacy import LegacyImportResult, import_legacy_rows
from flowstate.storage.store import (
    DEFAULT_IDEMPOTENCY_TTL,
    NOTIFY_CHANNEL,
    ChangeBatch,
    FlowPage,
    FlowQuery,
    FlowStore,
    HistoryPage,
    MutationResult,
    TenantChange,
)

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL",
    "NOTIFY_CHANNEL",
    "ChangeBatch",
    "EmbeddedPostgres",
    "FlowPage",
    "FlowQuery",
    "FlowStore",
    "HistoryPage",
    "LegacyImportResult",
    "MutationResult",
    "ResolvedDatabase",
    "SchemaNotReadyError",
    "StoreUnavailable",
    "TenantChange",
    "import_legacy_rows",
    "resolve_database_url",
]
