"""Settings: frozen dataclasses per concern, read from config.toml and the environment.

Every default lives here and in config.toml. Loading is strict: an unknown
section or key, or a value of the wrong type, raises ConfigError naming it, so
a typo never silently falls back to a default.

Environment overrides use ``CSVCOMPRESS_<SECTION>_<KEY>`` (for example
``CSVCOMPRESS_SERVER_PORT=9000``); their values are parsed as TOML values, with a
bare word taken as a string.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csvcompress.errors import ConfigError

CONFIG_ENV = "CSVCOMPRESS_CONFIG"
ENV_PREFIX = "CSVCOMPRESS_"
DEFAULT_CONFIG_PATH = Path("config.toml")

MIB = 1024 * 1024
# Shortest API key accepted: a short one could be guessed over HTTP.
MIN_API_KEY_LENGTH = 16


def _cpu_count() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # Base of every absolute URL the service hands out; empty means http://host:port.
    public_url: str = ""
    # When set, upload and status need "Authorization: Bearer <api_key>".
    api_key: str = ""

    def validate(self) -> None:
        _check(0 <= self.port <= 65535, "server.port", "must be between 0 and 65535")
        if self.public_url:
            _check(
                self.public_url.startswith(("http://", "https://")),
                "server.public_url",
                "must start with http:// or https://",
            )
        if self.api_key:
            _check(
                len(self.api_key) >= MIN_API_KEY_LENGTH,
                "server.api_key",
                f"must be at least {MIN_API_KEY_LENGTH} characters (or empty for no key)",
            )
            _check(
                self.api_key.isascii() and self.api_key.isprintable() and " " not in self.api_key,
                "server.api_key",
                "must be printable ASCII without spaces",
            )

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class DatabaseSettings:
    # Single mode: the SQLite file (uploads/, outputs/ and generated secrets live beside it).
    path: str = "data/csvcompress.sqlite3"
    # Distributed mode: the PostgreSQL database holding the state and the queue.
    url: str = field(default="", repr=False)

    def validate(self) -> None:
        if self.url:
            _check(
                self.url.startswith(("postgresql://", "postgres://")),
                "database.url",
                "must start with postgresql://",
            )


CLUSTER_MODES = ("single", "distributed")
# api: the HTTP API only; worker: the queue's tasks only; all: both in one process.
CLUSTER_ROLES = ("api", "all")


@dataclass(frozen=True)
class ClusterSettings:
    # "single": one process, SQLite, an in-process queue (the default, nothing else to run).
    # "distributed": PostgreSQL holds the state and the queue; `worker` processes do the work.
    mode: str = "single"
    # Distributed mode: what `serve` runs. "api" does no image work; "all" also runs a worker.
    role: str = "api"
    # Distributed mode: images per queued job, and chunk jobs one worker runs at once.
    chunk_size: int = 32
    worker_jobs: int = 2
    # Seconds between a worker's heartbeats, and without one before its jobs are retried.
    heartbeat: float = 2.0
    stalled_after: float = 10.0
    # A chunk whose worker died this many times has its remaining images failed, so one
    # image that kills its worker cannot crash-loop the cluster.
    crash_retries: int = 3

    @property
    def distributed(self) -> bool:
        return self.mode == "distributed"

    def validate(self) -> None:
        _check(self.mode in CLUSTER_MODES, "cluster.mode", 'must be "single" or "distributed"')
        _check(self.role in CLUSTER_ROLES, "cluster.role", 'must be "api" or "all"')
        _check(self.chunk_size >= 1, "cluster.chunk_size", "must be at least 1")
        _check(self.worker_jobs >= 1, "cluster.worker_jobs", "must be at least 1")
        _check(self.heartbeat > 0, "cluster.heartbeat", "must be positive")
        _check(
            self.stalled_after > self.heartbeat,
            "cluster.stalled_after",
            "must be longer than cluster.heartbeat",
        )
        _check(self.crash_retries >= 0, "cluster.crash_retries", "must be 0 or more")


@dataclass(frozen=True)
class CloudinarySettings:
    # Empty keys come from $CLOUDINARY_URL (cloudinary://api_key:api_secret@cloud_name).
    cloud_name: str = ""
    api_key: str = ""
    api_secret: str = field(default="", repr=False)
    # Prepended to every public ID: <folder>/<request_id>/<row>-<position>.
    folder: str = "csvcompress"
    # Where the API lives; empty means https://api.cloudinary.com (tests point it at a fake).
    upload_prefix: str = ""
    # Uploads in flight at once, across all requests.
    concurrency: int = 8
    # Seconds one API call may take.
    timeout: float = 60.0
    # Tries per upload on connection errors, 5xx and 429, back-off doubling from `backoff`.
    attempts: int = 5
    backoff: float = 1.0

    def validate(self) -> None:
        if self.upload_prefix:
            _check(
                self.upload_prefix.startswith(("http://", "https://")),
                "storage.cloudinary.upload_prefix",
                "must start with http:// or https://",
            )
        _check(
            ".." not in self.folder.split("/"),
            "storage.cloudinary.folder",
            'must not contain ".."',
        )
        _check(self.concurrency >= 1, "storage.cloudinary.concurrency", "must be at least 1")
        _check(self.timeout > 0, "storage.cloudinary.timeout", "must be positive")
        _check(self.attempts >= 1, "storage.cloudinary.attempts", "must be at least 1")
        _check(self.backoff >= 0, "storage.cloudinary.backoff", "must be 0 or more")


@dataclass(frozen=True)
class S3Settings:
    # Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, never from here.
    bucket: str = ""
    # Empty means AWS itself; e.g. "http://127.0.0.1:8333" for SeaweedFS or MinIO.
    endpoint_url: str = ""
    region: str = "us-east-1"
    # Prepended to every key: <prefix>/<request_id>/<row>-<position>.<ext>.
    prefix: str = "csvcompress"
    # The base of the URLs handed out (a CDN or the bucket's public address);
    # empty means <endpoint_url>/<bucket>.
    public_url: str = ""

    def validate(self) -> None:
        for key, url in (("endpoint_url", self.endpoint_url), ("public_url", self.public_url)):
            if url:
                _check(
                    url.startswith(("http://", "https://")),
                    f"storage.s3.{key}",
                    "must start with http:// or https://",
                )
        _check(".." not in self.prefix.split("/"), "storage.s3.prefix", 'must not contain ".."')


STORAGE_BACKENDS = ("local", "cloudinary", "null", "s3")


@dataclass(frozen=True)
class StorageSettings:
    backend: str = "local"
    # Local backend: where output images and CSVs are kept and served from.
    dir: str = "data/storage"
    cloudinary: CloudinarySettings = field(default_factory=CloudinarySettings)
    s3: S3Settings = field(default_factory=S3Settings)

    def validate(self) -> None:
        _check(
            self.backend in STORAGE_BACKENDS,
            "storage.backend",
            'must be "local", "cloudinary", "s3" or "null"',
        )
        self.cloudinary.validate()
        self.s3.validate()
        if self.backend == "s3":
            _check(bool(self.s3.bucket), "storage.s3.bucket", 'is required with backend = "s3"')


OUTPUT_FORMATS = ("keep", "jpeg", "webp", "avif", "png")
# "pillow" is a reference point for `make bench`, not for production (see pillow_engine).
ENGINES = ("vips", "pillow")


@dataclass(frozen=True)
class ImageSettings:
    quality: int = 50
    # "keep" keeps each image's format where we can encode it; otherwise one for all.
    format: str = "keep"
    # width x height x frames above which an image is refused before decoding.
    max_pixels: int = 100_000_000
    max_frames: int = 500
    # 1.0 keeps dimensions; 0.5 halves width and height.
    scale: float = 1.0
    # JPEG encoder effort: optimised Huffman tables cost little and save bytes.
    optimize_coding: bool = True
    # What decodes and encodes: "vips", or "pillow" to benchmark against it.
    engine: str = "vips"

    def validate(self) -> None:
        _check(1 <= self.quality <= 100, "images.quality", "must be between 1 and 100")
        _check(self.engine in ENGINES, "images.engine", f"must be one of {ENGINES}")
        _check(self.format in OUTPUT_FORMATS, "images.format", f"must be one of {OUTPUT_FORMATS}")
        _check(self.max_pixels > 0, "images.max_pixels", "must be positive")
        _check(self.max_frames > 0, "images.max_frames", "must be positive")
        _check(0 < self.scale <= 1.0, "images.scale", "must be in (0, 1]")


@dataclass(frozen=True)
class FetchSettings:
    # Whole download, connect and between-bytes timeouts, in seconds.
    timeout: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    max_bytes: int = 50 * MIB
    max_redirects: int = 5
    # Downloads in flight at once, across all requests. 0 (the default): as many as the
    # compression threads need, by Little's law on measured times (pipeline/inflight.py);
    # a number fixes the count.
    concurrency: int = 0
    # The most downloads in flight when following the need; 0: 128 per CPU thread, at
    # most half the open-files limit.
    max_in_flight: int = 0
    # Connections to one origin host at once (politeness); 0: no cap of its own.
    per_host: int = 256
    # Bytes arriving or downloaded, held for compression; downloads wait above it (0: no limit).
    buffer_bytes: int = 24 * MIB
    # Tries per image for connection errors, 5xx and 429.
    attempts: int = 3
    # First back-off wait in seconds; doubles each try.
    backoff: float = 0.5
    user_agent: str = "csvcompress/0.1 (+image recompression service)"
    # CIDRs exempt from the network guard (e.g. "10.0.0.0/8" for a private origin).
    allowed_networks: tuple[str, ...] = ()
    # When non-empty, only these host names may be fetched.
    allowed_hosts: tuple[str, ...] = ()

    def validate(self) -> None:
        for name in ("timeout", "connect_timeout", "read_timeout"):
            _check(getattr(self, name) > 0, f"fetch.{name}", "must be positive")
        _check(self.max_bytes > 0, "fetch.max_bytes", "must be positive")
        _check(self.max_redirects >= 0, "fetch.max_redirects", "must be 0 or more")
        _check(self.concurrency >= 0, "fetch.concurrency", "must be 0 (follow the need) or more")
        _check(self.max_in_flight >= 0, "fetch.max_in_flight", "must be 0 (automatic) or more")
        _check(self.per_host >= 0, "fetch.per_host", "must be 0 (no cap) or more")
        _check(self.buffer_bytes >= 0, "fetch.buffer_bytes", "must be 0 or more")
        _check(self.attempts >= 1, "fetch.attempts", "must be at least 1")
        _check(self.backoff >= 0, "fetch.backoff", "must be 0 or more")
        for cidr in self.allowed_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"fetch.allowed_networks: {cidr!r} is not a network (CIDR)"
                ) from None


@dataclass(frozen=True)
class LimitSettings:
    max_upload_bytes: int = 64 * MIB
    max_rows: int = 250_000
    max_images: int = 1_000_000
    # How many problems a refused CSV lists at most.
    max_problems: int = 50
    # Seconds a client has to send a request's headers (from connecting, or from the end
    # of its previous request); also how long an idle kept-alive connection stays open.
    header_timeout: float = 15.0
    # Seconds an upload's whole body may take to arrive.
    upload_timeout: float = 600.0
    # Uploads being received at once; more answer 503 with Retry-After.
    max_uploads_in_progress: int = 16

    def validate(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_rows",
            "max_images",
            "max_problems",
            "header_timeout",
            "upload_timeout",
            "max_uploads_in_progress",
        ):
            _check(getattr(self, name) > 0, f"limits.{name}", "must be positive")


WEBHOOK_SECRET_PREFIX = "whsec_"
# Standard Webhooks: an HMAC key of 24 to 64 random bytes, base64-encoded after the prefix.
WEBHOOK_SECRET_BYTES = (24, 64)


def webhook_secret_problem(secret: str) -> str | None:
    """Why `secret` is not a usable whsec_ signing secret, or None when it is."""
    low, high = WEBHOOK_SECRET_BYTES
    expected = f'must be "{WEBHOOK_SECRET_PREFIX}" followed by base64 of {low} to {high} bytes'
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return expected
    encoded = secret[len(WEBHOOK_SECRET_PREFIX) :]
    try:
        # Padding may be left off, as the standardwebhooks libraries allow.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return f"{expected}; the part after the prefix is not base64"
    if not low <= len(key) <= high:
        return f"{expected}, not {len(key)}"
    return None


@dataclass(frozen=True)
class WebhookSettings:
    # A whsec_... secret; empty means one is generated and kept in the data directory.
    secret: str = ""
    timeout: float = 15.0
    # Seconds to wait before each attempt: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    retry_schedule: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)

    def validate(self) -> None:
        if self.secret:
            problem = webhook_secret_problem(self.secret)
            _check(problem is None, "webhook.secret", problem or "")
        _check(self.timeout > 0, "webhook.timeout", "must be positive")
        _check(len(self.retry_schedule) >= 1, "webhook.retry_schedule", "needs at least 1 entry")
        _check(
            all(s >= 0 for s in self.retry_schedule),
            "webhook.retry_schedule",
            "entries must be 0 or more",
        )


@dataclass(frozen=True)
class WorkerSettings:
    # Threads recompressing images; 0 means one per core.
    threads: int = 0
    # Seconds in-flight images may take to finish on SIGTERM.
    shutdown_grace: float = 30.0
    # Pixels decoded at once across all threads (0: no cap); bounds memory, see budget.py.
    pixel_budget: int = 25_000_000
    # Nice value of the recompression threads over the event loop's (Linux); 0: equal.
    nice: int = 10

    def validate(self) -> None:
        _check(self.threads >= 0, "workers.threads", "must be 0 or more")
        _check(self.pixel_budget >= 0, "workers.pixel_budget", "must be 0 or more")
        _check(0 <= self.nice <= 19, "workers.nice", "must be between 0 and 19")
        _check(self.shutdown_grace >= 0, "workers.shutdown_grace", "must be 0 or more")

    @property
    def thread_count(self) -> int:
        return self.threads or _cpu_count()


@dataclass(frozen=True)
class RetentionSettings:
    # Finished requests older than this many days are removed with their files; 0 keeps all.
    days: int = 30
    # Seconds between two sweeps for old requests.
    interval: float = 3600.0

    def validate(self) -> None:
        _check(self.days >= 0, "retention.days", "must be 0 or more")
        _check(self.interval > 0, "retention.interval", "must be positive")


@dataclass(frozen=True)
class OutputSettings:
    # Prefix a cell beginning with = + - @, a tab or a CR with ' (OWASP's advice against
    # CSV injection), so a spreadsheet shows it as text instead of running it as a formula.
    # Off: the output carries the user's data exactly.
    escape_formulas: bool = False


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    format: str = "text"

    def validate(self) -> None:
        _check(
            self.level in ("debug", "info", "warning", "error"),
            "log.level",
            "must be debug, info, warning or error",
        )
        _check(self.format in ("text", "json"), "log.format", 'must be "text" or "json"')


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    images: ImageSettings = field(default_factory=ImageSettings)
    fetch: FetchSettings = field(default_factory=FetchSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    log: LogSettings = field(default_factory=LogSettings)

    def validate(self) -> Settings:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            check = getattr(section, "validate", None)
            if check is not None:
                check()
        if self.cluster.distributed:
            _check(
                bool(self.database.url),
                "database.url",
                'is required with cluster.mode = "distributed"',
            )
            # Every process must reach the images: not a disk only one machine sees.
            _check(
                self.storage.backend in ("s3", "cloudinary"),
                "storage.backend",
                'must be "s3" or "cloudinary" with cluster.mode = "distributed"',
            )
            # The uploaded and output CSVs live in the bucket, whatever keeps the images.
            _check(
                bool(self.storage.s3.bucket),
                "storage.s3.bucket",
                'is required with cluster.mode = "distributed" (the CSVs are kept there)',
            )
            # Every process signs webhooks: one generated per data directory would differ.
            _check(
                bool(self.webhook.secret),
                "webhook.secret",
                'is required with cluster.mode = "distributed" (every process signs with it)',
            )
        return self

    @property
    def data_dir(self) -> Path:
        """Directory holding the database, uploads and generated secrets."""
        return Path(self.database.path).parent

    @property
    def uploads_dir(self) -> Path:
        """Directory holding the uploaded CSVs (and `*.csv.part` while one arrives)."""
        return self.data_dir / "uploads"

    @property
    def outputs_dir(self) -> Path:
        """Directory holding the output CSVs."""
        return self.data_dir / "outputs"

    @property
    def thumbnails_dir(self) -> Path:
        """Directory holding the request page's thumbnails, a folder per request."""
        return self.data_dir / "thumbnails"


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


# --- loading ------------------------------------------------------------------


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from a TOML file (if present) and the environment, then validate.

    `path` wins over $CSVCOMPRESS_CONFIG, which wins over ./config.toml. A path
    named explicitly must exist; the default one may be absent.
    """
    env = os.environ if environ is None else environ
    explicit = path if path is not None else env.get(CONFIG_ENV)
    config_path = Path(explicit) if explicit else DEFAULT_CONFIG_PATH
    raw: dict[str, Any] = {}
    if config_path.exists():
        try:
            raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    elif explicit:
        raise ConfigError(f"config file {config_path} does not exist")
    in_file = _keys(raw)
    from_env = _apply_env(raw, env)
    try:
        return settings_from_dict(raw)
    except ConfigError as exc:
        # Say where the bad setting was written: a variable of the shell, or the file.
        key = _key_named(exc.message)
        source = from_env.get(key) or (str(config_path) if key in in_file else None)
        raise ConfigError(f"{exc.message} (set in {source})" if source else exc.message) from None


def settings_from_dict(raw: Mapping[str, Any]) -> Settings:
    """Build validated Settings from a nested mapping shaped like config.toml."""
    settings = _build(Settings, raw, "")
    assert isinstance(settings, Settings)
    return settings.validate()


def replace_settings(settings: Settings, **sections: Mapping[str, Any]) -> Settings:
    """A copy of `settings` with some keys changed, e.g. images={"quality": 80}."""
    changed = {}
    for name, values in sections.items():
        section = getattr(settings, name)
        changed[name] = _replace(section, values)
    return dataclasses.replace(settings, **changed).validate()


def _replace(obj: Any, values: Mapping[str, Any]) -> Any:
    # Nested tables are merged, not swapped: storage={"cloudinary": {"folder": "x"}} works.
    changed = {}
    for name, value in values.items():
        current = getattr(obj, name)
        nested = dataclasses.is_dataclass(current) and isinstance(value, Mapping)
        changed[name] = _replace(current, value) if nested else value
    return dataclasses.replace(obj, **changed)


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Put the CSVCOMPRESS_<SECTION>_<KEY> variables into `raw`; return key -> variable."""
    sections = typing.get_type_hints(Settings)
    applied: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in sections or not key:
            continue
        hint = typing.get_type_hints(sections[section]).get(key)
        raw.setdefault(section, {})[key] = _parse_env_value(value, hint)
        applied[f"{section}.{key}"] = name
    return applied


def _parse_env_value(value: str, hint: Any) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if typing.get_origin(hint) is tuple:
        # A list is also accepted the way shells write one: 10.0.0.0/8,192.168.0.0/16.
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _keys(raw: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Every dotted key in a nested mapping, tables included."""
    keys = set()
    for name, value in raw.items():
        full = f"{prefix}{name}"
        keys.add(full)
        if isinstance(value, Mapping):
            keys |= _keys(value, f"{full}.")
    return keys


def _key_named(message: str) -> str:
    """The setting a ConfigError message is about ("server.port: ..." or "unknown setting: x")."""
    if message.startswith(_UNKNOWN):
        return message[len(_UNKNOWN) :].split(";", 1)[0]
    return message.split(":", 1)[0].split("[", 1)[0]


_UNKNOWN = "unknown setting: "


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "config"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        name = f"{prefix}{'.' if prefix else ''}{unknown[0]}"
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; {where} has {', '.join(fields)}"
        raise ConfigError(f"{_UNKNOWN}{name}{hint}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        values[key] = _coerce(hints[key], value, full)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, key)
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            example = value if isinstance(value, str) else "..."
            raise ConfigError(
                f'{key}: must be a list, not {value!r}: ["{example}"] in config.toml,'
                " or a comma-separated list in the environment"
            )
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported setting type")  # pragma: no cover
    scalar = _SCALARS.get(hint)
    if scalar is None:
        raise ConfigError(f"{key}: unsupported setting type")  # pragma: no cover
    accepts, expected, convert = scalar
    if not accepts(value):
        raise ConfigError(f"{key}: must be {expected}, not {value!r}")
    return convert(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# TOML type checks per Python type: (accepts, what to say when it does not, conversion).
_SCALARS: dict[Any, tuple[Callable[[Any], bool], str, Callable[[Any], Any]]] = {
    bool: (lambda v: isinstance(v, bool), "true or false", bool),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number", int),
    float: (_is_number, "a number", float),
    str: (lambda v: isinstance(v, str), "a string", str),
}
