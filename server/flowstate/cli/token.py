"""``flowstate token``: mint a bearer token the server accepts (HS256 keys only).

The key is the one `flowstate serve` would verify with under the same environment:
``FLOWSTATE_JWT_SECRET`` / ``FLOWSTATE_JWT_SECRET_FILE``, else the local dev secret in the
data directory (created if absent, so a token can be minted before the first start). Prints the
token on stdout::

    export FLOWSTATE_TOKEN=$(flowstate token --tenant acme/migration-1 --user alice)
"""

from __future__ import annotations

import argparse
import os
import re
from datetime import timedelta
from pathlib import Path

from flowstate.core.model import Tenant
from flowstate.server.auth import Scope, mint_token
from flowstate.server.config import ConfigError, ServerSettings, resolve_auth

__all__ = ["parse_ttl", "register", "run"]

_TTL = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> timedelta:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` as a timedelta (at least one second)."""
    match = _TTL.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600s, 30m, 24h, 7d)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_tenant(text: str) -> Tenant:
    """``ACCOUNT/ENGAGEMENT`` as a Tenant."""
    account, _, engagement = text.partition("/")
    if not account or not engagement:
        raise argparse.ArgumentTypeError(f"tenant must be ACCOUNT/ENGAGEMENT, not {text!r}")
    return Tenant(account, engagement)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``token`` command."""
    parser = subparsers.add_parser(
        "token",
        help="mint a bearer token for the local server",
        description="Mint a token signed with the server's HS256 key (FLOWSTATE_JWT_SECRET, "
        "FLOWSTATE_JWT_SECRET_FILE or the dev secret of the data directory).",
    )
    parser.add_argument(
        "--tenant", required=True, type=parse_tenant, help="ACCOUNT/ENGAGEMENT (the tenant)"
    )
    parser.add_argument("--user", required=True, help="the user (`sub`), recorded in history")
    parser.add_argument(
        "--scopes",
        nargs="+",
        default=[Scope.READ.value, Scope.WRITE.value],
        metavar="SCOPE",
        help="flows:read, flows:write (implies read), flows:admin (implies write); "
        "default: flows:read flows:write",
    )
    parser.add_argument(
        "--ttl", type=parse_ttl, default=timedelta(hours=24), help="lifetime (default 24h)"
    )
    parser.add_argument("--data-dir", type=Path, help="data directory (FLOWSTATE_DATA_DIR)")
    parser.add_argument("--issuer", help="`iss` claim (FLOWSTATE_JWT_ISSUER; dev: flowstate-dev)")
    parser.add_argument("--audience", help="`aud` claim (FLOWSTATE_JWT_AUDIENCE; dev: flowstate)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print a token; ConfigError when there is no HS256 key to sign with."""
    scopes = [scope for group in args.scopes for scope in re.split(r"[\s,]+", group) if scope]
    unknown = sorted(set(scopes) - set(Scope._value2member_map_))
    if unknown:
        raise ConfigError(
            f"unknown scope(s) {', '.join(unknown)}; use {', '.join(s.value for s in Scope)}"
        )
    settings = ServerSettings.from_env(os.environ).with_overrides(
        data_dir=args.data_dir, jwt_issuer=args.issuer, jwt_audience=args.audience
    )
    auth = resolve_auth(settings)
    if auth.key.signing_key is None:
        raise ConfigError(
            f"the server verifies {auth.key.algorithm} tokens with a public key; "
            "mint them with the matching private key"
        )
    print(
        mint_token(
            auth.key,
            tenant=args.tenant,
            user_id=args.user,
            scopes=scopes,
            ttl=args.ttl,
            issuer=auth.issuer,
            audience=auth.audience,
        )
    )
    return 0
