"""What a bulk action does to one flow (`flowstate.core.bulk`), kind by kind.

See docs/bulk-actions.md.
"""

from __future__ import annotations

import pytest

from flowstate.core.bulk import BulkActionKind, bulk_command, bulk_request_id
from flowstate.core.commands import (
    CancelFlow,
    Command,
    PauseFlow,
    ResumeFlow,
    Retry,
    Rollback,
    SkipPhase,
)

K = BulkActionKind


@pytest.mark.parametrize(
    ("kind", "phase", "command"),
    [
        (K.RETRY, "load", Retry("load", force=False, reason="why")),
        (K.RETRY, None, None),  # a flow without a FAILED phase: nothing to do
        (K.CANCEL, None, CancelFlow(reason="why")),
        (K.CANCEL, "load", CancelFlow(reason="why")),
        (K.PAUSE, None, PauseFlow(reason="why")),
        (K.RESUME, None, ResumeFlow(reason="why")),
        (K.ROLLBACK, "load", Rollback("load", cascade=True, reason="why")),
        (K.SKIP, "load", SkipPhase("load", reason="why", metadata={})),
    ],
    ids=lambda v: getattr(v, "value", repr(v)),
)
def test_the_command_of_each_kind(
    kind: BulkActionKind, phase: str | None, command: Command | None
) -> None:
    assert bulk_command(kind, phase, "why") == command


@pytest.mark.parametrize("kind", [K.ROLLBACK, K.SKIP])
def test_a_phase_kind_without_its_phase_is_a_bug(kind: BulkActionKind) -> None:
    with pytest.raises(ValueError, match=f"^a {kind.value} bulk action needs a phase$"):
        bulk_command(kind, None, "why")


def test_request_id_is_the_same_on_every_attempt() -> None:
    assert bulk_request_id("op-1", "flow-9") == "bulk-op-1-flow-9"
