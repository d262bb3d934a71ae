"""Flowstate use cases: what the server does with a request, between the servicer and the store.

The servicer converts a request into domain values, calls a use case here, and converts the
result; the use case checks its inputs, asks the pure core to decide and hands the decision to
the store's transaction runner. Modules:

- `flows`: `FlowService` (create, mutate, import, reads, the ValidateTransition dry run,
  recovery options) and its values;
- `definitions`: the definitions registry (register a tenant's definition, read, list);
- `idempotency`: request fingerprints;
- `legacy`: import of flows from the old per-phase boolean rows.
"""

from flowstate.service.flows import FlowService, RecoveryView, TransitionCheck
from flowstate.service.legacy import LegacyImportResult, import_legacy_rows

__all__ = [
    "FlowService",
    "LegacyImportResult",
    "RecoveryView",
    "TransitionCheck",
    "import_legacy_rows",
]
