"""``flowstate webhooks``: manage the tenant's webhooks on a running server (docs/webhooks.md).

Every command needs the ``webhooks:admin`` scope (``flows:admin`` implies it).

- ``create URL [--status S ...] [--definition NAME] [--filter F] [--secret whsec_...]``
  subscribes URL (``--filter``: the filter language of ``flows list``, docs/filters.md) and
  prints the webhook and its signing secret (shown only this once).
- ``list`` prints each webhook with its delivery state, failures and the reason it was disabled.
- ``delete ID``; ``test ID`` sends a signed test event now and prints the receiver's answer
  (exit 1 when it was not delivered).
- ``replay ID [--after-cursor C | --since TIME]`` moves the cursor back (or to now) and enables
  a disabled webhook.

Connection flags, output (``--json``) and exit statuses are those of ``flowstate flows``.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from flowstate.cli.flows import EXIT_ERROR, EXIT_OK, _common_options, _Output, _proto_json, _run
from flowstate.client import FlowstateClient, FlowStatus
from flowstate.v1 import webhook_pb2

__all__ = ["register"]

_STATES = {
    webhook_pb2.WEBHOOK_STATE_ACTIVE: "active",
    webhook_pb2.WEBHOOK_STATE_DISABLED: "disabled",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``webhooks`` command group to the ``flowstate`` command line."""
    group = subparsers.add_parser(
        "webhooks",
        help="create, list, test, replay and delete webhooks",
        description="Manage your tenant's webhooks (needs the webhooks:admin scope).",
    )
    commands = group.add_subparsers(
        dest="webhooks_command", metavar="COMMAND", required=True, help="what to do"
    )
    common = _common_options()

    parser = commands.add_parser(
        "create", parents=[common], help="subscribe a URL; prints the signing secret once"
    )
    parser.add_argument("url", help="the receiver, https://... (http only to allowed networks)")
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        metavar="STATUS",
        help="deliver only changes after which the flow has this status (repeatable), e.g. "
        "completed, failed",
    )
    parser.add_argument("--definition", default="", help="deliver only flows of this definition")
    parser.add_argument(
        "--filter",
        default="",
        help="deliver only changes after which the flow matches this filter (docs/filters.md), "
        "e.g. 'status = FAILED AND labels.team = \"core\"'",
    )
    parser.add_argument("--secret", default="", help="whsec_... (default: the server makes one)")
    parser.set_defaults(run=lambda args: _run(_create, args))

    parser = commands.add_parser("list", parents=[common], help="list webhooks and their state")
    parser.set_defaults(run=lambda args: _run(_list, args))

    parser = commands.add_parser("delete", parents=[common], help="delete a webhook")
    parser.add_argument("webhook_id", help="the webhook's id")
    parser.set_defaults(run=lambda args: _run(_delete, args))

    parser = commands.add_parser("test", parents=[common], help="send a signed test event now")
    parser.add_argument("webhook_id", help="the webhook's id")
    parser.set_defaults(run=lambda args: _run(_test, args))

    parser = commands.add_parser(
        "replay", parents=[common], help="deliver again from a cursor or a time; enables it"
    )
    parser.add_argument("webhook_id", help="the webhook's id")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--after-cursor", default="", help="a delivery's data.cursor")
    where.add_argument(
        "--since",
        type=_timestamp,
        help="ISO 8601 time, e.g. 2026-12-01T00:00:00Z (neither: from now on)",
    )
    parser.set_defaults(run=lambda args: _run(_replay, args))


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _describe(webhook: webhook_pb2.Webhook) -> list[str]:
    statuses = ", ".join(FlowStatus(s).name.lower() for s in webhook.statuses) or "any"
    lines = [
        f"webhook {webhook.webhook_id}: {_STATES.get(webhook.state, 'unknown')}",
        f"  url: {webhook.url}",
        f"  filter: status {statuses}; definition {webhook.definition_name or 'any'}"
        + (f"; {webhook.filter}" if webhook.filter else ""),
        f"  delivered: {webhook.delivered_count}; failures in a row: "
        f"{webhook.consecutive_failures}",
    ]
    if webhook.last_error:
        lines.append(f"  last error: {webhook.last_error}")
    if webhook.disabled_reason:
        lines.append(f"  disabled: {webhook.disabled_reason}")
    return lines


def _create(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    created = client.create_webhook(
        args.url,
        statuses=args.status,
        definition_name=args.definition,
        secret=args.secret,
        filter=args.filter,
    )
    if output.as_json:
        output.json(_proto_json(created))
        return EXIT_OK
    for line in _describe(created.webhook):
        output.line(line)
    output.line(f"  secret: {created.secret}   (shown only now: keep it)")
    return EXIT_OK


def _list(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    webhooks = client.list_webhooks()
    if output.as_json:
        output.json({"webhooks": [_proto_json(w) for w in webhooks]})
        return EXIT_OK
    if not webhooks:
        output.line("no webhooks")
    for webhook in webhooks:
        for line in _describe(webhook):
            output.line(line)
    return EXIT_OK


def _delete(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    client.delete_webhook(args.webhook_id)
    if output.as_json:
        output.json({"deleted": args.webhook_id})
    else:
        output.line(f"deleted webhook {args.webhook_id}")
    return EXIT_OK


def _test(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.test_webhook(args.webhook_id)
    if output.as_json:
        output.json(_proto_json(result))
    elif result.delivered:
        output.line(f"delivered {result.event_id}: HTTP {result.http_status}")
    else:
        output.line(f"not delivered {result.event_id}: {result.error}")
    return EXIT_OK if result.delivered else EXIT_ERROR


def _replay(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    webhook = client.replay_webhook(
        args.webhook_id, after_cursor=args.after_cursor, since=args.since
    )
    if output.as_json:
        output.json(_proto_json(webhook))
        return EXIT_OK
    for line in _describe(webhook):
        output.line(line)
    return EXIT_OK
