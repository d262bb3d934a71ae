"""Flowstate storage: PostgreSQL persistence of flows, history, idempotency keys, definitions.

The use cases (`flowstate.service`) code against `FlowStore` (one per process) and the values it
returns; rows never leave this package and every failure is a core `FlowStateError`
(`StoreUnavailable` when the database cannot serve now). Modules:

- `store`: `FlowStore` (reads, and the runner a use case hands its decision to: `update_flow`,
  `insert_flow`); `flow_transaction`: `FlowTransaction`, what a decision runs in, and the write
  of a change; `group_commit` / `group_commit_batch`: many calls of a tenant in one transaction;
  `values`: what it takes and returns; `statements`: the compiled SQL; `runner`: transactions
  with bounded retries;
- beside the flows, on the same runner: `definitions_repo` (`FlowStore.definitions`),
  `webhooks_repo` (`FlowStore.webhooks`), `timers` (`FlowStore.timers`), `bulk`;
- `changes`: the tenant change log behind WatchFlows (commit-ordered reads, the resume cursor);
- `schema`: the tables (SQLAlchemy Core metadata, shared with the migrations);
- `migrate`: Alembic configured in code (`upgrade`, `downgrade`, `current_revision`);
- `embedded`: the embedded PostgreSQL and `resolve_database_url`;
- `limits`: the one table of input limits and its checks; `errors`: the error mapping.

See docs/storage.md for the schema, transaction shape, idempotency, tenancy and cursors.
"""

from flowstate.storage.embedded import (
    EmbeddedPostgres,
    ResolvedDatabase,
    resolve_database_url,
)
from flowstate.storage.errors import SchemaNotReadyError, StoreUnavailable
from flowstate.storage.flow_transaction import FlowTransaction
from flowstate.storage.store import DEFAULT_IDEMPOTENCY_TTL, NOTIFY_CHANNEL, FlowStore
from flowstate.storage.values import (
    FlowCount,
    FlowPage,
    FlowQuery,
    HistoryPage,
    IdempotencyKey,
    MutationResult,
    StoredKey,
    Write,
)

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL",
    "NOTIFY_CHANNEL",
    "EmbeddedPostgres",
    "FlowCount",
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
    "Write",
    "resolve_database_url",
]
