"""The HTTP port around the API: same-origin by default, CORS for configured origins, the
console's headers, and local dev mode's one-time sign-in links."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from flowstate.cli.console import console_signin_url
from flowstate.core.model import Tenant
from flowstate.testing import RunningServer, serve_in_process

from .conftest import ALLOWED_ORIGIN

LIST_FLOWS = "/flowstate.v1.FlowStateService/ListFlows"


async def test_console_page_has_a_content_security_policy(http: httpx.AsyncClient) -> None:
    for path in ("/", "/flows/some-id"):  # the app's own routes get index.html too
        response = await http.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_foreign_origin_is_refused(
    http: httpx.AsyncClient, web_server: RunningServer, tenant: Tenant
) -> None:
    token = web_server.mint(tenant)
    response = await http.post(
        LIST_FLOWS,
        content=b"{}",
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {token}",
            "origin": "http://evil.example.test",
        },
    )
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    preflight = await http.options(LIST_FLOWS, headers={"origin": "http://evil.example.test"})
    assert preflight.status_code == 403


async def test_same_origin_and_configured_origins_are_served(
    http: httpx.AsyncClient, base_url: str, web_server: RunningServer, tenant: Tenant
) -> None:
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {web_server.mint(tenant)}",
    }
    same = await http.post(LIST_FLOWS, content=b"{}", headers={**headers, "origin": base_url})
    assert same.status_code == 200
    assert "access-control-allow-origin" not in same.headers
    preflight = await http.options(
        LIST_FLOWS,
        headers={
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    cross = await http.post(
        LIST_FLOWS, content=b"{}", headers={**headers, "origin": ALLOWED_ORIGIN}
    )
    assert cross.status_code == 200
    assert cross.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


async def test_sign_in_links_only_in_dev_mode(http: httpx.AsyncClient) -> None:
    response = await http.post("/console/signin", content=json.dumps({"ticket": "x"}))
    assert response.status_code == 404
    assert "paste a token" in response.json()["message"]


async def test_a_sign_in_link_works_once(database_url: str, tmp_path: Path) -> None:
    async with serve_in_process(
        database_url,
        http_port=0,
        jwt_secret=None,
        jwt_issuer=None,
        jwt_audience=None,
        dev_auth=True,
        data_dir=tmp_path,
    ) as running:
        server = running.server
        assert server.console_url is not None
        tenant = Tenant("acme", "console-test")
        link = console_signin_url(
            server.console_url, server.auth, tenant=tenant, user_id="dana", scopes=["flows:read"]
        )
        base, _, fragment = link.partition("#signin=")
        assert base == server.console_url
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            # The ticket itself is no API token.
            as_token = await client.post(
                LIST_FLOWS,
                content=b"{}",
                headers={"content-type": "application/json", "authorization": f"Bearer {fragment}"},
            )
            assert as_token.status_code == 401
            first = await client.post("/console/signin", content=json.dumps({"ticket": fragment}))
            assert first.status_code == 200
            assert first.headers["cache-control"] == "no-store"
            token = first.json()["token"]
            listed = await client.post(
                LIST_FLOWS,
                content=b"{}",
                headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
            )
            assert listed.status_code == 200
            again = await client.post("/console/signin", content=json.dumps({"ticket": fragment}))
            assert again.status_code == 401
            assert "already used" in again.json()["message"]
            garbage = await client.post("/console/signin", content=b"not json")
            assert garbage.status_code == 400
