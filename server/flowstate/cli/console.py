"""``flowstate console-url``: a one-time sign-in link to the web console (local dev mode).

The link carries a sign-in ticket in its fragment (``/#signin=...``): a short-lived JWT signed
with the dev secret that the console exchanges once for a session token and then removes from
the address bar (`flowstate.server.web.SignIn`). `flowstate serve` prints one at start for the
dev identity below; this command makes one for any tenant, user and scopes.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from flowstate.cli.token import parse_tenant
from flowstate.core.model import Tenant
from flowstate.server.app import format_address
from flowstate.server.auth import Scope
from flowstate.server.config import AuthConfig, ConfigError, ServerSettings, resolve_auth
from flowstate.server.web import mint_signin_ticket

__all__ = ["DEV_CONSOLE_TENANT", "DEV_CONSOLE_USER", "console_signin_url", "register", "run"]

DEV_CONSOLE_TENANT = Tenant("dev", "local")
"""The tenant of the link `flowstate serve` prints."""
DEV_CONSOLE_USER = "dev"


def console_signin_url(
    console_url: str,
    auth: AuthConfig,
    *,
    tenant: Tenant = DEV_CONSOLE_TENANT,
    user_id: str = DEV_CONSOLE_USER,
    scopes: list[str] | None = None,
) -> str:
    """`console_url` with a one-time sign-in ticket in its fragment (dev mode keys only)."""
    if auth.source != "dev" or auth.key.signing_key is None:
        raise ConfigError(
            "sign-in links exist only in local dev mode (the dev secret signs them); "
            "paste a token into the console instead"
        )
    ticket = mint_signin_ticket(
        auth.key,
        tenant=tenant,
        user_id=user_id,
        scopes=scopes if scopes is not None else [Scope.ADMIN.value],
        issuer=auth.issuer,
    )
    return f"{console_url.rstrip('/')}/#signin={ticket}"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``console-url`` command."""
    parser = subparsers.add_parser(
        "console-url",
        help="print a one-time sign-in link to the web console (local dev mode)",
        description="Print a link that signs the browser into the console of the local dev "
        "server once, within 10 minutes, as the given tenant and user.",
    )
    parser.add_argument(
        "--tenant",
        type=parse_tenant,
        default=DEV_CONSOLE_TENANT,
        help="ACCOUNT/ENGAGEMENT (default: dev/local)",
    )
    parser.add_argument("--user", default=DEV_CONSOLE_USER, help="the user (default: dev)")
    parser.add_argument(
        "--scopes",
        nargs="+",
        default=[Scope.ADMIN.value],
        metavar="SCOPE",
        help="flows:read (read-only), flows:write, flows:admin (default)",
    )
    parser.add_argument("--data-dir", type=Path, help="data directory (FLOWSTATE_DATA_DIR)")
    parser.add_argument(
        "--url", help="the console's URL (default: http://FLOWSTATE_HTTP_HOST:FLOWSTATE_HTTP_PORT/)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the link."""
    scopes = [scope for group in args.scopes for scope in re.split(r"[\s,]+", group) if scope]
    unknown = sorted(set(scopes) - set(Scope._value2member_map_))
    if unknown:
        raise ConfigError(
            f"unknown scope(s) {', '.join(unknown)}; use {', '.join(s.value for s in Scope)}"
        )
    settings = ServerSettings.from_env(os.environ).with_overrides(data_dir=args.data_dir)
    url = args.url
    if url is None:
        if settings.http_port is None:
            raise ConfigError("the HTTP port is off (FLOWSTATE_HTTP_PORT=off): pass --url")
        url = f"http://{format_address(settings.http_host, settings.http_port)}/"
    auth = resolve_auth(settings)
    print(console_signin_url(url, auth, tenant=args.tenant, user_id=args.user, scopes=scopes))
    return 0
