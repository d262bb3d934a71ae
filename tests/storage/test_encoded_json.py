"""A request's metadata is encoded once (`EncodedJson`); every later use splices that text."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from flowstate.core.commands import TransitionPhase
from flowstate.core.errors import FlowStateError
from flowstate.core.model import PhaseState
from flowstate.service.idempotency import fingerprint
from flowstate.storage.codec import EncodedJson, dumps, dumps_canonical
from flowstate.storage.limits import MAX_JSON_BYTES, check_json_object
from flowstate.storage.sql import _decode_json

METADATA = {"b": [1, 2.5, None], "a": {"z": "é", "y": True}}


def test_its_text_is_canonical_json() -> None:
    encoded = EncodedJson(METADATA)

    assert encoded.text == '{"a":{"y":true,"z":"é"},"b":[1,2.5,null]}'
    assert dict(encoded) == METADATA
    assert encoded == METADATA


def test_nan_is_refused_when_it_is_encoded() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        EncodedJson({"x": math.nan})


def test_dumps_writes_the_text_instead_of_encoding_again() -> None:
    encoded = EncodedJson({"x": 1})
    encoded.text = '{"spliced":true}'  # what is written is the text, not the mapping

    assert dumps([{"metadata": encoded, "n": 2}]) == '[{"metadata":{"spliced":true},"n":2}]'
    assert dumps_canonical({"m": encoded, "a": 1}) == '{"a":1,"m":{"spliced":true}}'


def test_two_objects_in_one_value_keep_their_places() -> None:
    values = [EncodedJson({"i": i}) for i in range(12)]

    assert json.loads(dumps(values)) == [{"i": i} for i in range(12)]


def test_a_string_that_looks_like_a_placeholder_is_left_alone() -> None:
    value = {"text": "0:0", "m": EncodedJson({"k": "v"})}

    assert json.loads(dumps(value)) == {"text": "0:0", "m": {"k": "v"}}


def test_the_fingerprint_is_the_one_of_the_plain_mapping() -> None:
    """Stored idempotency keys stay valid: spliced or encoded inline, the hash is the same."""
    plain = TransitionPhase("data_import", PhaseState.IN_PROGRESS, metadata=METADATA)
    encoded = TransitionPhase(
        "data_import",
        PhaseState.IN_PROGRESS,
        metadata=EncodedJson(dict(reversed(METADATA.items()))),
    )
    reference = json.dumps(
        {
            "operation": "transition",
            "command": {
                "type": "TransitionPhase",
                "phase": "data_import",
                "target_state": "in_progress",
                "reason": "",
                "error": None,
                "metadata": METADATA,
            },
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )

    assert fingerprint("transition", command=encoded) == fingerprint("transition", command=plain)
    assert (
        fingerprint("transition", command=plain) == hashlib.sha256(reference.encode()).hexdigest()
    )


def test_the_size_limit_reads_the_text() -> None:
    big = EncodedJson({"x": "a" * MAX_JSON_BYTES})

    with pytest.raises(FlowStateError, match="larger than"):
        check_json_object("command.metadata", big)
    check_json_object("command.metadata", EncodedJson({"x": "a"}))


def test_a_value_without_encoded_json_is_plain_compact_json() -> None:
    """The fast path (no EncodedJson to splice) writes what the splicing path writes."""
    value = {"b": [1, 2.5, None, True], "a": {"z": "é"}, "n": "x\u2028y"}

    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert dumps_canonical(value) == json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, sort_keys=True
    )
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"when": object()})
    with pytest.raises(ValueError, match="JSON compliant"):
        dumps({"x": math.inf})


@pytest.mark.parametrize(
    "text",
    ["{}", "[]", '{"a":[1,2.5,null,true,"é"]}', ' {"a": 1}', '{"a": 1} ', '"s"', "null"],
)
def test_column_json_decodes_as_json_loads(text: str) -> None:
    """The pool's JSON decoder reads compact jsonb text itself, anything else via json.loads."""
    assert _decode_json(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "nope", '{"a":', "{} x"])
def test_column_json_that_is_not_json_fails_as_json_loads_does(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        _decode_json(text)
    assert str(got.value) == str(expected.value)
