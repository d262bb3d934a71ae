"""Settings from the environment and flags, and how the token key is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flowstate.server.config import ConfigError, ServerSettings, resolve_auth

SECRET = "s" * 48


def test_defaults() -> None:
    settings = ServerSettings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 50051)
    assert settings.database_url is None
    assert settings.embedded_database
    assert settings.migrate_on_start  # the embedded database is migrated at start
    assert settings.metrics_port is None
    assert settings.max_message_bytes == 4 * 1024 * 1024
    assert (settings.stuck_after, settings.stuck_check_interval) == (3600.0, 60.0)
    assert (settings.group_commit, settings.group_commit_max_batch) == (True, 64)


def test_environment_variables() -> None:
    settings = ServerSettings.from_env(
        {
            "FLOWSTATE_HOST": "0.0.0.0",
            "FLOWSTATE_PORT": "0",
            "FLOWSTATE_DATABASE_URL": "postgresql://db/flowstate",
            "FLOWSTATE_DATA_DIR": "/var/lib/flowstate",
            "FLOWSTATE_METRICS_PORT": "9100",
            "FLOWSTATE_LOG_FORMAT": "json",
            "FLOWSTATE_GRACE_PERIOD": "2.5",
            "FLOWSTATE_JWT_SECRET": SECRET,
            "FLOWSTATE_STUCK_AFTER": "7200",
            "FLOWSTATE_STUCK_CHECK_INTERVAL": "0",
            "FLOWSTATE_ARCHIVE_DIR": "/var/lib/flowstate/archive",
            "FLOWSTATE_ARCHIVE_INTERVAL": "600",
            "FLOWSTATE_RETENTION_DEFAULT_DAYS": "365",
            "FLOWSTATE_GROUP_COMMIT": "off",
            "FLOWSTATE_GROUP_COMMIT_MAX_BATCH": "8",
            "FLOWSTATE_GROUP_COMMIT_MAX_IN_FLIGHT": "4",
            "FLOWSTATE_TIMER_INTERVAL": "0.25",
            "FLOWSTATE_TIMER_BATCH": "500",
            "FLOWSTATE_TIMER_LEASE": "5",
            "FLOWSTATE_UNRELATED": "ignored",
        }
    )
    assert (settings.host, settings.port, settings.metrics_port) == ("0.0.0.0", 0, 9100)
    assert settings.data_dir == Path("/var/lib/flowstate")
    assert not settings.embedded_database
    assert not settings.migrate_on_start  # an external database is migrated explicitly
    assert (settings.log_format, settings.grace_period) == ("json", 2.5)
    assert (settings.stuck_after, settings.stuck_check_interval) == (7200.0, 0.0)
    assert settings.archive_dir == Path("/var/lib/flowstate/archive")
    assert (settings.archive_interval, settings.retention_default_days) == (600.0, 365)
    assert (settings.group_commit, settings.group_commit_max_batch) == (False, 8)
    assert settings.group_commit_max_in_flight == 4
    assert (settings.timer_interval, settings.timer_batch, settings.timer_lease) == (0.25, 500, 5.0)
    assert SECRET not in repr(settings)


def test_flags_override_the_environment() -> None:
    settings = ServerSettings.from_env({"FLOWSTATE_PORT": "7000"}).with_overrides(
        port=7001, host=None, migrate=False
    )
    assert (settings.port, settings.host, settings.migrate_on_start) == (7001, "127.0.0.1", False)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"FLOWSTATE_PORT": "http"},
            "FLOWSTATE_PORT must be an integer, not 'http'",
            id="port-not-a-number",
        ),
        pytest.param(
            {"FLOWSTATE_PORT": "70000"},
            "FLOWSTATE_PORT must be between 0 and 65535, not 70000",
            id="port-too-large",
        ),
        pytest.param(
            {"FLOWSTATE_METRICS_PORT": "-1"},
            "FLOWSTATE_METRICS_PORT must be between 0 and 65535, not -1",
            id="negative-metrics-port",
        ),
        pytest.param(
            {"FLOWSTATE_MIGRATE_ON_START": "maybe"},
            "FLOWSTATE_MIGRATE_ON_START must be true or false, not 'maybe'",
            id="bad-boolean",
        ),
        pytest.param(
            {"FLOWSTATE_LOG_FORMAT": "xml"},
            "log format must be one of text, json",
            id="unknown-log-format",
        ),
        pytest.param(
            {"FLOWSTATE_GRACE_PERIOD": "soon"},
            "FLOWSTATE_GRACE_PERIOD must be a number, not 'soon'",
            id="grace-not-a-number",
        ),
        pytest.param(
            {"FLOWSTATE_TLS_CERT_FILE": "/cert.pem"},
            "TLS needs both FLOWSTATE_TLS_CERT_FILE and FLOWSTATE_TLS_KEY_FILE",
            id="cert-without-key",
        ),
        pytest.param(
            {"FLOWSTATE_TLS_CLIENT_CA_FILE": "/ca.pem"},
            "mTLS (FLOWSTATE_TLS_CLIENT_CA_FILE) needs TLS certificate and key",
            id="mtls-without-tls",
        ),
        pytest.param(
            {"FLOWSTATE_JWT_SECRET": SECRET, "FLOWSTATE_JWT_SECRET_FILE": "/secret"},
            "configure exactly one of FLOWSTATE_JWT_SECRET, FLOWSTATE_JWT_SECRET_FILE and "
            "FLOWSTATE_JWT_PUBLIC_KEY_FILE",
            id="two-jwt-keys",
        ),
        pytest.param(
            {"FLOWSTATE_STUCK_AFTER": "0"},
            "FLOWSTATE_STUCK_AFTER must be > 0 seconds, not 0.0",
            id="stuck-after-zero",
        ),
        pytest.param(
            {"FLOWSTATE_STUCK_CHECK_INTERVAL": "-5"},
            "FLOWSTATE_STUCK_CHECK_INTERVAL must be >= 0, not '-5'",
            id="negative-stuck-check-interval",
        ),
        pytest.param(
            {"FLOWSTATE_RETENTION_DEFAULT_DAYS": "0"},
            "FLOWSTATE_RETENTION_DEFAULT_DAYS must be between 1 and 36500, not 0",
            id="retention-default-days-zero",
        ),
        pytest.param(
            {"FLOWSTATE_TIMER_BATCH": "0"},
            "FLOWSTATE_TIMER_BATCH must be between 1 and 10000, not 0",
            id="timer-batch-zero",
        ),
        pytest.param(
            {"FLOWSTATE_TIMER_LEASE": "0"},
            "FLOWSTATE_TIMER_LEASE must be > 0 seconds, not 0.0",
            id="timer-lease-zero",
        ),
        pytest.param(
            {"FLOWSTATE_TIMER_INTERVAL": "soon"},
            "FLOWSTATE_TIMER_INTERVAL must be a number, not 'soon'",
            id="timer-interval-not-a-number",
        ),
        pytest.param(
            {"FLOWSTATE_ARCHIVE_INTERVAL": "0"},
            "FLOWSTATE_ARCHIVE_INTERVAL must be > 0 seconds, not 0.0",
            id="archive-interval-zero",
        ),
        pytest.param(
            {"FLOWSTATE_ARCHIVE_DIR": "/a", "FLOWSTATE_ARCHIVE_URL": "s3://b/p"},
            "set FLOWSTATE_ARCHIVE_DIR or FLOWSTATE_ARCHIVE_URL, not both",
            id="archive-dir-and-url",
        ),
        pytest.param(
            {"FLOWSTATE_ARCHIVE_URL": "https://bucket/prefix"},
            "FLOWSTATE_ARCHIVE_URL must be an s3://bucket/prefix URL, not 'https://bucket/prefix'",
            id="archive-url-not-s3",
        ),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    """Each bad setting is refused for its own reason, named in the message."""
    with pytest.raises(ConfigError) as refused:
        ServerSettings.from_env(env)
    assert str(refused.value) == message


def test_dev_mode_with_the_embedded_database(tmp_path: Path) -> None:
    auth = resolve_auth(ServerSettings(data_dir=tmp_path))
    assert auth.source == "dev"
    assert (auth.issuer, auth.audience) == ("flowstate-dev", "flowstate")
    assert (tmp_path / "jwt-dev-secret").exists()
    assert resolve_auth(ServerSettings(data_dir=tmp_path)).key == auth.key


def test_an_external_database_needs_a_configured_key(tmp_path: Path) -> None:
    settings = ServerSettings(database_url="postgresql://db/x", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="no token verification configured"):
        resolve_auth(settings)
    assert not (tmp_path / "jwt-dev-secret").exists()
    assert resolve_auth(ServerSettings(**{**vars(settings), "dev_auth": True})).source == "dev"


def test_secret_and_secret_file(tmp_path: Path) -> None:
    by_env = resolve_auth(ServerSettings(jwt_secret=SECRET, jwt_issuer="idp"))
    assert (by_env.source, by_env.key.algorithm, by_env.issuer, by_env.audience) == (
        "secret",
        "HS256",
        "idp",
        None,
    )
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    by_file = resolve_auth(ServerSettings(jwt_secret_file=secret_file))
    assert by_file.source == "secret-file"
    assert by_file.key == by_env.key
    with pytest.raises(ConfigError, match="32 bytes"):
        resolve_auth(ServerSettings(jwt_secret="short"))
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_auth(ServerSettings(jwt_secret_file=tmp_path / "missing"))


def test_public_key_file(tmp_path: Path) -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    auth = resolve_auth(ServerSettings(jwt_public_key_file=key_file, jwt_audience="flowstate"))
    assert (auth.source, auth.key.algorithm, auth.audience) == ("public-key", "ES256", "flowstate")
    key_file.write_text("not a key")
    with pytest.raises(ConfigError, match="PEM"):
        resolve_auth(ServerSettings(jwt_public_key_file=key_file))


@pytest.mark.parametrize(
    "content",
    [
        b"not a key",
        b"-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
        b"\xff\xfe binary",
    ],
    ids=["text", "bad-base64-body", "binary"],
)
def test_a_bad_public_key_file_names_the_setting_and_the_file(
    tmp_path: Path, content: bytes
) -> None:
    key_file = tmp_path / "jwt-public.pem"
    key_file.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        resolve_auth(ServerSettings(jwt_public_key_file=key_file))
    message = str(caught.value)
    assert message.startswith(f"FLOWSTATE_JWT_PUBLIC_KEY_FILE {key_file} is not a usable")
    assert "PEM RSA or EC P-256 public key" in message


def test_a_public_key_of_another_kind_names_the_setting_and_the_file(tmp_path: Path) -> None:
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    key_file = tmp_path / "p384.pem"
    key_file.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match=r"^FLOWSTATE_JWT_PUBLIC_KEY_FILE .*p384\.pem"):
        resolve_auth(ServerSettings(jwt_public_key_file=key_file))


def test_a_short_secret_names_its_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^FLOWSTATE_JWT_SECRET: .*32 bytes"):
        resolve_auth(ServerSettings(jwt_secret="short"))
    secret_file = tmp_path / "short-secret"
    secret_file.write_text("short\n")
    with pytest.raises(ConfigError, match=r"^FLOWSTATE_JWT_SECRET_FILE .*short-secret: .*32 bytes"):
        resolve_auth(ServerSettings(jwt_secret_file=secret_file))
