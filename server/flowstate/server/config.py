"""Server settings: defaults < ``FLOWSTATE_*`` environment variables < command-line flags.

`ServerSettings.from_env` reads the environment; `with_overrides` applies the flags that were
given. `resolve_auth` turns the settings into the JWT key the server verifies with:

- ``FLOWSTATE_JWT_PUBLIC_KEY_FILE``: RS256 or ES256 (an RSA or EC P-256 PEM public key);
- ``FLOWSTATE_JWT_SECRET`` or ``FLOWSTATE_JWT_SECRET_FILE``: HS256 (at least 32 bytes);
- neither: **local dev mode**, allowed only with the embedded database (no
  ``FLOWSTATE_DATABASE_URL``) or with ``FLOWSTATE_DEV_AUTH=1``: a random secret created in the
  data directory (mode 0600), issuer ``flowstate-dev``, audience ``flowstate``.

The server never runs without checking credentials: with an external database and no key it
refuses to start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm

from flowstate.core.model import FlowStatus
from flowstate.core.rules import TERMINAL_STATUSES
from flowstate.server.auth import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    JwtKey,
    load_or_create_dev_secret,
)
from flowstate.server.logs import LOG_FORMATS
from flowstate.server.ratelimit import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_WAIT,
    Limit,
    check_max_wait,
    parse_limits,
    parse_max_wait,
)
from flowstate.server.tracing import TRACING_MODES
from flowstate.storage.embedded import default_data_dir
from flowstate.storage.store import (
    DEFAULT_GROUP_COMMIT_MAX_BATCH,
    DEFAULT_GROUP_COMMIT_MAX_IN_FLIGHT,
)

__all__ = [
    "DEFAULT_HTTP_PORT",
    "DEFAULT_PORT",
    "AuthConfig",
    "ConfigError",
    "ServerSettings",
    "resolve_auth",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 50051
DEFAULT_HTTP_PORT: Final = 8080
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


class ConfigError(ValueError):
    """A setting is missing, malformed or contradicts another one."""


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def _int(name: str, value: str, *, minimum: int = 0, maximum: int = 65535) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {value!r}") from None
    if not minimum <= number <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, not {number}")
    return number


def _float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if not number >= 0:
        raise ConfigError(f"{name} must be >= 0, not {value!r}")
    return number


def parse_http_port(value: str) -> int | None:
    """``FLOWSTATE_HTTP_PORT`` / ``--http-port``: a port, 0 for an ephemeral one, or ``off``."""
    if value.strip().lower() == "off":
        return None
    return _int("the HTTP port", value)


def parse_origins(value: str) -> tuple[str, ...]:
    """Comma-separated origins (``scheme://host[:port]``, no path), for CORS."""
    origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ConfigError(f"a CORS origin is scheme://host[:port], not {origin!r}")
    return origins


@dataclass(frozen=True)
class ServerSettings:
    """Everything `FlowstateServer.start` needs; each field has a ``FLOWSTATE_*`` variable."""

    host: str = DEFAULT_HOST
    """FLOWSTATE_HOST: the address to listen on."""
    port: int = DEFAULT_PORT
    """FLOWSTATE_PORT: the port (0: an ephemeral port, printed when serving)."""
    database_url: str | None = None
    """FLOWSTATE_DATABASE_URL: an external PostgreSQL; embedded PostgreSQL when unset."""
    data_dir: Path | None = None
    """FLOWSTATE_DATA_DIR: embedded PostgreSQL and the dev secret (platform default)."""
    migrate: bool | None = None
    """FLOWSTATE_MIGRATE_ON_START: migrate at start (default: only with the embedded DB)."""
    jwt_secret: str | None = field(default=None, repr=False)
    """FLOWSTATE_JWT_SECRET: HS256 secret (environment only: no flag, to keep it out of ps)."""
    jwt_secret_file: Path | None = None
    """FLOWSTATE_JWT_SECRET_FILE: file holding the HS256 secret."""
    jwt_public_key_file: Path | None = None
    """FLOWSTATE_JWT_PUBLIC_KEY_FILE: PEM public key for RS256 / ES256 tokens."""
    jwt_issuer: str | None = None
    """FLOWSTATE_JWT_ISSUER: required `iss` (dev mode: flowstate-dev)."""
    jwt_audience: str | None = None
    """FLOWSTATE_JWT_AUDIENCE: required `aud` (dev mode: flowstate)."""
    dev_auth: bool = False
    """FLOWSTATE_DEV_AUTH: allow the data-directory dev secret with an external database."""
    tls_cert_file: Path | None = None
    """FLOWSTATE_TLS_CERT_FILE: server certificate chain (PEM); TLS when set."""
    tls_key_file: Path | None = None
    """FLOWSTATE_TLS_KEY_FILE: server private key (PEM)."""
    tls_client_ca_file: Path | None = None
    """FLOWSTATE_TLS_CLIENT_CA_FILE: CA bundle for client certificates; mTLS when set."""
    http_port: int | None = DEFAULT_HTTP_PORT
    """FLOWSTATE_HTTP_PORT: Connect, gRPC-Web and the console (`server.web`; off: None / "off")."""
    http_host: str = DEFAULT_HOST
    """FLOWSTATE_HTTP_HOST: the HTTP port's address."""
    http_cors_origins: tuple[str, ...] = ()
    """FLOWSTATE_HTTP_CORS_ORIGINS: other origins allowed to call the HTTP port (comma-separated);
    none: same-origin only."""
    console_dir: Path | None = None
    """FLOWSTATE_CONSOLE_DIR: the built console (default: ``console/dist`` of the source tree)."""
    metrics_port: int | None = None
    """FLOWSTATE_METRICS_PORT: Prometheus endpoint port (off when unset; 0: ephemeral)."""
    metrics_host: str = DEFAULT_HOST
    """FLOWSTATE_METRICS_HOST: the metrics endpoint's address."""
    log_format: str = "text"
    """FLOWSTATE_LOG_FORMAT: text or json."""
    log_level: str = "INFO"
    """FLOWSTATE_LOG_LEVEL: DEBUG, INFO, WARNING, ERROR."""
    grace_period: float = 10.0
    """FLOWSTATE_GRACE_PERIOD: seconds in-flight RPCs get to finish on shutdown."""
    ready_file: Path | None = None
    """FLOWSTATE_READY_FILE: written with the listening address once serving."""
    heartbeat_interval: float = 15.0
    """FLOWSTATE_HEARTBEAT_INTERVAL: seconds between heartbeats on idle streams."""
    db_pool_size: int = 10
    """FLOWSTATE_DB_POOL_SIZE: most database connections the store holds (the hub adds 2)."""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """FLOWSTATE_WORKERS: server processes sharing the ports (``flowstate serve --workers``;
    default: the number of cores). More than one: a supervisor runs them (`cli.workers`)."""
    reuse_port: bool = False
    """FLOWSTATE_REUSE_PORT: bind the gRPC and HTTP ports with SO_REUSEPORT (set by the
    supervisor for its workers; off otherwise, so that a taken port is an error)."""
    group_commit: bool = True
    """FLOWSTATE_GROUP_COMMIT: concurrent mutations of one tenant share transactions
    (docs/performance.md, "Group commit"); off: one transaction per mutation."""
    group_commit_max_batch: int = DEFAULT_GROUP_COMMIT_MAX_BATCH
    """FLOWSTATE_GROUP_COMMIT_MAX_BATCH: most mutations one shared transaction holds."""
    group_commit_max_in_flight: int = DEFAULT_GROUP_COMMIT_MAX_IN_FLIGHT
    """FLOWSTATE_GROUP_COMMIT_MAX_IN_FLIGHT: most shared transactions of one tenant at once
    (each holds a pooled connection)."""
    tracing: str = "off"
    """FLOWSTATE_TRACING: OpenTelemetry tracing, off, otlp or console (`server.tracing`)."""
    stuck_after: float = 3600.0
    """FLOWSTATE_STUCK_AFTER: seconds without a change after which a live flow counts as stuck."""
    stuck_check_interval: float = 60.0
    """FLOWSTATE_STUCK_CHECK_INTERVAL: seconds between counts of stuck flows (metrics only; 0:
    never)."""
    timer_interval: float = 1.0
    """FLOWSTATE_TIMER_INTERVAL: seconds between rounds of the timer loop (docs/timers.md; 0:
    this server fires no timers, another replica must)."""
    timer_batch: int = 100
    """FLOWSTATE_TIMER_BATCH: most due timers one round claims (a full batch: the next round
    starts at once)."""
    timer_lease: float = 30.0
    """FLOWSTATE_TIMER_LEASE: seconds a claimed timer is reserved for its replica; a replica
    that dies holding claims delays those timers by at most this long."""
    bulk_interval: float = 1.0
    """FLOWSTATE_BULK_INTERVAL: seconds between looks for a bulk action to work on
    (docs/bulk-actions.md; 0: this server works on none, another replica must)."""
    bulk_rate: float = 100.0
    """FLOWSTATE_BULK_RATE: flows per second one server's bulk worker takes at most."""
    bulk_lease: float = 30.0
    """FLOWSTATE_BULK_LEASE: seconds a bulk action stays with a server that stopped renewing
    its lease (it renews with every flow) before another takes it over."""
    archive_dir: Path | None = None
    """FLOWSTATE_ARCHIVE_DIR: run the archiver (docs/retention.md) into this directory; off when
    unset (and FLOWSTATE_ARCHIVE_URL unset)."""
    archive_url: str | None = None
    """FLOWSTATE_ARCHIVE_URL: run the archiver into this S3-compatible ``s3://bucket/prefix``
    (boto3; credentials and endpoint from the AWS_* variables)."""
    archive_interval: float = 3600.0
    """FLOWSTATE_ARCHIVE_INTERVAL: seconds between archiver runs (when FLOWSTATE_ARCHIVE_DIR)."""
    retention_default_days: int | None = None
    """FLOWSTATE_RETENTION_DEFAULT_DAYS: retention of tenants without a policy (unset: keep)."""
    stuck_after_by_status: Mapping[FlowStatus, float] = field(default_factory=dict)
    """FLOWSTATE_STUCK_AFTER_BY_STATUS: per-status stuck thresholds overriding
    FLOWSTATE_STUCK_AFTER for STUCK alerts, e.g. ``waiting_approval=86400,paused=0`` (0: never
    stuck in that status)."""
    alert_check_interval: float = 10.0
    """FLOWSTATE_ALERT_CHECK_INTERVAL: seconds between scans for due alerts (deadlines, stuck
    flows; approval timeouts are timers: FLOWSTATE_TIMER_INTERVAL; 0: never)."""
    alert_batch_size: int = 100
    """FLOWSTATE_ALERT_BATCH_SIZE: most flows one alert scan decides."""
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest request or response message (4 MiB)."""
    rate_limits: Mapping[str, Limit] | None = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    """FLOWSTATE_RATE_LIMITS: per-tenant token buckets by RPC family (`server.ratelimit`;
    ``read=500:1000,write=200:400``; ``off``: None)."""
    rate_limit_max_wait: float = DEFAULT_MAX_WAIT
    """FLOWSTATE_RATE_LIMIT_MAX_WAIT: seconds a call that finds its bucket empty may wait for a
    reserved token before it is refused instead (`server.ratelimit`; 0: refuse at once)."""
    tenant_metrics_top_n: int = 20
    """FLOWSTATE_TENANT_METRICS_TOP_N: tenants with their own ``tenant`` metric label."""
    webhooks: bool = True
    """FLOWSTATE_WEBHOOKS: deliver webhooks from this replica (the RPCs work either way)."""
    webhook_allow_networks: tuple[str, ...] = ()
    """FLOWSTATE_WEBHOOK_ALLOW_NETWORKS: networks (CIDR, comma-separated) webhook URLs may reach
    although private or loopback, and over http (e.g. ``127.0.0.0/8`` in development)."""
    webhook_timeout: float = 10.0
    """FLOWSTATE_WEBHOOK_TIMEOUT: seconds one delivery request may take in total."""
    webhook_poll_interval: float = 1.0
    """FLOWSTATE_WEBHOOK_POLL_INTERVAL: seconds between lease renewals and idle log reads."""
    webhook_lease_seconds: float = 30.0
    """FLOWSTATE_WEBHOOK_LEASE_SECONDS: a replica's hold on a subscription without renewal."""
    webhook_failure_budget: int = 12
    """FLOWSTATE_WEBHOOK_FAILURE_BUDGET: consecutive failed attempts before disabling."""
    webhook_initial_backoff: float = 1.0
    """FLOWSTATE_WEBHOOK_INITIAL_BACKOFF: seconds before the first retry (doubling each time)."""
    webhook_max_backoff: float = 300.0
    """FLOWSTATE_WEBHOOK_MAX_BACKOFF: the longest wait between attempts."""
    webhook_max_concurrency: int = 32
    """FLOWSTATE_WEBHOOK_MAX_CONCURRENCY: delivery requests in flight at once per replica."""

    def stuck_thresholds(self) -> dict[FlowStatus, float]:
        """Seconds after which a flow in each live status is stuck (0: never), for alerts."""
        return {
            status: self.stuck_after_by_status.get(status, self.stuck_after)
            for status in FlowStatus
            if status not in TERMINAL_STATUSES
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerSettings:
        """Defaults overridden by the ``FLOWSTATE_*`` variables set (non-empty) in `env`."""
        values: dict[str, Any] = {}

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        text_fields = {
            "FLOWSTATE_HOST": "host",
            "FLOWSTATE_DATABASE_URL": "database_url",
            "FLOWSTATE_JWT_SECRET": "jwt_secret",
            "FLOWSTATE_JWT_ISSUER": "jwt_issuer",
            "FLOWSTATE_JWT_AUDIENCE": "jwt_audience",
            "FLOWSTATE_METRICS_HOST": "metrics_host",
            "FLOWSTATE_HTTP_HOST": "http_host",
            "FLOWSTATE_LOG_FORMAT": "log_format",
            "FLOWSTATE_LOG_LEVEL": "log_level",
            "FLOWSTATE_TRACING": "tracing",
            "FLOWSTATE_ARCHIVE_URL": "archive_url",
        }
        path_fields = {
            "FLOWSTATE_DATA_DIR": "data_dir",
            "FLOWSTATE_JWT_SECRET_FILE": "jwt_secret_file",
            "FLOWSTATE_JWT_PUBLIC_KEY_FILE": "jwt_public_key_file",
            "FLOWSTATE_TLS_CERT_FILE": "tls_cert_file",
            "FLOWSTATE_TLS_KEY_FILE": "tls_key_file",
            "FLOWSTATE_TLS_CLIENT_CA_FILE": "tls_client_ca_file",
            "FLOWSTATE_READY_FILE": "ready_file",
            "FLOWSTATE_CONSOLE_DIR": "console_dir",
            "FLOWSTATE_ARCHIVE_DIR": "archive_dir",
        }
        for name, attribute in text_fields.items():
            if (value := get(name)) is not None:
                values[attribute] = value
        for name, attribute in path_fields.items():
            if (value := get(name)) is not None:
                values[attribute] = Path(value).expanduser()
        if (value := get("FLOWSTATE_PORT")) is not None:
            values["port"] = _int("FLOWSTATE_PORT", value)
        if (value := get("FLOWSTATE_METRICS_PORT")) is not None:
            values["metrics_port"] = _int("FLOWSTATE_METRICS_PORT", value)
        if (value := get("FLOWSTATE_HTTP_PORT")) is not None:
            values["http_port"] = parse_http_port(value)
        if (value := get("FLOWSTATE_HTTP_CORS_ORIGINS")) is not None:
            values["http_cors_origins"] = parse_origins(value)
        if (value := get("FLOWSTATE_MIGRATE_ON_START")) is not None:
            values["migrate"] = _bool("FLOWSTATE_MIGRATE_ON_START", value)
        if (value := get("FLOWSTATE_DEV_AUTH")) is not None:
            values["dev_auth"] = _bool("FLOWSTATE_DEV_AUTH", value)
        if (value := get("FLOWSTATE_GRACE_PERIOD")) is not None:
            values["grace_period"] = _float("FLOWSTATE_GRACE_PERIOD", value)
        if (value := get("FLOWSTATE_HEARTBEAT_INTERVAL")) is not None:
            values["heartbeat_interval"] = _float("FLOWSTATE_HEARTBEAT_INTERVAL", value)
        if (value := get("FLOWSTATE_STUCK_AFTER")) is not None:
            values["stuck_after"] = _float("FLOWSTATE_STUCK_AFTER", value)
        if (value := get("FLOWSTATE_STUCK_CHECK_INTERVAL")) is not None:
            values["stuck_check_interval"] = _float("FLOWSTATE_STUCK_CHECK_INTERVAL", value)
        if (value := get("FLOWSTATE_TIMER_INTERVAL")) is not None:
            values["timer_interval"] = _float("FLOWSTATE_TIMER_INTERVAL", value)
        if (value := get("FLOWSTATE_TIMER_BATCH")) is not None:
            values["timer_batch"] = _int("FLOWSTATE_TIMER_BATCH", value, minimum=1, maximum=10000)
        if (value := get("FLOWSTATE_TIMER_LEASE")) is not None:
            values["timer_lease"] = _float("FLOWSTATE_TIMER_LEASE", value)
        if (value := get("FLOWSTATE_BULK_INTERVAL")) is not None:
            values["bulk_interval"] = _float("FLOWSTATE_BULK_INTERVAL", value)
        if (value := get("FLOWSTATE_BULK_RATE")) is not None:
            values["bulk_rate"] = _float("FLOWSTATE_BULK_RATE", value)
        if (value := get("FLOWSTATE_BULK_LEASE")) is not None:
            values["bulk_lease"] = _float("FLOWSTATE_BULK_LEASE", value)
        if (value := get("FLOWSTATE_ARCHIVE_INTERVAL")) is not None:
            values["archive_interval"] = _float("FLOWSTATE_ARCHIVE_INTERVAL", value)
        if (value := get("FLOWSTATE_RETENTION_DEFAULT_DAYS")) is not None:
            values["retention_default_days"] = _int(
                "FLOWSTATE_RETENTION_DEFAULT_DAYS", value, minimum=1, maximum=36500
            )
        if (value := get("FLOWSTATE_RATE_LIMITS")) is not None:
            try:
                values["rate_limits"] = parse_limits(value)
            except ValueError as exc:
                raise ConfigError(f"FLOWSTATE_RATE_LIMITS: {exc}") from None
        if (value := get("FLOWSTATE_RATE_LIMIT_MAX_WAIT")) is not None:
            try:
                values["rate_limit_max_wait"] = parse_max_wait(value)
            except ValueError as exc:
                raise ConfigError(f"FLOWSTATE_RATE_LIMIT_MAX_WAIT: {exc}") from None
        if (value := get("FLOWSTATE_TENANT_METRICS_TOP_N")) is not None:
            values["tenant_metrics_top_n"] = _int(
                "FLOWSTATE_TENANT_METRICS_TOP_N", value, minimum=0, maximum=1000
            )
        if (value := get("FLOWSTATE_WEBHOOKS")) is not None:
            values["webhooks"] = _bool("FLOWSTATE_WEBHOOKS", value)
        if (value := get("FLOWSTATE_WEBHOOK_ALLOW_NETWORKS")) is not None:
            values["webhook_allow_networks"] = tuple(
                n.strip() for n in value.split(",") if n.strip()
            )
        for name, attribute in (
            ("FLOWSTATE_WEBHOOK_TIMEOUT", "webhook_timeout"),
            ("FLOWSTATE_WEBHOOK_POLL_INTERVAL", "webhook_poll_interval"),
            ("FLOWSTATE_WEBHOOK_LEASE_SECONDS", "webhook_lease_seconds"),
            ("FLOWSTATE_WEBHOOK_INITIAL_BACKOFF", "webhook_initial_backoff"),
            ("FLOWSTATE_WEBHOOK_MAX_BACKOFF", "webhook_max_backoff"),
        ):
            if (value := get(name)) is not None:
                values[attribute] = _float(name, value)
        if (value := get("FLOWSTATE_WEBHOOK_FAILURE_BUDGET")) is not None:
            values["webhook_failure_budget"] = _int(
                "FLOWSTATE_WEBHOOK_FAILURE_BUDGET", value, minimum=1, maximum=1000
            )
        if (value := get("FLOWSTATE_WEBHOOK_MAX_CONCURRENCY")) is not None:
            values["webhook_max_concurrency"] = _int(
                "FLOWSTATE_WEBHOOK_MAX_CONCURRENCY", value, minimum=1, maximum=10_000
            )
        if (value := get("FLOWSTATE_STUCK_AFTER_BY_STATUS")) is not None:
            values["stuck_after_by_status"] = parse_stuck_after_by_status(value)
        if (value := get("FLOWSTATE_ALERT_CHECK_INTERVAL")) is not None:
            values["alert_check_interval"] = _float("FLOWSTATE_ALERT_CHECK_INTERVAL", value)
        if (value := get("FLOWSTATE_ALERT_BATCH_SIZE")) is not None:
            values["alert_batch_size"] = _int(
                "FLOWSTATE_ALERT_BATCH_SIZE", value, minimum=1, maximum=10000
            )
        if (value := get("FLOWSTATE_DB_POOL_SIZE")) is not None:
            values["db_pool_size"] = _int("FLOWSTATE_DB_POOL_SIZE", value, minimum=1, maximum=1000)
        if (value := get("FLOWSTATE_WORKERS")) is not None:
            values["workers"] = _int("FLOWSTATE_WORKERS", value, minimum=1, maximum=1024)
        if (value := get("FLOWSTATE_REUSE_PORT")) is not None:
            values["reuse_port"] = _bool("FLOWSTATE_REUSE_PORT", value)
        if (value := get("FLOWSTATE_GROUP_COMMIT")) is not None:
            values["group_commit"] = _bool("FLOWSTATE_GROUP_COMMIT", value)
        if (value := get("FLOWSTATE_GROUP_COMMIT_MAX_IN_FLIGHT")) is not None:
            values["group_commit_max_in_flight"] = _int(
                "FLOWSTATE_GROUP_COMMIT_MAX_IN_FLIGHT", value, minimum=1, maximum=1000
            )
        if (value := get("FLOWSTATE_GROUP_COMMIT_MAX_BATCH")) is not None:
            values["group_commit_max_batch"] = _int(
                "FLOWSTATE_GROUP_COMMIT_MAX_BATCH", value, minimum=1, maximum=1000
            )
        return cls(**values).checked()

    def with_overrides(self, **overrides: Any) -> ServerSettings:
        """A copy with every override that is not None applied (command-line flags)."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **given).checked()

    def checked(self) -> ServerSettings:
        """Self, after refusing contradictory or out-of-range settings (ConfigError)."""
        try:
            check_max_wait(self.rate_limit_max_wait)
        except ValueError as exc:
            raise ConfigError(f"FLOWSTATE_RATE_LIMIT_MAX_WAIT: {exc}") from None
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log format must be one of {', '.join(LOG_FORMATS)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, not {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics port must be between 0 and 65535, not {self.metrics_port}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigError(f"HTTP port must be between 0 and 65535, not {self.http_port}")
        if not 1 <= self.workers <= 1024:
            raise ConfigError(f"workers must be between 1 and 1024, not {self.workers}")
        if self.tracing not in TRACING_MODES:
            raise ConfigError(f"FLOWSTATE_TRACING must be one of {', '.join(TRACING_MODES)}")
        if not self.stuck_after > 0:
            raise ConfigError(f"FLOWSTATE_STUCK_AFTER must be > 0 seconds, not {self.stuck_after}")
        if not self.stuck_check_interval >= 0:
            raise ConfigError(
                f"FLOWSTATE_STUCK_CHECK_INTERVAL must be >= 0, not {self.stuck_check_interval}"
            )
        if not self.timer_interval >= 0:
            raise ConfigError(f"FLOWSTATE_TIMER_INTERVAL must be >= 0, not {self.timer_interval}")
        if not 1 <= self.timer_batch <= 10000:
            raise ConfigError(
                f"FLOWSTATE_TIMER_BATCH must be between 1 and 10000, not {self.timer_batch}"
            )
        if not self.timer_lease > 0:
            raise ConfigError(f"FLOWSTATE_TIMER_LEASE must be > 0 seconds, not {self.timer_lease}")
        if self.archive_dir is not None and self.archive_url is not None:
            raise ConfigError("set FLOWSTATE_ARCHIVE_DIR or FLOWSTATE_ARCHIVE_URL, not both")
        if self.archive_url is not None and not self.archive_url.startswith("s3://"):
            raise ConfigError(
                f"FLOWSTATE_ARCHIVE_URL must be an s3://bucket/prefix URL, not {self.archive_url!r}"
            )
        if not self.bulk_interval >= 0:
            raise ConfigError(f"FLOWSTATE_BULK_INTERVAL must be >= 0, not {self.bulk_interval}")
        if not self.bulk_rate > 0:
            raise ConfigError(f"FLOWSTATE_BULK_RATE must be > 0 flows/s, not {self.bulk_rate}")
        if not self.bulk_lease > 0:
            raise ConfigError(f"FLOWSTATE_BULK_LEASE must be > 0 seconds, not {self.bulk_lease}")
        if not self.archive_interval > 0:
            raise ConfigError(
                f"FLOWSTATE_ARCHIVE_INTERVAL must be > 0 seconds, not {self.archive_interval}"
            )
        for network in self.webhook_allow_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(
                    f"FLOWSTATE_WEBHOOK_ALLOW_NETWORKS: {network!r} is not a network (CIDR)"
                ) from None
        if not self.webhook_timeout > 0 or not self.webhook_poll_interval > 0:
            raise ConfigError("FLOWSTATE_WEBHOOK_TIMEOUT and _POLL_INTERVAL must be > 0")
        if not self.webhook_lease_seconds >= 3 * self.webhook_poll_interval:
            raise ConfigError(
                "FLOWSTATE_WEBHOOK_LEASE_SECONDS must be at least 3 poll intervals "
                f"({3 * self.webhook_poll_interval:g} s), so that leases are renewed in time"
            )
        if not self.alert_check_interval >= 0:
            raise ConfigError(
                f"FLOWSTATE_ALERT_CHECK_INTERVAL must be >= 0, not {self.alert_check_interval}"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("TLS needs both FLOWSTATE_TLS_CERT_FILE and FLOWSTATE_TLS_KEY_FILE")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("mTLS (FLOWSTATE_TLS_CLIENT_CA_FILE) needs TLS certificate and key")
        secrets_given = sum(
            x is not None for x in (self.jwt_secret, self.jwt_secret_file, self.jwt_public_key_file)
        )
        if secrets_given > 1:
            raise ConfigError(
                "configure exactly one of FLOWSTATE_JWT_SECRET, FLOWSTATE_JWT_SECRET_FILE "
                "and FLOWSTATE_JWT_PUBLIC_KEY_FILE"
            )
        return self

    @property
    def resolved_data_dir(self) -> Path:
        """The data directory: the setting, else the platform default."""
        return self.data_dir if self.data_dir is not None else default_data_dir({})

    @property
    def archive_target(self) -> str | None:
        """Where the server's archiver writes (a directory or an s3:// URL); None: it is off."""
        if self.archive_url is not None:
            return self.archive_url
        return None if self.archive_dir is None else str(self.archive_dir)

    @property
    def embedded_database(self) -> bool:
        """Whether the server runs its own (embedded) PostgreSQL."""
        return self.database_url is None

    @property
    def migrate_on_start(self) -> bool:
        """Whether to migrate at start: the setting, else only with the embedded database."""
        return self.migrate if self.migrate is not None else self.embedded_database


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """The key tokens are verified with, the claims checked, and where it came from."""

    key: JwtKey
    issuer: str | None
    audience: str | None
    source: str
    """``public-key``, ``secret``, ``secret-file`` or ``dev`` (for the start-up log)."""


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _public_key(path: Path) -> JwtKey:
    """The key of FLOWSTATE_JWT_PUBLIC_KEY_FILE; ConfigError naming the setting and the file."""
    _read_file(path, "JWT public key file")
    try:
        return JwtKey.from_public_key_file(path)
    except (ValueError, UnsupportedAlgorithm) as exc:
        # cryptography's own text ("Could not deserialize key data...") names neither.
        raise ConfigError(
            f"FLOWSTATE_JWT_PUBLIC_KEY_FILE {path} is not a usable JWT public key (a PEM RSA or "
            f"EC P-256 public key is expected): {exc}"
        ) from None


def resolve_auth(settings: ServerSettings) -> AuthConfig:
    """The JWT verification of `settings` (see the module docstring); ConfigError if none."""
    if settings.jwt_public_key_file is not None:
        key = _public_key(settings.jwt_public_key_file)
        return AuthConfig(key, settings.jwt_issuer, settings.jwt_audience, "public-key")
    try:
        if settings.jwt_secret is not None:
            key = JwtKey.hs256(settings.jwt_secret.encode())
            return AuthConfig(key, settings.jwt_issuer, settings.jwt_audience, "secret")
    except ValueError as exc:
        raise ConfigError(f"FLOWSTATE_JWT_SECRET: {exc}") from None
    if settings.jwt_secret_file is not None:
        path = settings.jwt_secret_file
        secret = _read_file(path, "JWT secret file").strip()
        try:
            key = JwtKey.hs256(secret)
        except ValueError as exc:
            raise ConfigError(f"FLOWSTATE_JWT_SECRET_FILE {path}: {exc}") from None
        return AuthConfig(key, settings.jwt_issuer, settings.jwt_audience, "secret-file")
    if not (settings.embedded_database or settings.dev_auth):
        raise ConfigError(
            "no token verification configured: set FLOWSTATE_JWT_SECRET, "
            "FLOWSTATE_JWT_SECRET_FILE or FLOWSTATE_JWT_PUBLIC_KEY_FILE (or FLOWSTATE_DEV_AUTH=1 "
            "to use the data directory's dev secret with an external database)"
        )
    secret = load_or_create_dev_secret(settings.resolved_data_dir)
    return AuthConfig(
        JwtKey.hs256(secret),
        settings.jwt_issuer or DEV_ISSUER,
        settings.jwt_audience or DEV_AUDIENCE,
        "dev",
    )


def parse_stuck_after_by_status(value: str) -> dict[FlowStatus, float]:
    """``status=seconds,...`` (statuses by value or name, any case); ConfigError when bad."""
    thresholds: dict[FlowStatus, float] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, seconds = item.partition("=")
        key = name.strip().lower().removeprefix("flow_status_")
        try:
            status = FlowStatus(key)
        except ValueError:
            raise ConfigError(
                f"FLOWSTATE_STUCK_AFTER_BY_STATUS: unknown status {name.strip()!r}"
            ) from None
        if not sep or status in TERMINAL_STATUSES:
            raise ConfigError(
                f"FLOWSTATE_STUCK_AFTER_BY_STATUS: expected live_status=seconds, not {item!r}"
            )
        number = _float("FLOWSTATE_STUCK_AFTER_BY_STATUS", seconds.strip())
        if not number >= 0:
            raise ConfigError(f"FLOWSTATE_STUCK_AFTER_BY_STATUS: {item!r} must be >= 0 seconds")
        thresholds[status] = number
    return thresholds
