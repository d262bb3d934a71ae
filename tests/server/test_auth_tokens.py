"""Bearer-token verification, scopes, and the local dev secret (no server needed)."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.server.auth import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    Authenticator,
    JwtKey,
    Scope,
    effective_scopes,
    load_or_create_dev_secret,
    mint_token,
)

TENANT = Tenant("acme", "migration-1")
KEY = JwtKey.hs256(b"s" * 48)


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _authenticator(key: JwtKey = KEY) -> Authenticator:
    return Authenticator(key, issuer=DEV_ISSUER, audience=DEV_AUDIENCE)


def _token(key: JwtKey = KEY, **overrides: object) -> str:
    kwargs: dict[str, object] = {
        "tenant": TENANT,
        "user_id": "alice",
        "issuer": DEV_ISSUER,
        "audience": DEV_AUDIENCE,
    }
    kwargs.update(overrides)
    return mint_token(key, **kwargs)  # type: ignore[arg-type]


def _refusal(authenticate: Callable[[], object]) -> FlowStateError:
    with pytest.raises(FlowStateError) as caught:
        authenticate()
    return caught.value


def test_a_valid_token_gives_tenant_user_and_scopes() -> None:
    principal = _authenticator().authenticate(_bearer(_token(scopes=["flows:write"])))
    assert principal.tenant == TENANT
    assert principal.user_id == "alice"
    assert principal.scopes == {Scope.READ, Scope.WRITE}
    assert not principal.is_admin


@pytest.mark.parametrize(
    ("granted", "expected"),
    [
        (["flows:read"], {Scope.READ}),
        (["flows:write"], {Scope.READ, Scope.WRITE}),
        (
            ["flows:admin"],
            {
                Scope.READ,
                Scope.WRITE,
                Scope.ADMIN,
                Scope.DEFINITIONS_WRITE,
                Scope.WEBHOOKS_ADMIN,
                Scope.APPROVE,
            },
        ),
        (["definitions:write"], {Scope.READ, Scope.DEFINITIONS_WRITE}),
        (["webhooks:admin"], {Scope.READ, Scope.WEBHOOKS_ADMIN}),
        (["flows:approve"], {Scope.READ, Scope.APPROVE}),
        (["openid", "profile"], set()),
        ([], set()),
    ],
    ids=[
        "read",
        "write-implies-read",
        "admin-implies-all",
        "definitions-write-implies-read",
        "webhooks-admin-implies-read",
        "approve-implies-read",
        "unknown-ignored",
        "none",
    ],
)
def test_scope_implications(granted: list[str], expected: set[Scope]) -> None:
    assert effective_scopes(granted) == expected


def test_too_small_a_scope_is_permission_denied() -> None:
    principal = _authenticator().authenticate(_bearer(_token(scopes=["flows:read"])))
    principal.require(Scope.READ)
    refusal = _refusal(lambda: principal.require(Scope.WRITE))
    assert refusal.code is ErrorCode.PERMISSION_DENIED
    assert refusal.details["required_scope"] == "flows:write"


BAD_HEADERS = {
    "missing": None,
    "empty": "",
    "wrong scheme": "Basic dXNlcjpwYXNz",
    "empty token": "Bearer ",
    "garbage": "Bearer not.a.jwt",
    "forged signature": _bearer(_token(JwtKey.hs256(b"x" * 48))),
    "expired": _bearer(_token(ttl=timedelta(seconds=60), now=time.time() - 3600)),
    "wrong issuer": _bearer(_token(issuer="someone-else")),
    "wrong audience": _bearer(_token(audience="another-service")),
    "no issuer": _bearer(_token(issuer=None)),
    "empty tenant claim": _bearer(_token(tenant=Tenant("", "x"))),
    "empty subject": _bearer(_token(user_id="")),
}


@pytest.mark.parametrize("why", list(BAD_HEADERS))
def test_bad_credentials_are_unauthenticated(why: str) -> None:
    refusal = _refusal(lambda: _authenticator().authenticate(BAD_HEADERS[why]))
    assert refusal.code is ErrorCode.UNAUTHENTICATED, why
    assert not refusal.retry_allowed


def test_alg_none_is_refused() -> None:
    claims = {
        "sub": "mallory",
        "client_account_id": "acme",
        "engagement_id": "migration-1",
        "scope": "flows:admin",
        "exp": int(time.time()) + 60,
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
    }
    unsigned = jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]
    refusal = _refusal(lambda: _authenticator().authenticate(_bearer(unsigned)))
    assert refusal.code is ErrorCode.UNAUTHENTICATED


def test_a_token_without_exp_is_refused() -> None:
    claims = {"sub": "a", "client_account_id": "b", "engagement_id": "c"}
    token = jwt.encode(claims, b"s" * 48, algorithm="HS256")
    refusal = _refusal(lambda: Authenticator(KEY).authenticate(_bearer(token)))
    assert refusal.code is ErrorCode.UNAUTHENTICATED


def test_verified_tokens_are_cached() -> None:
    authenticator = _authenticator()
    header = _bearer(_token())
    assert authenticator.authenticate(header) is authenticator.authenticate(header)


class _Clock:
    """A settable clock for the cache's expiry (PyJWT keeps reading the real one)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("leeway", [0.0, 5.0])
def test_a_cached_token_is_refused_from_its_expiry_on(leeway: float) -> None:
    issued = float(int(time.time()))
    clock = _Clock(issued)
    authenticator = Authenticator(
        KEY, issuer=DEV_ISSUER, audience=DEV_AUDIENCE, leeway_seconds=leeway, clock=clock
    )
    header = _bearer(_token(ttl=timedelta(seconds=600), now=issued))
    principal = authenticator.authenticate(header)
    assert principal.expires_at == issued + 600
    clock.now = issued + 600 + leeway - 0.5
    assert authenticator.authenticate(header) is principal  # still cached, still valid
    clock.now = issued + 600 + leeway
    for _ in range(2):  # from the cache, then (evicted) from a fresh verification
        refusal = _refusal(lambda: authenticator.authenticate(header))
        assert refusal.code is ErrorCode.UNAUTHENTICATED
        assert refusal.message == "token expired"
        assert not refusal.retry_allowed


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    authenticator = Authenticator(KEY, issuer=DEV_ISSUER, audience=DEV_AUDIENCE, cache_size=2)
    first, second, third = (_bearer(_token(user_id=name)) for name in ("a", "b", "c"))
    cached_first = authenticator.authenticate(first)
    cached_second = authenticator.authenticate(second)
    assert authenticator.authenticate(first) is cached_first  # first is now the most recent
    authenticator.authenticate(third)  # evicts second, the least recently used
    assert authenticator.authenticate(first) is cached_first
    again = authenticator.authenticate(second)  # verified again: a new principal
    assert again is not cached_second
    assert again == cached_second
    with pytest.raises(ValueError, match="at least 1"):
        Authenticator(KEY, cache_size=0)


def _tampered(token: str, **claims: object) -> str:
    """`token` with `claims` changed in its payload and its signature kept."""
    header, payload, signature = token.split(".")
    decoded = jwt.decode(token, options={"verify_signature": False})
    decoded.update(claims)
    forged = jwt.encode(decoded, b"k" * 48, algorithm="HS256").split(".")[1]
    assert forged != payload
    return ".".join((header, forged, signature))


def test_a_tampered_token_is_refused_while_the_original_is_cached() -> None:
    authenticator = _authenticator()
    token = _token(scopes=["flows:read"])
    assert authenticator.authenticate(_bearer(token)).tenant == TENANT
    other_tenant = _tampered(token, client_account_id="other", engagement_id="x")
    more_scopes = _tampered(token, scope="flows:admin")
    later_expiry = _tampered(token, exp=int(time.time()) + 10**6)
    bad_signature = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for forged in (other_tenant, more_scopes, later_expiry, bad_signature):
        with pytest.raises(FlowStateError) as caught:
            authenticator.authenticate(_bearer(forged))
        assert caught.value.code is ErrorCode.UNAUTHENTICATED
    assert authenticator.authenticate(_bearer(token)).scopes == {Scope.READ}


def test_each_token_keeps_its_own_tenant_in_a_warm_cache() -> None:
    authenticator = _authenticator()
    tenants = [Tenant("acme", "m1"), Tenant("acme", "m2"), Tenant("globex", "m1")]
    headers = [_bearer(_token(tenant=tenant)) for tenant in tenants]
    for _ in range(2):
        assert [authenticator.authenticate(h).tenant for h in headers] == tenants


def test_a_new_key_means_a_new_cache() -> None:
    header = _bearer(_token())
    _authenticator().authenticate(header)
    rotated = _authenticator(JwtKey.hs256(b"r" * 48))
    refusal = _refusal(lambda: rotated.authenticate(header))
    assert refusal.code is ErrorCode.UNAUTHENTICATED


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_public_key_tokens(tmp_path: Path, kind: str) -> None:
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "rsa":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        algorithm = "RS256"
    else:
        private_key = ec.generate_private_key(ec.SECP256R1())
        algorithm = "ES256"
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem)
    key = JwtKey.from_public_key_file(key_file)
    assert key.algorithm == algorithm
    assert key.signing_key is None
    claims = {
        "sub": "svc",
        "client_account_id": "acme",
        "engagement_id": "e1",
        "scope": "flows:read",
        "exp": int(time.time()) + 60,
    }
    token = jwt.encode(claims, private_key, algorithm=algorithm)
    principal = Authenticator(key).authenticate(_bearer(token))
    assert principal.user_id == "svc"
    # An HS256 token "signed" with the public key text must not pass (algorithm confusion).
    confused = jwt.encode(claims, b"x" * 48, algorithm="HS256")
    refusal = _refusal(lambda: Authenticator(key).authenticate(_bearer(confused)))
    assert refusal.code is ErrorCode.UNAUTHENTICATED
    with pytest.raises(ValueError, match="cannot mint"):
        mint_token(key, tenant=TENANT, user_id="x")


def test_short_hs256_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        JwtKey.hs256(b"short")


def test_dev_secret_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    secret = load_or_create_dev_secret(data_dir)
    assert len(secret) >= 32
    path = data_dir / "jwt-dev-secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_dev_secret(data_dir) == secret
    assert sorted(p.name for p in data_dir.iterdir()) == ["jwt-dev-secret"]


def test_concurrent_dev_secret_creation_agrees(tmp_path: Path) -> None:
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(load_or_create_dev_secret(tmp_path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert len(set(results)) == 1
