"""Standard Webhooks signing: the specification's published example, and secrets."""

from __future__ import annotations

import base64

import pytest

from flowstate.core.errors import FlowStateError
from flowstate.service.webhooks import event_id, new_secret, secret_key, sign

from .receiver import valid_signature

# The example of the Standard Webhooks specification (and of its reference libraries' tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_reproduces_the_specifications_example() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_a_changed_body_id_or_timestamp_changes_the_signature() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY + b" ") != SPEC_SIGNATURE
    assert sign(SPEC_SECRET, SPEC_ID + "x", SPEC_TIMESTAMP, SPEC_BODY) != SPEC_SIGNATURE
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY) != SPEC_SIGNATURE


def test_the_test_receiver_agrees_with_the_example() -> None:
    assert valid_signature(SPEC_SECRET, SPEC_ID, str(SPEC_TIMESTAMP), SPEC_BODY, SPEC_SIGNATURE)
    assert not valid_signature(SPEC_SECRET, SPEC_ID, "1", SPEC_BODY, SPEC_SIGNATURE)


def test_new_secrets_are_random_32_bytes_with_the_prefix() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert first != second
    assert len(secret_key(first)) == 32


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id="no-prefix"),
        pytest.param("whsec_not base64!", id="not-base64"),
        pytest.param("whsec_" + base64.b64encode(b"x" * 8).decode(), id="too-short"),
        pytest.param("whsec_" + base64.b64encode(b"x" * 65).decode(), id="too-long"),
    ],
)
def test_bad_secrets_are_malformed(secret: str) -> None:
    with pytest.raises(FlowStateError) as caught:
        secret_key(secret)
    assert caught.value.details["field"] == "secret"


def test_event_ids_are_stable_per_change() -> None:
    assert event_id("f", 3) == event_id("f", 3) != event_id("f", 4)
