"""``flowstate archive``: retention runs, the archive catalog, restores and policies.

``flowstate archive run --dir DIR [--default-days N] [--now ISO]`` (one bounded archiver run),
``list [--tenant T]``, ``restore FILE [--flow ID ...]``, ``policy set|get|clear TENANT [DAYS]``.
They talk to the database as its owner (``--database-url`` / ``$FLOWSTATE_DATABASE_URL``, else
the embedded server of ``--data-dir``), like ``flowstate migrate``: see docs/retention.md.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from flowstate.cli.storage_commands import add_database_options, database_environment, parse_tenant
from flowstate.service.retention import Archiver
from flowstate.storage.archives import archive_sink
from flowstate.storage.embedded import resolve_database_url
from flowstate.storage.limits import malformed
from flowstate.storage.retention import RetentionPolicies, RetentionStore

__all__ = ["register"]

T = TypeVar("T")

_DESCRIPTION = """\
Archive expired terminal flows, list and restore archives, set retention policies.

  flowstate archive run --dir /var/lib/flowstate/archive   one bounded run (cron it)
  flowstate archive list --tenant acme/migration-1          the archive catalog
  flowstate archive restore FILE                            bring a file's flows back
  flowstate archive policy set acme/migration-1 90          keep terminal flows 90 days

Run as the database owner (docs/retention.md)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``archive`` (run, list, restore, policy) to the CLI."""
    parser = subparsers.add_parser(
        "archive",
        help="retention: archive expired flows, list/restore archives, policies",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(
        dest="archive_action", metavar="ACTION", required=True, help="what to do"
    )

    run = actions.add_parser(
        "run",
        help="archive and delete the flows whose retention has passed (one bounded run)",
        description="Create history partitions ahead, archive expired terminal flows as JSON "
        "Lines into --dir (verified), drop fully archived partitions, delete the rest through "
        "the sanctioned function.",
    )
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", type=Path, help="directory the archives go to")
    where.add_argument(
        "--url",
        metavar="s3://BUCKET/PREFIX",
        help="S3-compatible store the archives go to (credentials, region and endpoint from "
        "AWS_* variables, e.g. AWS_ENDPOINT_URL for MinIO)",
    )
    run.add_argument(
        "--default-days",
        type=int,
        default=None,
        help="retention of tenants without a policy (default: keep them forever)",
    )
    run.add_argument("--batch-size", type=int, default=200, help="flows per archive file")
    run.add_argument("--max-batches", type=int, default=50, help="archive files per run at most")
    run.add_argument(
        "--now",
        type=datetime.fromisoformat,
        default=None,
        help="run as of this ISO time with offset (default: the database clock)",
    )
    run.set_defaults(run=_run)

    listing = actions.add_parser("list", help="the archive catalog, newest first")
    listing.add_argument(
        "--tenant", default=None, metavar="ACCOUNT/ENGAGEMENT", help="only this tenant's"
    )
    listing.add_argument("--limit", type=int, default=100, help="rows at most")
    listing.set_defaults(run=_list)

    restore = actions.add_parser(
        "restore",
        help="bring the flows of an archive file back, exactly as archived",
        description="Restore every flow of FILE (or those of --flow), flow row and full history "
        "exactly as archived, in one transaction; refused when one exists. Restored flows are "
        "held: retention does not archive them again.",
    )
    restore.add_argument(
        "file", help="an archive written by `archive run`: a path or s3://BUCKET/KEY"
    )
    restore.add_argument(
        "--flow", action="append", default=[], metavar="ID", help="only this flow (repeatable)"
    )
    restore.set_defaults(run=_restore)

    policy = actions.add_parser("policy", help="a tenant's retention policy")
    policy.add_argument(
        "policy_action",
        choices=("set", "get", "clear"),
        help="set DAYS (0 removes it, like clear), get or clear",
    )
    policy.add_argument("tenant", metavar="ACCOUNT/ENGAGEMENT", help="the tenant")
    policy.add_argument(
        "days", type=int, nargs="?", default=None, help="for set: 1..36500, or 0 to remove"
    )
    policy.add_argument("--user-id", default="cli", help="recorded as who set it")
    policy.set_defaults(run=_policy)

    for action in (run, listing, restore, policy):
        add_database_options(action)


def _with_store(args: argparse.Namespace, work: Callable[[RetentionStore], Awaitable[T]]) -> T:
    async def go(url: str) -> T:
        store = await RetentionStore.open(url)
        try:
            return await work(store)
        finally:
            await store.close()

    with resolve_database_url(database_environment(args), data_dir=args.data_dir) as database:
        return asyncio.run(go(database.url))


def _run(args: argparse.Namespace) -> int:
    if args.now is not None and args.now.utcoffset() is None:
        raise malformed("now", "--now must carry a UTC offset, e.g. 2027-01-01T00:00:00+00:00")

    async def work(store: RetentionStore) -> str:
        archiver = Archiver(
            store,
            archive_sink(args.url if args.url else str(args.dir)),
            default_days=args.default_days,
            batch_size=args.batch_size,
            max_batches=args.max_batches,
        )
        result = await archiver.run_once(args.now)
        waiting, overdue = await archiver.lag(args.now)
        return (
            f"archived {result.archived_flows} flow(s) ({result.archived_entries} entries) "
            f"into {len(result.archives)} archive(s) under {args.url or args.dir}; "
            f"dropped {len(result.dropped_partitions)} partition(s); "
            f"deleted {result.purged_flows} flow(s) ({result.purged_entries} entries row by "
            f"row); created {len(result.created_partitions)} partition(s); "
            f"{waiting} flow(s) of due trees still waiting (oldest {overdue:.0f} s overdue)"
        )

    print(_with_store(args, work))
    return 0


def _list(args: argparse.Namespace) -> int:
    tenant = None if args.tenant is None else parse_tenant(args.tenant)
    rows = _with_store(args, lambda store: store.list_archives(tenant, args.limit))
    print(
        "flow_id\ttenant\tversion\tentries\tarchived_at\tpurged_at\trestored_at\tsha256\tlocation"
    )
    for row in rows:
        print(
            "\t".join(
                str(value)
                for value in (
                    row.flow_id,
                    f"{row.tenant.client_account_id}/{row.tenant.engagement_id}",
                    row.flow_version,
                    row.entry_count,
                    row.archived_at.isoformat(),
                    row.purged_at.isoformat() if row.purged_at else "-",
                    row.restored_at.isoformat() if row.restored_at else "-",
                    row.sha256 or "-",
                    row.location or "-",
                )
            )
        )
    return 0


def _restore(args: argparse.Namespace) -> int:
    async def work(store: RetentionStore) -> str:
        archiver = Archiver(store, archive_sink(args.file))
        result = await archiver.restore(args.file, args.flow)
        return f"restored {result.flows} flow(s), {result.entries} history entries"

    print(_with_store(args, work))
    return 0


def _policy(args: argparse.Namespace) -> int:
    tenant = parse_tenant(args.tenant)
    if args.policy_action == "get":
        policy = _with_store(args, lambda s: RetentionPolicies(s).get(tenant))
        print(
            f"{args.tenant}: no policy (the archiver's --default-days applies)"
            if policy is None
            else f"{args.tenant}: terminal flows kept {policy.retain_days} day(s) "
            f"(set {policy.updated_at:%Y-%m-%d %H:%M:%S %Z} by {policy.updated_by or '-'})"
        )
        return 0
    days = 0 if args.policy_action == "clear" else args.days  # the one rule: 0 removes
    if days is None:
        raise malformed("days", "policy set needs DAYS (0 removes the policy)")
    stored = _with_store(args, lambda s: RetentionPolicies(s).set(tenant, days, args.user_id))
    print(
        f"{args.tenant}: policy removed (the archiver's --default-days applies)"
        if stored is None
        else f"{args.tenant}: terminal flows kept {stored.retain_days} day(s)"
    )
    return 0
