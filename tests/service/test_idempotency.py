"""Request fingerprints (`flowstate.service.idempotency.fingerprint`): the text each value hashes.

A fingerprint is stored with its request id and compared when the id comes again, maybe after
an upgrade: the canonical text of a value must not drift, or a retried request would be
refused as REQUEST_ID_REUSED. So each kind of value is pinned to its text here.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType

import pytest

from flowstate.core.commands import TransitionPhase
from flowstate.core.model import PhaseState
from flowstate.service.idempotency import fingerprint


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Colour(enum.Enum):
    RED = 1


@dataclass(frozen=True)
class Pair:
    left: object
    right: object


def test_a_dataclass_is_its_type_name_and_fields() -> None:
    command = TransitionPhase("work", PhaseState.FAILED, reason="r")
    assert fingerprint("transition", command=command) == _sha(
        '{"command":{"error":null,"metadata":{},"phase":"work","reason":"r",'
        '"target_state":"failed","type":"TransitionPhase"},"operation":"transition"}'
    )
    assert fingerprint("op", pair=Pair(1, None)) == _sha(
        '{"operation":"op","pair":{"left":1,"right":null,"type":"Pair"}}'
    )


def test_sets_mappings_times_and_enums_have_one_text() -> None:
    at = datetime(2026, 12, 2, 9, 30, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert fingerprint(
        "op",
        items={"b", "a", "c"},
        frozen=frozenset({3, 1}),
        mapping=MappingProxyType({"z": 1, "a": 2}),
        at=at,
        colour=Colour.RED,
        nan=float("nan"),
        text="é\ud800",
    ) == _sha(
        '{"at":"2026-12-02T09:30:00.000005+02:00","colour":1,"frozen":[1,3],'
        '"items":["a","b","c"],"mapping":{"a":2,"z":1},"nan":NaN,"operation":"op",'
        '"text":"é\ud800"}'
    )
    # Sets of mixed values are sorted by their JSON text.
    assert fingerprint("op", items={"x", 2, Pair(1, 2)}) == _sha(
        '{"items":["x",2,{"left":1,"right":2,"type":"Pair"}],"operation":"op"}'
    )
    assert fingerprint("op", at=datetime(2026, 1, 1, tzinfo=UTC)) != fingerprint(
        "op", at=datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    )


@pytest.mark.parametrize(("value", "name"), [(object(), "object"), (Pair, "type"), (b"x", "bytes")])
def test_anything_else_cannot_be_fingerprinted(value: object, name: str) -> None:
    with pytest.raises(TypeError, match=rf"^cannot fingerprint {name}$"):
        fingerprint("op", value=value)
