"""``flowstate migrate`` and ``flowstate import-legacy``: the storage commands of the CLI.

``flowstate migrate upgrade [REVISION]`` (default head), ``flowstate migrate downgrade
REVISION`` (e.g. ``-1`` or ``base``), ``flowstate migrate current``; ``flowstate import-legacy
--file rows.csv|rows.json --tenant ACCOUNT/ENGAGEMENT``. Each takes ``--database-url``
(default ``$FLOWSTATE_DATABASE_URL``) and ``--data-dir`` (default ``$FLOWSTATE_DATA_DIR``):
without a database URL they start (or join) the embedded PostgreSQL of that data directory,
exactly as ``flowstate serve`` does, and release it when done.

`register` adds the commands to the `flowstate` parser; each sets ``args.run`` to a function
returning the exit code. Failures are `FlowStateError`s, printed by the entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from flowstate.core.model import Tenant
from flowstate.service.legacy import import_legacy_rows, read_legacy_file
from flowstate.storage import migrate
from flowstate.storage.embedded import DATABASE_URL_ENV, resolve_database_url
from flowstate.storage.limits import malformed
from flowstate.storage.store import FlowStore

__all__ = ["add_database_options", "database_environment", "parse_tenant", "register"]


_MIGRATE_DESCRIPTION = """\
Apply or revert the database schema migrations.

  flowstate migrate upgrade              to the latest revision (run after every upgrade)
  flowstate migrate downgrade -1         one revision back ("base": drop everything)
  flowstate migrate current              the database's revision and the one this build needs

The database is --database-url (default $FLOWSTATE_DATABASE_URL); without one, the embedded
PostgreSQL of --data-dir, which `flowstate serve` migrates by itself. Run it as the database
owner: docs/operations.md ("Database roles") lists the roles it needs."""


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """``--database-url`` and ``--data-dir``, shared by the commands that open the database."""
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"PostgreSQL URL (default: ${DATABASE_URL_ENV}; else the embedded server)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory of the embedded server (default: $FLOWSTATE_DATA_DIR)",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate`` (upgrade/downgrade/current) and ``import-legacy`` to the CLI."""
    migrate_parser = subparsers.add_parser(
        "migrate",
        help="apply or revert database migrations (flowstate migrate upgrade)",
        description=_MIGRATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = migrate_parser.add_subparsers(
        dest="migrate_action", metavar="ACTION", required=True, help="what to do"
    )
    upgrade = actions.add_parser(
        "upgrade",
        help="upgrade the schema (default: to head); run it after every upgrade of Flowstate",
        description="Upgrade the schema, in one transaction. Run it as the database's owner; "
        "docs/operations.md (Database roles) says which roles it needs.",
    )
    upgrade.add_argument(
        "revision", nargs="?", default="head", help="target revision (default: head, the latest)"
    )
    downgrade = actions.add_parser(
        "downgrade",
        help="downgrade the schema to REVISION",
        description='Downgrade the schema to REVISION, in one transaction ("base" drops '
        "every table, and with them every flow).",
    )
    downgrade.add_argument(
        "revision", help='target revision: an id, "-1" (one step back) or "base" (empty)'
    )
    current = actions.add_parser(
        "current",
        help="print the schema revision",
        description="Print the database's schema revision and the one this build needs.",
    )
    for action in (upgrade, downgrade, current):
        add_database_options(action)
        action.set_defaults(run=_run_migrate)

    importer = subparsers.add_parser(
        "import-legacy",
        help="create flows from legacy per-phase boolean rows",
        description="Create one discovery flow per row of a legacy export (CSV or JSON); "
        "see flowstate.service.legacy. Rerunning skips flows already imported.",
    )
    importer.add_argument(
        "--file", type=Path, required=True, help="the legacy export, rows.csv or rows.json"
    )
    importer.add_argument(
        "--tenant", required=True, metavar="ACCOUNT/ENGAGEMENT", help="the owning tenant"
    )
    importer.add_argument(
        "--format",
        choices=("csv", "json"),
        default=None,
        help="the file's format (default: from its extension)",
    )
    importer.add_argument(
        "--user-id",
        default="legacy-import",
        help="recorded in the history as who imported (default: %(default)s)",
    )
    add_database_options(importer)
    importer.set_defaults(run=_run_import)


def database_environment(args: argparse.Namespace) -> dict[str, str]:
    """The environment with ``--database-url`` (when given) as the database URL variable."""
    env = dict(os.environ)
    if args.database_url:
        env[DATABASE_URL_ENV] = args.database_url
    return env


def _run_migrate(args: argparse.Namespace) -> int:
    with resolve_database_url(database_environment(args), data_dir=args.data_dir) as database:
        if args.migrate_action == "upgrade":
            asyncio.run(migrate.upgrade(database.url, args.revision))
        elif args.migrate_action == "downgrade":
            asyncio.run(migrate.downgrade(database.url, args.revision))
        revision = asyncio.run(migrate.current_revision(database.url))
    print(f"database revision: {revision or 'none'} (head: {migrate.head_revision()})")
    return 0


def parse_tenant(text: str) -> Tenant:
    """``ACCOUNT/ENGAGEMENT`` as a Tenant; MALFORMED_REQUEST (field ``tenant``) otherwise."""
    account, slash, engagement = text.partition("/")
    if not slash or not account or not engagement or "/" in engagement:
        raise malformed("tenant", "tenant must be ACCOUNT/ENGAGEMENT")
    return Tenant(client_account_id=account, engagement_id=engagement)


def _run_import(args: argparse.Namespace) -> int:
    tenant = parse_tenant(args.tenant)
    rows = read_legacy_file(args.file, args.format)

    async def run(url: str) -> str:
        store = await FlowStore.open(url)
        try:
            result = await import_legacy_rows(store, tenant, rows, user_id=args.user_id)
        finally:
            await store.close()
        return f"imported {len(result.created)} flow(s), skipped {len(result.skipped)} existing"

    with resolve_database_url(database_environment(args), data_dir=args.data_dir) as database:
        print(asyncio.run(run(database.url)))
    return 0
