"""Webhook deliveries end to end: a real server, real Postgres, a receiver on 127.0.0.1.

The receiver (tests/webhooks/receiver.py) verifies each Standard Webhooks signature with its
own code and records every request; "exactly once after deduplication" is checked on the set
of ``webhook-id`` values it acknowledged, "in per-flow order" on the first arrival of each.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_status import rpc_status

from flowstate.core.model import Tenant
from flowstate.service.webhooks import new_secret
from flowstate.testing import ServerProcess, TokenMinter, serve_in_process, serve_subprocess
from flowstate.v1 import errors_pb2, flow_service_pb2_grpc, states_pb2, webhook_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .conftest import FAST, FAST_ENV
from .receiver import Delivery, receiving

Metadata = tuple[tuple[str, str], ...]
ADMIN_SCOPES = ("flows:write", "webhooks:admin")


def new_tenant() -> Tenant:
    return Tenant("acct-webhooks", f"eng-{uuid.uuid4().hex[:10]}")


def rid() -> str:
    return f"wh-{uuid.uuid4().hex}"


async def wait_for(predicate: Callable[[], bool], *, within: float = 60.0) -> None:
    """Poll `predicate` (bounded) until it holds; fail with the time it was given."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {within}s")
        await asyncio.sleep(0.05)


async def create_flows(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub, metadata: Metadata, count: int
) -> list[str]:
    created = await asyncio.gather(
        *(
            stub.CreateFlow(pb.CreateFlowRequest(request_id=rid()), metadata=metadata)
            for _ in range(count)
        )
    )
    return [response.flow.flow_id for response in created]


async def transition(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub,
    metadata: Metadata,
    flow_ids: Sequence[str],
    state: int,
    phase: str = "data_import",
) -> None:
    await asyncio.gather(
        *(
            stub.TransitionPhase(
                pb.TransitionPhaseRequest(
                    request_id=rid(),
                    flow_id=flow_id,
                    phase=phase,
                    target_state=state,  # type: ignore[arg-type]
                ),
                metadata=metadata,
            )
            for flow_id in flow_ids
        )
    )


def expected_ids(flow_ids: Sequence[str], versions: int) -> set[str]:
    return {f"evt_{f}_{v}" for f in flow_ids for v in range(1, versions + 1)}


def assert_once_and_in_order(
    deliveries: Sequence[Delivery], flow_ids: Sequence[str], versions: int
) -> None:
    """Every change of `flow_ids` acknowledged, signed, and first seen in version order."""
    accepted = [d for d in deliveries if d.answered == 204]
    assert all(d.signature_valid for d in deliveries), "a delivery's signature did not verify"
    assert {d.message_id for d in accepted} == expected_ids(flow_ids, versions)
    first_seen: dict[str, list[int]] = {}
    seen: set[str] = set()
    for delivery in accepted:
        if delivery.message_id in seen:
            continue  # a redelivery: the receiver deduplicates by webhook-id
        seen.add(delivery.message_id)
        data = delivery.body["data"]
        assert delivery.message_id == f"evt_{data['flow_id']}_{data['flow_version']}"
        first_seen.setdefault(data["flow_id"], []).append(data["flow_version"])
    for flow_id in flow_ids:
        assert first_seen[flow_id] == list(range(1, versions + 1)), flow_id


async def create_webhook(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub,
    metadata: Metadata,
    url: str,
    **fields: Any,
) -> webhook_pb2.CreateWebhookResponse:
    return await stub.CreateWebhook(
        webhook_pb2.CreateWebhookRequest(url=url, **fields), metadata=metadata
    )


async def webhook_state(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub, metadata: Metadata, webhook_id: str
) -> webhook_pb2.Webhook:
    listed = await stub.ListWebhooks(webhook_pb2.ListWebhooksRequest(), metadata=metadata)
    return next(w for w in listed.webhooks if w.webhook_id == webhook_id)


def _kill(process: ServerProcess) -> None:
    process.process.send_signal(signal.SIGKILL)
    process.process.wait(30)


async def test_fifty_flows_arrive_once_in_order_across_kill_9_and_failing_receiver(
    webhook_database_url: str,
) -> None:
    """50 flows x 3 changes; the receiver fails its first 5 requests; the server is killed
    with SIGKILL midway and another one takes over once the lease expires."""
    tenant = new_tenant()
    secret = new_secret()
    async with receiving(secret=secret, fail_first=5) as receiver:
        with serve_subprocess(database_url=webhook_database_url, env=FAST_ENV) as first:
            metadata = first.mint.metadata(tenant, scopes=ADMIN_SCOPES)
            async with grpc.aio.insecure_channel(first.address) as channel:
                stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
                await create_webhook(stub, metadata, receiver.url, secret=secret)
                flow_ids = await create_flows(stub, metadata, 50)
                await transition(stub, metadata, flow_ids, states_pb2.PHASE_STATE_IN_PROGRESS)
                await wait_for(lambda: len(receiver.accepted()) >= 30)
            _kill(first)
        before_kill = len(receiver.accepted())
        with serve_subprocess(database_url=webhook_database_url, env=FAST_ENV) as second:
            metadata = second.mint.metadata(tenant, scopes=ADMIN_SCOPES)
            async with grpc.aio.insecure_channel(second.address) as channel:
                stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
                await transition(stub, metadata, flow_ids, states_pb2.PHASE_STATE_COMPLETED)
                wanted = expected_ids(flow_ids, 3)
                await wait_for(lambda: {d.message_id for d in receiver.accepted()} >= wanted)
                listed = await stub.ListWebhooks(
                    webhook_pb2.ListWebhooksRequest(), metadata=metadata
                )
    assert_once_and_in_order(receiver.deliveries, flow_ids, 3)
    assert before_kill < 150  # the second server delivered the rest
    assert receiver.requests >= 150 + 5  # the five refused attempts were retried
    (webhook,) = listed.webhooks
    assert webhook.state == webhook_pb2.WEBHOOK_STATE_ACTIVE
    assert webhook.consecutive_failures == 0


async def test_a_receiver_that_never_answers_is_bounded_and_disabled_while_others_flow(
    webhook_database_url: str,
) -> None:
    """Each attempt ends at the timeout; after the failure budget the webhook is disabled with
    the reason visible; another tenant's receiver gets its changes meanwhile."""
    minter = TokenMinter.random()
    settings = {**FAST, "webhook_timeout": 0.3, "webhook_failure_budget": 3}
    stuck_tenant, healthy_tenant = new_tenant(), new_tenant()
    secret = new_secret()
    async with (
        receiving(secret=secret, hang=True) as hanging,
        receiving(secret=secret) as healthy,
        serve_in_process(webhook_database_url, minter=minter, **settings) as server,
        server.channel() as channel,
    ):
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        stuck_md = minter.metadata(stuck_tenant, scopes=ADMIN_SCOPES)
        healthy_md = minter.metadata(healthy_tenant, scopes=ADMIN_SCOPES)
        stuck = (await create_webhook(stub, stuck_md, hanging.url, secret=secret)).webhook
        await create_webhook(stub, healthy_md, healthy.url, secret=secret)
        await create_flows(stub, stuck_md, 1)
        healthy_flows = await create_flows(stub, healthy_md, 3)
        await transition(stub, healthy_md, healthy_flows, states_pb2.PHASE_STATE_IN_PROGRESS)
        await wait_for(lambda: len(healthy.accepted()) >= 6, within=30)
        disabled: list[webhook_pb2.Webhook] = []

        async def is_disabled() -> bool:
            state = await webhook_state(stub, stuck_md, stuck.webhook_id)
            disabled[:] = [state]
            return state.state == webhook_pb2.WEBHOOK_STATE_DISABLED

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not await is_disabled():
            assert loop.time() < deadline, "the hanging receiver's webhook was never disabled"
            await asyncio.sleep(0.05)
    (state,) = disabled
    assert state.consecutive_failures == 3
    assert "3 consecutive failed deliveries" in state.disabled_reason
    assert "no answer within 0.3s" in state.disabled_reason
    assert hanging.requests == 3
    assert_once_and_in_order(healthy.deliveries, healthy_flows, 2)


async def test_webhook_rpcs_filters_test_replay_delete_and_refusals(
    webhook_database_url: str,
) -> None:
    minter = TokenMinter.random()
    tenant, other = new_tenant(), new_tenant()
    async with (
        receiving() as receiver,
        serve_in_process(webhook_database_url, minter=minter, **FAST) as server,
        server.channel() as channel,
    ):
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        md = minter.metadata(tenant, scopes=ADMIN_SCOPES)
        # Refusals: scope, SSRF, bad secret.
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await create_webhook(stub, minter.metadata(tenant), receiver.url)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for url in ("https://10.0.0.1/hook", "https://169.254.169.254/", "https://[::1]/x"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await create_webhook(stub, md, url)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
            assert "url refused" in (refused.value.details() or ""), url
        with pytest.raises(grpc.aio.AioRpcError) as bad_secret:
            await create_webhook(stub, md, receiver.url, secret="nope")
        assert bad_secret.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A server-made secret, answered once; a filter on the status after the change.
        created = await create_webhook(
            stub, md, receiver.url, statuses=[states_pb2.FLOW_STATUS_DATA_GATHERING]
        )
        receiver.secret = created.secret
        assert created.secret.startswith("whsec_")
        webhook = created.webhook
        assert webhook.state == webhook_pb2.WEBHOOK_STATE_ACTIVE
        assert webhook.cursor

        tested = await stub.TestWebhook(
            webhook_pb2.TestWebhookRequest(webhook_id=webhook.webhook_id), metadata=md
        )
        assert tested.delivered, tested
        assert tested.http_status == 204
        assert receiver.deliveries[-1].message_id == tested.event_id
        assert receiver.deliveries[-1].signature_valid
        assert receiver.deliveries[-1].body["type"] == "webhook.test"

        before = datetime.now(UTC) - timedelta(seconds=1)
        (flow_id,) = await create_flows(stub, md, 1)  # INITIALIZED: filtered out
        await transition(stub, md, [flow_id], states_pb2.PHASE_STATE_IN_PROGRESS)  # DATA_GATHERING
        await wait_for(lambda: any(d.message_id == f"evt_{flow_id}_2" for d in receiver.deliveries))
        changes = [d for d in receiver.accepted() if d.body["type"] == "flow.changed"]
        assert [d.message_id for d in changes] == [f"evt_{flow_id}_2"]
        assert changes[0].body["data"]["status_after"] == "DATA_GATHERING"

        # Replay from a time: the matching change arrives again (same webhook-id).
        replayed = await stub.ReplayWebhook(
            webhook_pb2.ReplayWebhookRequest(
                webhook_id=webhook.webhook_id, since_time=_timestamp(before)
            ),
            metadata=md,
        )
        assert replayed.webhook.state == webhook_pb2.WEBHOOK_STATE_ACTIVE
        await wait_for(
            lambda: sum(d.message_id == f"evt_{flow_id}_2" for d in receiver.accepted()) == 2
        )
        # Replay after a delivery's cursor: nothing older comes back, newer changes do.
        cursor = changes[0].body["data"]["cursor"]
        await stub.ReplayWebhook(
            webhook_pb2.ReplayWebhookRequest(webhook_id=webhook.webhook_id, after_cursor=cursor),
            metadata=md,
        )
        with pytest.raises(grpc.aio.AioRpcError) as both:
            await stub.ReplayWebhook(
                webhook_pb2.ReplayWebhookRequest(
                    webhook_id=webhook.webhook_id,
                    after_cursor=cursor,
                    since_time=_timestamp(before),
                ),
                metadata=md,
            )
        assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Another tenant neither sees nor deletes it.
        other_md = minter.metadata(other, scopes=ADMIN_SCOPES)
        listed = await stub.ListWebhooks(webhook_pb2.ListWebhooksRequest(), metadata=other_md)
        assert not listed.webhooks
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await stub.DeleteWebhook(
                webhook_pb2.DeleteWebhookRequest(webhook_id=webhook.webhook_id), metadata=other_md
            )
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND

        listed = await stub.ListWebhooks(webhook_pb2.ListWebhooksRequest(), metadata=md)
        assert [w.webhook_id for w in listed.webhooks] == [webhook.webhook_id]
        assert listed.webhooks[0].delivered_count >= 1
        await stub.DeleteWebhook(
            webhook_pb2.DeleteWebhookRequest(webhook_id=webhook.webhook_id), metadata=md
        )
        listed = await stub.ListWebhooks(webhook_pb2.ListWebhooksRequest(), metadata=md)
        assert not listed.webhooks


def _timestamp(moment: datetime) -> Any:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("status = NOPE", 9),
        ("labels.team = 'x' OR", 20),
        ("stuck", 0),  # depends on the time of evaluation: not in a kept filter
        ("updated > -1h", 10),
        ("status = FAILED AND (definition = x OR stuck)", 39),
    ],
)
async def test_a_webhook_filter_that_does_not_parse_is_refused_with_its_position(
    webhook_database_url: str, text: str, position: int
) -> None:
    minter = TokenMinter.random()
    md = minter.metadata(new_tenant(), scopes=ADMIN_SCOPES)
    async with (
        serve_in_process(webhook_database_url, minter=minter, **FAST) as server,
        server.channel() as channel,
    ):
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create_webhook(stub, md, "https://93.184.216.34/x", filter=text)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None
        flow_error = errors_pb2.FlowError()
        assert any(d.Unpack(flow_error) for d in status.details if d.Is(flow_error.DESCRIPTOR))
        assert errors_pb2.ErrorCode.Name(flow_error.error_code) == "ERROR_CODE_MALFORMED_REQUEST"
        assert flow_error.details["field"] == "filter"
        assert flow_error.details["position"] == position
        assert f"at position {position}" in flow_error.message
        listed = await stub.ListWebhooks(webhook_pb2.ListWebhooksRequest(), metadata=md)
        assert not listed.webhooks  # nothing was created


async def test_a_filter_in_the_filter_language_selects_the_changes_delivered(
    webhook_database_url: str,
) -> None:
    """The filter is evaluated on each change, on the flow as the change left it (as WatchFlows
    does), and ANDed with the definition; the other flows' changes move the cursor silently.
    A replay, read after every change committed, delivers exactly the same changes."""
    minter = TokenMinter.random()
    tenant = new_tenant()
    text = 'labels.team = "core" AND phase.data_import = COMPLETED'
    async with (
        receiving() as receiver,
        serve_in_process(webhook_database_url, minter=minter, **FAST) as server,
        server.channel() as channel,
    ):
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        md = minter.metadata(tenant, scopes=ADMIN_SCOPES)
        created = await create_webhook(
            stub, md, receiver.url, definition_name="discovery", filter=text
        )
        receiver.secret = created.secret
        assert created.webhook.filter == text
        listed = await stub.ListWebhooks(webhook_pb2.ListWebhooksRequest(), metadata=md)
        assert [w.filter for w in listed.webhooks] == [text]

        started = datetime.now(UTC) - timedelta(seconds=1)
        flows = {}
        for team in ("core", "ops"):
            request = pb.CreateFlowRequest(request_id=rid(), labels={"team": team})
            flows[team] = (await stub.CreateFlow(request, metadata=md)).flow.flow_id
        core, ops = flows["core"], flows["ops"]
        # The ops flow first: once the core flow's last change has arrived, every change of the
        # ops flow (earlier in the log) has been read and filtered out.
        for flow_id in (ops, core):
            await transition(stub, md, [flow_id], states_pb2.PHASE_STATE_IN_PROGRESS)  # v2
            await transition(stub, md, [flow_id], states_pb2.PHASE_STATE_COMPLETED)  # v3
            await transition(
                stub, md, [flow_id], states_pb2.PHASE_STATE_IN_PROGRESS, phase="field_mapping"
            )  # v4: data_import is still COMPLETED
        await wait_for(lambda: any(d.message_id == f"evt_{core}_4" for d in receiver.accepted()))
        assert all(d.signature_valid for d in receiver.deliveries)

        def delivered() -> list[str]:
            return [d.message_id for d in receiver.accepted() if d.body["type"] == "flow.changed"]

        # Each change is filtered on the flow at its version (docs/filters.md), however late
        # the delivery loop read it: data_import is NOT_STARTED at v1 and IN_PROGRESS at v2,
        # COMPLETED from v3 on. Nothing of ops ever matches.
        assert delivered() == [f"evt_{core}_3", f"evt_{core}_4"]
        # A replay reads every change after all of them committed: the same answer.
        await stub.ReplayWebhook(
            webhook_pb2.ReplayWebhookRequest(
                webhook_id=created.webhook.webhook_id, since_time=_timestamp(started)
            ),
            metadata=md,
        )
        await wait_for(lambda: len(delivered()) == 4)
        assert delivered() == [f"evt_{core}_3", f"evt_{core}_4"] * 2
