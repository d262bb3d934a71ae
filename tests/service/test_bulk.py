"""`BulkService.start` (`flowstate.service.bulk`): refusals whole, the phase kept only where it
means something, and the fingerprint a request id stands for.

On a database of the test's own (`own_store`): no server's bulk worker takes the actions. The
work itself (outcomes over 2,000 flows, cancel, takeover) is in tests/storage/test_bulk.py.
Found missing by ``make mutate`` (docs/testing.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime

import pytest

from flowstate.core.bulk import BulkActionKind
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.service.bulk import BulkService
from flowstate.storage import FlowStore
from flowstate.storage.bulk import BulkRequest, BulkSelection

K = BulkActionKind
FLOWS = tuple(str(uuid.UUID(int=i)) for i in (1, 2))


def _service(store: FlowStore) -> BulkService:
    return BulkService(store, owner="test", clock=lambda: datetime.now(UTC))


async def _refusal(
    service: BulkService, tenant: Tenant, request: BulkRequest
) -> tuple[ErrorCode, str, dict[str, object]]:
    with pytest.raises(FlowStateError) as refused:
        await service.start(tenant, request)
    return refused.value.code, refused.value.message, dict(refused.value.details)


async def test_a_request_without_a_selection_or_its_phase_is_refused(
    own_store: FlowStore, tenant: Tenant
) -> None:
    service = _service(own_store)
    ids = BulkSelection(flow_ids=FLOWS)
    assert await _refusal(service, tenant, BulkRequest(K.CANCEL, BulkSelection())) == (
        ErrorCode.MALFORMED_REQUEST,
        "a bulk action needs a filter or flow ids (use 'NOT stuck OR stuck' for every flow)",
        {"field": "filter"},
    )
    for kind in (K.ROLLBACK, K.SKIP):
        for phase in (None, ""):
            assert await _refusal(service, tenant, BulkRequest(kind, ids, phase=phase)) == (
                ErrorCode.MALFORMED_REQUEST,
                f"a {kind.value} bulk action needs a phase",
                {"field": "phase"},
            )
    long = BulkRequest(K.SKIP, ids, phase="p" * 129)
    assert await _refusal(service, tenant, long) == (
        ErrorCode.MALFORMED_REQUEST,
        "phase is longer than 128 characters",
        {"field": "phase", "limit": 128},
    )
    listed, _ = await service.actions.list_actions(tenant, page_size=10, page_token="")
    assert listed == []


async def test_the_phase_is_kept_only_for_rollback_and_skip(
    own_store: FlowStore, tenant: Tenant
) -> None:
    service = _service(own_store)
    ids = BulkSelection(flow_ids=FLOWS)
    skip, _ = await service.start(tenant, BulkRequest(K.SKIP, ids, phase="data_import"))
    cancel, _ = await service.start(tenant, BulkRequest(K.CANCEL, ids, phase="data_import"))
    assert (skip.kind, skip.phase, cancel.kind, cancel.phase) == (
        K.SKIP,
        "data_import",
        K.CANCEL,
        None,
    )


async def test_a_request_id_stands_for_its_request(own_store: FlowStore, tenant: Tenant) -> None:
    service = _service(own_store)
    first = BulkRequest(
        K.ROLLBACK,
        BulkSelection(flow_ids=FLOWS),
        phase="field_mapping",
        reason="bad mapping",
        user_id="operator",
        request_id="bulk-1",
    )
    action, created = await service.start(tenant, first)
    assert created
    # Pinned: stored with the action, compared when the id comes again (maybe after an
    # upgrade); the flow ids in any order are the same request.
    text = (
        '{"filter": "", "flow_ids": ["00000000-0000-0000-0000-000000000001", '
        '"00000000-0000-0000-0000-000000000002"], "kind": "rollback", '
        '"phase": "field_mapping", "reason": "bad mapping"}'
    )
    assert action.fingerprint == hashlib.sha256(text.encode()).hexdigest()
    again = dataclasses.replace(first, selection=BulkSelection(flow_ids=FLOWS[::-1]))
    assert await service.start(tenant, again) == (action, False)
    other_user = dataclasses.replace(first, user_id="someone else")  # who asks is no part
    assert await service.start(tenant, other_user) == (action, False)
    for changed in (
        dataclasses.replace(first, kind=K.SKIP),
        dataclasses.replace(first, phase="data_import"),
        dataclasses.replace(first, reason="another"),
        dataclasses.replace(first, selection=BulkSelection(flow_ids=FLOWS[:1])),
        dataclasses.replace(first, selection=BulkSelection(flow_ids=FLOWS, filter_text="x")),
    ):
        assert await _refusal(service, tenant, changed) == (
            ErrorCode.REQUEST_ID_REUSED,
            "request_id 'bulk-1' was used for another request",
            {"field": "request_id"},
        )
    # A phase a CANCEL does not use is no part of its request either.
    cancel = BulkRequest(K.CANCEL, BulkSelection(flow_ids=FLOWS), request_id="bulk-2")
    stored, _ = await service.start(tenant, cancel)
    with_phase = dataclasses.replace(cancel, phase="data_import")
    assert await service.start(tenant, with_phase) == (stored, False)
