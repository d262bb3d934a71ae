"""The target policy: webhook URLs that would reach internal addresses are refused (SSRF)."""

from __future__ import annotations

import ipaddress

import pytest

from flowstate.service.webhooks import TargetPolicy, TargetRefusedError

LOOPBACK_ALLOWED = TargetPolicy((ipaddress.ip_network("127.0.0.0/8"),))


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://127.0.0.1/hook", id="loopback-v4"),
        pytest.param("https://[::1]/hook", id="loopback-v6"),
        pytest.param("https://localhost/hook", id="localhost-name"),
        pytest.param("https://10.1.2.3/hook", id="private-10"),
        pytest.param("https://172.16.0.1/hook", id="private-172"),
        pytest.param("https://192.168.1.1/hook", id="private-192"),
        pytest.param("https://169.254.169.254/latest/meta-data", id="link-local-metadata"),
        pytest.param("https://[fe80::1]/hook", id="link-local-v6"),
        pytest.param("https://[fd00::1]/hook", id="unique-local-v6"),
        pytest.param("https://[::ffff:127.0.0.1]/hook", id="v4-mapped-loopback"),
        pytest.param("https://0.0.0.0/hook", id="unspecified"),
        pytest.param("https://100.64.0.1/hook", id="carrier-grade-nat"),
        pytest.param("https://224.0.0.1/hook", id="multicast"),
        pytest.param("http://93.184.216.34/hook", id="plain-http-public"),
        pytest.param("ftp://93.184.216.34/hook", id="other-scheme"),
        pytest.param("https://user:pw@93.184.216.34/hook", id="user-info"),
        pytest.param("https:///hook", id="no-host"),
    ],
)
async def test_internal_or_unsafe_targets_are_refused(url: str) -> None:
    with pytest.raises(TargetRefusedError):
        await TargetPolicy().check(url)


async def test_a_public_https_address_is_accepted() -> None:
    target = await TargetPolicy().check("https://93.184.216.34:8443/hook")
    assert target.addresses == (ipaddress.ip_address("93.184.216.34"),)
    assert target.port == 8443


async def test_an_allowed_network_admits_loopback_and_http() -> None:
    target = await LOOPBACK_ALLOWED.check("http://127.0.0.1:9/hook")
    assert target.scheme == "http"
    with pytest.raises(TargetRefusedError):  # only the allowed network
        await LOOPBACK_ALLOWED.check("https://10.0.0.1/hook")
    with pytest.raises(TargetRefusedError):  # http stays refused elsewhere
        await LOOPBACK_ALLOWED.check("http://93.184.216.34/hook")
