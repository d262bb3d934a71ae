"""Bearer-token authentication: JWT keys, claims, scopes, the local dev secret, token minting.

A request carries ``authorization: Bearer <JWT>``. The token is signed with HS256 (a shared
secret) or RS256/ES256 (the server holds the public key). Claims:

- ``sub``: the user, recorded in every history entry the request writes;
- ``client_account_id`` and ``engagement_id``: the tenant (never taken from a request body);
- ``scope``: space-separated ``flows:read``, ``flows:write``, ``flows:admin``,
  ``definitions:write``, ``flows:approve``; write implies read, admin implies write,
  ``definitions:write`` and ``flows:approve`` (registering definitions changes what every flow
  of the tenant may follow, and approving judges a worker's result, so a plain writer gets
  neither), and ``definitions:write`` and ``flows:approve`` imply read. ``retention:admin``
  (Get/SetRetentionPolicy: how long the tenant's ended flows are kept before they are archived
  and deleted) implies read and is not implied by ``flows:admin``: shortening retention
  deletes history, a separate power a flow administrator need not hold. Other scope names are
  kept as written (`Principal.grants`) for approval policies that name them;
- other string (or list-of-strings) claims are kept (`Principal.claims`) for approval
  policies that name a claim and value (docs/approvals.md);
- ``exp`` (required), ``iss`` / ``aud`` (checked when configured); ``exp``, ``nbf`` and
  ``iat`` must be JSON numbers (RFC 7519 NumericDate), not numeric strings.

A request with more than one ``authorization`` header is refused (`flowstate.server.rpc`).

Missing, malformed, expired or forged tokens are UNAUTHENTICATED; a valid token whose scopes
are too small is PERMISSION_DENIED. The key is parsed once at start-up, and a token is verified
once: `Authenticator` keeps the principals of verified tokens in a bounded LRU keyed by the
whole ``authorization`` value (signature included, so a token whose claims were altered is a
different key and is verified, and refused, like any other; the tenant is the token's own),
until the token's ``exp`` (plus the leeway): a cached token that has expired is refused
"token expired", as the verification would. The cache belongs to the `Authenticator` and its
one key: a new key or new settings mean a new `Authenticator`, with an empty cache.

Local dev mode: the server creates a random secret (file mode 0600) in its data directory on
first start, with issuer ``flowstate-dev`` and audience ``flowstate``; `flowstate token` mints
tokens from the same file.
"""

from __future__ import annotations

import contextlib
import enum
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant

__all__ = [
    "DEV_AUDIENCE",
    "DEV_ISSUER",
    "DEV_SECRET_FILENAME",
    "Authenticator",
    "JwtKey",
    "Principal",
    "Scope",
    "load_or_create_dev_secret",
    "mint_token",
]

DEV_ISSUER: Final = "flowstate-dev"
"""`iss` of tokens signed with the local dev secret."""
DEV_AUDIENCE: Final = "flowstate"
"""`aud` of tokens signed with the local dev secret."""
DEV_SECRET_FILENAME: Final = "jwt-dev-secret"
"""Name of the dev secret file inside the data directory."""
_MAX_CLAIM: Final = 256
_CACHE_SIZE: Final = 4096
_NUMERIC_DATES: Final = ("exp", "nbf", "iat")


class Scope(enum.StrEnum):
    """An OAuth-style scope of a token."""

    READ = "flows:read"
    WRITE = "flows:write"
    ADMIN = "flows:admin"
    DEFINITIONS_WRITE = "definitions:write"
    """Register flow definitions for the tenant (CreateFlowDefinition); admins have it."""
    WEBHOOKS_ADMIN = "webhooks:admin"
    """Manage the tenant's webhooks (Create/List/Delete/Test/ReplayWebhook); admins have it."""
    APPROVE = "flows:approve"
    """Decide on phases waiting for approval (DecidePhase); admins have it."""
    RETENTION_ADMIN = "retention:admin"
    """Read and set the tenant's retention policy (docs/retention.md); flows:admin has it not."""


_IMPLIED: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.WRITE: frozenset({Scope.READ, Scope.WRITE}),
    Scope.ADMIN: frozenset(
        {
            Scope.READ,
            Scope.WRITE,
            Scope.ADMIN,
            Scope.DEFINITIONS_WRITE,
            Scope.WEBHOOKS_ADMIN,
            Scope.APPROVE,
        }
    ),
    Scope.DEFINITIONS_WRITE: frozenset({Scope.READ, Scope.DEFINITIONS_WRITE}),
    Scope.WEBHOOKS_ADMIN: frozenset({Scope.READ, Scope.WEBHOOKS_ADMIN}),
    Scope.APPROVE: frozenset({Scope.READ, Scope.APPROVE}),
    Scope.RETENTION_ADMIN: frozenset({Scope.READ, Scope.RETENTION_ADMIN}),
}
_MAX_CLAIMS: Final = 64
_MAX_CLAIM_VALUES: Final = 64


def effective_scopes(granted: Iterable[str]) -> frozenset[Scope]:
    """The scopes `granted` amounts to, implications included; unknown names are ignored."""
    result: set[Scope] = set()
    for name in granted:
        if name in Scope._value2member_map_:
            result |= _IMPLIED[Scope(name)]
    return frozenset(result)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant, the user and the effective scopes of a verified token."""

    tenant: Tenant
    user_id: str
    scopes: frozenset[Scope]
    expires_at: float
    """The token's `exp` (seconds since the epoch)."""
    grants: frozenset[str] = frozenset()
    """The scope names as written in the token (unknown ones included)."""
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The token's string claims (a list of strings keeps its strings), bounded."""

    def require(self, scope: Scope) -> None:
        """Raise PERMISSION_DENIED unless the principal holds `scope`."""
        if scope not in self.scopes:
            raise FlowStateError(
                ErrorCode.PERMISSION_DENIED,
                f"this call needs the {scope.value} scope",
                required_scope=scope.value,
                granted_scopes=sorted(s.value for s in self.scopes),
            )

    @property
    def is_admin(self) -> bool:
        """Whether the principal holds flows:admin."""
        return Scope.ADMIN in self.scopes


@dataclass(frozen=True, slots=True)
class JwtKey:
    """A parsed JWT key: the algorithm, the verification key and (HS256 only) the signing key."""

    algorithm: str
    verify_key: Any
    signing_key: Any | None = None

    @classmethod
    def hs256(cls, secret: bytes) -> JwtKey:
        """A shared HS256 secret (at least 32 bytes)."""
        if len(secret) < 32:
            raise ValueError("an HS256 secret must be at least 32 bytes long")
        return cls("HS256", secret, secret)

    @classmethod
    def from_public_key_file(cls, path: Path) -> JwtKey:
        """An RSA (RS256) or EC P-256 (ES256) public key in a PEM file."""
        key = load_pem_public_key(path.read_bytes())
        if isinstance(key, rsa.RSAPublicKey):
            return cls("RS256", key)
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            return cls("ES256", key)
        raise ValueError(f"{path}: expected an RSA or EC P-256 public key")


def _unauthenticated(message: str) -> FlowStateError:
    return FlowStateError(ErrorCode.UNAUTHENTICATED, message, retry_allowed=False)


def _claim(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value or len(value) > _MAX_CLAIM or "\x00" in value:
        raise _unauthenticated(f"token claim {name!r} is missing or invalid")
    return value


class Authenticator:
    """Verifies bearer tokens against one key; caches verified tokens until they expire.

    The cache (`cache_size` entries, least recently used evicted first) maps the exact
    ``authorization`` value to the `Principal` its verification gave; a hit costs a dict
    lookup and a clock read instead of a signature check and a JSON decode. `clock` (seconds
    since the epoch; `time.time` by default) decides when a cached token has expired.
    """

    def __init__(
        self,
        key: JwtKey,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: float = 0.0,
        cache_size: int = _CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Verify with `key`; check `iss` / `aud` when given; cache up to `cache_size` tokens."""
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._key = key
        self._algorithms = [key.algorithm]
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._options: Any = {"require": ["exp", "sub"], "verify_aud": audience is not None}
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``authorization`` header value; UNAUTHENTICATED if it is bad."""
        if not authorization:
            raise _unauthenticated("missing bearer token (authorization: Bearer <token>)")
        cache = self._cache
        cached = cache.get(authorization)
        if cached is not None:
            if cached.expires_at + self._leeway > self._clock():
                cache.move_to_end(authorization)
                return cached
            del cache[authorization]
            raise _unauthenticated("token expired")
        principal = self._verify(authorization)
        if principal.expires_at + self._leeway <= self._clock():
            # PyJWT read its own clock; this one decides, on a hit as on a miss.
            raise _unauthenticated("token expired")
        cache[authorization] = principal
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return principal

    def _verify(self, authorization: str) -> Principal:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("the authorization header must be 'Bearer <token>'")
        try:
            payload = jwt.decode(
                token.strip(),
                self._key.verify_key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise _unauthenticated("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthenticated(f"invalid token: {exc}") from None
        for claim in _NUMERIC_DATES:
            value = payload.get(claim)
            # PyJWT converts "123" with int(); RFC 7519 says a NumericDate is a JSON number.
            if claim in payload and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise _unauthenticated(f"token claim {claim!r} must be a number (NumericDate)")
        tenant = Tenant(_claim(payload, "client_account_id"), _claim(payload, "engagement_id"))
        scope = payload.get("scope", "")
        granted = scope.split() if isinstance(scope, str) else []
        return Principal(
            tenant=tenant,
            user_id=_claim(payload, "sub"),
            scopes=effective_scopes(granted),
            expires_at=float(payload["exp"]),
            grants=frozenset(g for g in granted if len(g) <= _MAX_CLAIM),
            claims=_string_claims(payload),
        )


def _string_claims(payload: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """The string and list-of-strings claims of a token, bounded (for approval policies)."""
    claims: dict[str, tuple[str, ...]] = {}
    for name, value in payload.items():
        if len(claims) >= _MAX_CLAIMS:
            break
        if isinstance(value, str):
            values: tuple[str, ...] = (value,)
        elif isinstance(value, list):
            values = tuple(v for v in value[:_MAX_CLAIM_VALUES] if isinstance(v, str))
        else:
            continue
        claims[name] = tuple(v for v in values if len(v) <= _MAX_CLAIM)
    return claims


def mint_token(
    key: JwtKey,
    *,
    tenant: Tenant,
    user_id: str,
    scopes: Iterable[str] = (Scope.READ, Scope.WRITE),
    ttl: timedelta = timedelta(hours=24),
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
    token_id: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """A signed token for `tenant` and `user_id`; HS256 keys only (no private keys here).

    `extra_claims` (e.g. ``{"groups": ["finance"]}``) are added as they are, for approval
    policies that name a claim; they cannot replace the claims above.
    """
    if key.signing_key is None:
        raise ValueError(f"cannot mint {key.algorithm} tokens: no signing key")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": user_id,
        "client_account_id": tenant.client_account_id,
        "engagement_id": tenant.engagement_id,
        "scope": " ".join(str(s) for s in scopes),
        "iat": int(issued),
        "exp": int(issued + ttl.total_seconds()),
    }
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    if token_id is not None:
        claims["jti"] = token_id
    if extra_claims:
        claims = {**extra_claims, **claims}
    return jwt.encode(claims, key.signing_key, algorithm=key.algorithm)


def load_or_create_dev_secret(data_dir: Path) -> bytes:
    """The dev secret in `data_dir`, created (random, mode 0600) if absent. Race-safe."""
    path = data_dir / DEV_SECRET_FILENAME
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    # The directory keeps the default mode: the embedded PostgreSQL (run as another user when
    # we are root) must traverse it to reach its own `pg` directory. The file is what is 0600.
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = data_dir / f".{DEV_SECRET_FILENAME}.{os.getpid()}.{secrets.token_hex(4)}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
        # link() fails if another process created the secret first: theirs wins, whole.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    secret = path.read_bytes().strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret
