"""The typed configuration tree: built once from YAML + CLI overrides, frozen, passed down.

Every section is a frozen dataclass; `load_config()` is the only way to build one from a
file and it rejects unknown keys, wrong types and bad enum values with a `ConfigError`
naming the file and the dotted key. Nothing else in the package reads configuration files.

Field metadata:
    help      one line, used by docs/configuration.md and the example file test
    reload    True when SIGHUP may apply a new value without a restart
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, cast, get_args, get_origin, get_type_hints

import yaml

from pacs_server.errors import ConfigError
from pacs_server.identity import NODE_NAME

Naming = Literal["hierarchical", "flat", "date"]
DuplicatePolicy = Literal["reject", "replace", "ignore"]
LogLevel = Literal["debug", "info", "warning", "error"]
Synchronous = Literal["full", "normal"]
TlsVersion = Literal["1.2", "1.3"]
Transport = Literal["events", "stock"]

# Other spellings users write for an enum value, accepted as the value itself.
_SPELLINGS: dict[str, str] = {"date-based": "date"}
# Top-level keys of the files users have, and the keys of the schema they stand for
# (store_scp's files list `accepted_sop_classes` at the top level).
TOP_LEVEL_ALIASES: dict[str, str] = {"accepted_sop_classes": "storage.accepted_sop_classes"}


def setting(default: Any, help: str, reload: bool = False) -> Any:
    """A config field with its one line of help and whether SIGHUP may change it."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default),
                     metadata={"help": help, "reload": reload})
    return field(default=default, metadata={"help": help, "reload": reload})


@dataclass(frozen=True)
class ServerConfig:
    ae_title: str = setting("PACS", "AE title of this server (1-16 characters, no backslash)")
    node_name: str = setting(
        "", "this node among the nodes sharing one index and archive; empty = host name")
    host: str = setting("0.0.0.0", "address to listen on")
    port: int = setting(
        11112, "DICOM port; 0 binds an ephemeral port (logged at start); -1 = no plain listener")
    max_associations: int = setting(
        50, "simultaneous associations; more are rejected (A-ASSOCIATE-RJ)")
    idle_timeout: float = setting(60.0, "seconds of silence before an association is aborted")
    max_pdu_size: int = setting(131072, "largest P-DATA PDU we accept, in bytes; 0 = unlimited")
    require_called_ae_title: bool = setting(
        False, "reject associations whose called AE is not ae_title")
    shutdown_grace: float = setting(
        10.0, "seconds SIGTERM waits for associations before aborting them")
    acse_timeout: float = setting(30.0, "seconds to wait for association negotiation messages")
    dimse_timeout: float = setting(60.0, "seconds to wait for a DIMSE message from the peer")
    negotiation_timeout: float = setting(
        5.0, "seconds a new connection has for its TLS handshake and A-ASSOCIATE-RQ", reload=True)
    transport: Transport = setting(
        "events", "association reactors: events (wait on the socket and queues) | stock "
        "(pynetdicom's own polling reactors)")
    workers: str = setting(
        "1", "DICOM worker processes: 1 = one process; N; auto = the CPUs this process may "
        "use (os.sched_getaffinity)")

    @property
    def worker_count(self) -> int:
        """How many worker processes `workers` asks for (1: the single-process server)."""
        if self.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return int(self.workers)

    def check(self, source: str) -> None:
        check_ae_title(source, "server.ae_title", self.ae_title)
        if self.node_name and not NODE_NAME.match(self.node_name):
            raise ConfigError(f"{source}: server.node_name: 1-63 letters, digits, '.', '_' "
                              f"or '-', starting with a letter or digit, got {self.node_name!r}")
        if not -1 <= self.port <= 65535:
            raise ConfigError(f"{source}: server.port: must be -1 (off) or 0-65535, "
                              f"got {self.port}")
        if self.max_associations < 1:
            raise ConfigError(f"{source}: server.max_associations: must be at least 1")
        if self.max_pdu_size != 0 and self.max_pdu_size < 4096:
            raise ConfigError(f"{source}: server.max_pdu_size: must be 0 (unlimited) or >= 4096")
        for key in ("idle_timeout", "acse_timeout", "dimse_timeout", "negotiation_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: server.{key}: must be greater than 0")
        if self.shutdown_grace < 0:
            raise ConfigError(f"{source}: server.shutdown_grace: must not be negative")
        count = self.workers
        if count != "auto" and not (count.isdigit() and 1 <= int(count) <= 256):
            raise ConfigError(f"{source}: server.workers: must be auto or 1-256, "
                              f"got {self.workers!r}")


@dataclass(frozen=True)
class StorageConfig:
    directory: str = setting("./archive", "root of the file archive")
    naming: Naming = setting("hierarchical", "file layout: hierarchical | flat | date")
    duplicate_policy: DuplicatePolicy = setting(
        "reject", "same SOP Instance UID received again: reject | replace | ignore", reload=True)
    accepted_sop_classes: list[str] = setting(
        [], "empty = every Storage SOP class; else modality codes, names or UIDs")
    fsync: bool = setting(True, "fsync each file and its directory before acknowledging a C-STORE")
    min_free_bytes: int = setting(
        0, "free space the archive filesystem keeps; below it C-STORE answers 0xA700; 0 = off",
        reload=True)

    def check(self, source: str) -> None:
        if not self.directory:
            raise ConfigError(f"{source}: storage.directory: must not be empty")
        if self.min_free_bytes < 0:
            raise ConfigError(f"{source}: storage.min_free_bytes: must not be negative")
        # Resolving SOP class entries needs the UID dictionary; imported here to keep
        # config free of DICOM knowledge everywhere else.
        from pacs_server.sop_classes import resolve_storage_classes

        try:
            resolve_storage_classes(self.accepted_sop_classes)
        except ValueError as exc:
            raise ConfigError(f"{source}: storage.accepted_sop_classes: {exc}") from None


@dataclass(frozen=True)
class DatabaseConfig:
    path: str = setting("./pacs.db", "SQLite index file (ignored when url is set)")
    url: str = setting("", "SQLAlchemy async URL, e.g. postgresql+asyncpg://user@host/db")
    wal_mode: bool = setting(True, "SQLite write-ahead log (concurrent readers during writes)")
    synchronous: Synchronous = setting("full", "SQLite synchronous pragma: full (durable) | normal")
    commit_batch: int = setting(256, "most index writes grouped into one transaction")

    def check(self, source: str) -> None:
        if not self.url and not self.path:
            raise ConfigError(f"{source}: database.path: must not be empty (or set database.url)")
        if self.commit_batch < 1:
            raise ConfigError(f"{source}: database.commit_batch: must be at least 1")


@dataclass(frozen=True)
class LoggingConfig:
    level: LogLevel = setting("info", "debug | info | warning | error", reload=True)
    file: str = setting("./logs/pacs.log", "JSON-lines log file; empty = console only")
    json_console: bool = setting(False, "JSON on the console too (always JSON when not a terminal)")
    audit_file: str = setting("", "JSON-lines audit trail (PS3.15 A.5 events); empty = off",
                              reload=True)


@dataclass(frozen=True)
class AllowedAE:
    """One `allowed_ae_titles` entry in its mapping form."""

    ae_title: str = setting("", "the calling AE title")
    hosts: list[str] = setting([], "addresses or networks it may come from; empty = any")
    tls: bool = setting(False, "it must come over TLS")

    def check(self, source: str, key: str) -> None:
        check_ae_title(source, f"{key}.ae_title", self.ae_title)
        for i, host in enumerate(self.hosts):
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ConfigError(f"{source}: {key}.hosts[{i}]: {host!r} is not an IP address "
                                  "or network (e.g. 10.0.0.5, 10.1.0.0/16)") from None


@dataclass(frozen=True)
class AccessControlConfig:
    allowed_ae_titles: list[str | AllowedAE] = setting(
        ["*"], '"*" = any calling AE, else titles or {ae_title, hosts, tls} entries',
        reload=True)
    require_tls: bool = setting(
        False, "every calling AE must come over TLS (plain associations are rejected)",
        reload=True)

    def check(self, source: str) -> None:
        seen: set[str] = set()
        for i, entry in enumerate(self.allowed_ae_titles):
            key = f"access_control.allowed_ae_titles[{i}]"
            if isinstance(entry, AllowedAE):
                entry.check(source, key)
                title = entry.ae_title
            elif entry == "*":
                continue
            else:
                check_ae_title(source, key, entry)
                title = entry
            if title.strip() in seen:
                raise ConfigError(f"{source}: {key}: {title!r} listed twice")
            seen.add(title.strip())


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = setting(False, "run the DICOM TLS listener (PS3.15 B.9 / BCP 195)")
    port: int = setting(2762, "DICOM TLS port (2762 is registered for DICOM TLS); 0 = ephemeral")
    cert_path: str = setting("", "PEM certificate chain of this server", reload=True)
    key_path: str = setting("", "PEM private key of cert_path (unencrypted)", reload=True)
    ca_path: str = setting(
        "", "PEM CA bundle; when set, clients must present a certificate it signed (mutual "
        "TLS), and peers marked tls are verified with it", reload=True)
    min_version: str = setting("1.2", "lowest TLS version accepted: 1.2 | 1.3", reload=True)
    ciphers: str = setting(
        "", "OpenSSL cipher list for TLS 1.2; empty = the BCP 195 set (ECDHE/DHE + AES-GCM "
        "or ChaCha20)", reload=True)

    def check(self, source: str) -> None:
        if self.min_version not in get_args(TlsVersion):
            raise ConfigError(f"{source}: tls.min_version: must be 1.2 or 1.3, "
                              f"got {self.min_version!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{source}: tls.port: must be 0-65535, got {self.port}")
        if self.enabled:
            for key in ("cert_path", "key_path"):
                if not getattr(self, key):
                    raise ConfigError(f"{source}: tls.{key}: required when tls.enabled is true")


@dataclass(frozen=True)
class LimitsConfig:
    associations_per_minute_per_ae: int = setting(
        1200, "new associations a calling AE may open per minute (token bucket); 0 = no limit",
        reload=True)
    associations_per_minute_per_address: int = setting(
        2400, "new associations one source address may open per minute; 0 = no limit",
        reload=True)
    concurrent_per_ae: int = setting(
        0, "associations one calling AE may hold at once; 0 = server.max_associations",
        reload=True)
    concurrent_per_address: int = setting(
        0, "associations one source address may hold at once; 0 = server.max_associations",
        reload=True)
    unassociated_per_address: int = setting(
        32, "connections one address may hold before their A-ASSOCIATE-RQ; more are closed",
        reload=True)
    unassociated_total: int = setting(
        256, "connections not yet associated, all addresses together; more are closed",
        reload=True)

    def check(self, source: str) -> None:
        for fld in dataclasses.fields(self):
            if getattr(self, fld.name) < 0:
                raise ConfigError(f"{source}: limits.{fld.name}: must not be negative")
        for key in ("unassociated_per_address", "unassociated_total"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{source}: limits.{key}: must be at least 1")


@dataclass(frozen=True)
class MonitoringConfig:
    enabled: bool = setting(True, "serve the HTTP side (/metrics, /status, /healthz, /api)")
    host: str = setting("127.0.0.1", "address of the HTTP side")
    metrics_host: str = setting("", "older name of monitoring.host; when set it wins")
    metrics_port: int = setting(9110, "port of the HTTP side; -1 disables it, 0 = ephemeral")
    https: bool = setting(
        False, "serve the HTTP side (DICOMweb, /metrics, /api) over HTTPS with the "
        "certificate of tls.cert_path and tls.key_path")

    @property
    def bind_host(self) -> str:
        """The address the HTTP side listens on."""
        return self.metrics_host or self.host

    @property
    def serves(self) -> bool:
        """Whether the HTTP side runs at all."""
        return self.enabled and self.metrics_port >= 0

    def check(self, source: str) -> None:
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(f"{source}: monitoring.metrics_port: must be -1..65535")
        if self.metrics_host and self.host not in ("127.0.0.1", self.metrics_host):
            raise ConfigError(f"{source}: monitoring.metrics_host: {self.metrics_host!r} "
                              f"contradicts monitoring.host {self.host!r}; set only host")


@dataclass(frozen=True)
class AdminConfig:
    """The bearer token of the admin API (/api/...); without one the API is refused."""

    token: str = setting("", "admin API bearer token; empty = see token_file", reload=True)
    token_file: str = setting("", "file whose first line is the token (keeps it out of this file)",
                              reload=True)

    def check(self, source: str) -> None:
        if self.token and self.token_file:
            raise ConfigError(f"{source}: admin.token: set token or token_file, not both")
        if self.token and len(self.token) < 16:
            raise ConfigError(f"{source}: admin.token: must be at least 16 characters")


@dataclass(frozen=True)
class ViewerConfig:
    """The built-in OHIF viewer at /viewer on the HTTP side (scripts/fetch-viewer)."""

    enabled: bool = setting(True, "serve the OHIF viewer at /viewer on the HTTP side")
    path: str = setting(
        "./.viewer", "directory holding ohif-<version>/, as unpacked by scripts/fetch-viewer")
    version: str = setting("3.13.2", "the @ohif/app release served (one pinned in the "
                           "source; fetch-viewer verifies its checksum)")

    def check(self, source: str) -> None:
        if not self.path:
            raise ConfigError(f"{source}: viewer.path: must not be empty")
        # The pins live with the fetcher; imported here to keep config a leaf.
        from pacs_server.viewer_fetch import RELEASES

        if self.version not in RELEASES:
            raise ConfigError(f"{source}: viewer.version: {self.version!r} is not a pinned "
                              f"@ohif/app release ({', '.join(sorted(RELEASES))})")


@dataclass(frozen=True)
class QueryConfig:
    case_sensitive_names: bool = setting(False, "Person Name matching respects case", reload=True)
    max_results: int = setting(0, "most matches a C-FIND returns; 0 = unlimited", reload=True)

    def check(self, source: str) -> None:
        if self.max_results < 0:
            raise ConfigError(f"{source}: query.max_results: must not be negative")


@dataclass(frozen=True)
class RetrieveConfig:
    transcode: bool = setting(
        True, "convert an instance for a C-GET/C-MOVE peer that accepts none of its "
        "stored transfer syntax", reload=True)


@dataclass(frozen=True)
class CommitmentConfig:
    """Storage Commitment (PS3.4 Annex J): how N-EVENT-REPORTs are delivered."""

    report_on_same_association: bool = setting(
        True, "send the report on the requesting association while it is open", reload=True)
    retry_interval: float = setting(
        10.0, "seconds before the first retry of an undelivered report; doubles each time",
        reload=True)
    max_retry_interval: float = setting(600.0, "longest wait between two delivery attempts",
                                   reload=True)
    give_up_after: float = setting(
        604800.0, "seconds after the request an undelivered report is abandoned; 0 = never",
        reload=True)

    def check(self, source: str) -> None:
        """Range checks of the section (`validate()` calls each section's)."""
        if self.retry_interval <= 0:
            raise ConfigError(f"{source}: commitment.retry_interval: must be greater than 0")
        if self.max_retry_interval < self.retry_interval:
            raise ConfigError(f"{source}: commitment.max_retry_interval: must be at least "
                              f"retry_interval ({self.retry_interval})")
        if self.give_up_after < 0:
            raise ConfigError(f"{source}: commitment.give_up_after: must not be negative")


@dataclass(frozen=True)
class WorklistConfig:
    retention_days: int = setting(
        30, "days COMPLETED/DISCONTINUED worklist items are kept before removal", reload=True)

    def check(self, source: str) -> None:
        if self.retention_days < 0:
            raise ConfigError(f"{source}: worklist.retention_days: must not be negative, "
                              f"got {self.retention_days}")


DicomWebAccess = Literal["loopback", "open", "credentials"]


@dataclass(frozen=True)
class DicomWebUser:
    name: str = setting("", "user name of HTTP Basic authentication")
    password_hash: str = setting(
        "", "the password hashed by `pacs_server hash-password` (never the password)")

    def check(self, source: str, key: str) -> None:
        if not self.name or ":" in self.name:
            raise ConfigError(f"{source}: {key}.name: must be non-empty without ':'")
        from pacs_server.passwords import is_password_hash

        if not is_password_hash(self.password_hash):
            raise ConfigError(f"{source}: {key}.password_hash: not a hash made by "
                              "`pacs_server hash-password`")


@dataclass(frozen=True)
class DicomWebConfig:
    """DICOMweb (PS3.18: QIDO-RS, WADO-RS, STOW-RS, WADO-URI) on the HTTP side."""

    enabled: bool = setting(True, "serve DICOMweb on the HTTP side (needs the index)")
    root: str = setting("/dicom-web", "path under which the DICOMweb services live")
    access: DicomWebAccess = setting(
        "loopback", "loopback: only clients on this host, no credentials | open: anyone | "
        "credentials: a bearer token or an HTTP Basic user", reload=True)
    token: str = setting("", "bearer token accepted when access is credentials; empty = none",
                         reload=True)
    users: list[DicomWebUser] = setting(
        [], "HTTP Basic users when access is credentials: list of {name, password_hash}",
        reload=True)
    cors_origins: list[str] = setting(
        [], "origins allowed by CORS (e.g. https://viewer.example.org, or *); "
        "empty = same origin only", reload=True)
    max_request_bytes: int = setting(
        4 << 30, "largest STOW-RS request body accepted (413 above it)", reload=True)
    read_timeout: float = setting(
        30.0, "seconds a STOW-RS request may send nothing before it is answered 408",
        reload=True)
    max_results: int = setting(
        1000, "QIDO-RS matches per response when the request has no limit", reload=True)

    def check(self, source: str) -> None:
        if not self.root.startswith("/") or self.root.endswith("/") or "//" in self.root:
            raise ConfigError(f"{source}: dicomweb.root: must start with / and not end "
                              f"with one, got {self.root!r}")
        if self.token and len(self.token) < 16:
            raise ConfigError(f"{source}: dicomweb.token: must be at least 16 characters")
        for i, user in enumerate(self.users):
            user.check(source, f"dicomweb.users[{i}]")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"{source}: dicomweb.cors_origins: {origin!r} is not "
                                  "an origin such as https://host:port, or *")
        if self.max_request_bytes < 1:
            raise ConfigError(f"{source}: dicomweb.max_request_bytes: must be at least 1")
        if self.read_timeout <= 0:
            raise ConfigError(f"{source}: dicomweb.read_timeout: must be greater than 0")
        if self.max_results < 1:
            raise ConfigError(f"{source}: dicomweb.max_results: must be at least 1")


@dataclass(frozen=True)
class PeerConfig:
    ae_title: str = setting("", "AE title of the remote node")
    host: str = setting("127.0.0.1", "its address")
    port: int = setting(104, "its port")
    tls: bool = setting(False, "connect over TLS (our certificate, verified with tls.ca_path)")

    def check(self, source: str, key: str) -> None:
        check_ae_title(source, f"{key}.ae_title", self.ae_title)
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"{source}: {key}.port: must be 1-65535, got {self.port}")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    access_control: AccessControlConfig = field(default_factory=AccessControlConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    commitment: CommitmentConfig = field(default_factory=CommitmentConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    worklist: WorklistConfig = field(default_factory=WorklistConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    dicomweb: DicomWebConfig = field(default_factory=DicomWebConfig)
    peers: list[PeerConfig] = field(
        default_factory=list,
        metadata={"help": "C-MOVE destinations and Storage Commitment requesters: "
                          "list of {ae_title, host, port, tls}", "reload": True})
    source: str = field(default="<defaults>", compare=False, metadata={"internal": True})

    def peer(self, ae_title: str) -> PeerConfig | None:
        """The configured peer with this AE title, if any."""
        for p in self.peers:
            if p.ae_title == ae_title.strip():
                return p
        return None


# --------------------------------------------------------------------------- loading

def load_config(path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Build the Config from an optional YAML file, then dotted-key overrides (CLI).

    A top-level key of TOP_LEVEL_ALIASES in the file is read as the key it stands for.

    Raises:
        ConfigError: one line naming the file, the key and what is wrong.
    """
    source = str(path) if path else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read file: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start}): "
                              f"{exc.reason}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{source}: {where}YAML syntax error: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
        data = loaded
    for alias, dotted in TOP_LEVEL_ALIASES.items():
        if alias in data:
            section, _, key = dotted.partition(".")
            sect = data.setdefault(section, {})
            if not isinstance(sect, dict) or key in sect:
                raise ConfigError(f"{source}: {alias}: also set as {dotted}; keep one")
            sect[key] = data.pop(alias)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:                      # a top-level setting such as `peers`
            data[section] = value
            continue
        sect = data.setdefault(section, {})
        if not isinstance(sect, dict):
            raise ConfigError(f"{source}: {section}: expected a mapping")
        sect[key] = value
    cfg: Config = _build(Config, data, source, "")
    cfg = dataclasses.replace(cfg, source=source)
    validate(cfg)
    return cfg


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, "
                          f"got {_describe(data)}")
    hints = get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in names:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key "
                              f"(expected one of: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], source, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(cast(type, tp), value if value is not None else {}, source, key + ".")
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)          # tls.min_version: 1.2 written unquoted
        if isinstance(value, str):
            spelled = _SPELLINGS.get(value.lower(), value.lower())
            if spelled in allowed:
                return spelled
        raise ConfigError(f"{source}: {key}: must be one of {' | '.join(allowed)}, "
                          f"got {value!r}")
    if origin is list:
        (item_tp,) = get_args(tp)
        if value is None:
            return []
        if isinstance(value, str) and item_tp is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {_describe(value)}")
        return [_coerce(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(get_args(tp)):
            return None       # an optional setting left empty (a `str | AllowedAE`
                              # entry written empty is checked as the text "")
        # A mapping picks the dataclass member of the union (allowed_ae_titles entries).
        chosen = next((a for a in args if dataclasses.is_dataclass(a)), args[0]) \
            if isinstance(value, dict) else args[0]
        return _coerce(chosen, value, source, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{source}: {key}: expected a number, got {_describe(value)}")
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: {key}: expected a string, got {_describe(value)}")
    raise TypeError(f"unsupported config type {tp!r}")  # programming error, not user input


def _describe(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return repr(value)


def is_valid_ae_title(value: str) -> bool:
    """1-16 printable ASCII characters, not only spaces, no backslash (PS3.5 AE)."""
    return bool(value.strip()) and len(value) <= 16 and "\\" not in value and all(
        32 <= ord(c) <= 126 for c in value)


def check_ae_title(source: str, key: str, value: str) -> None:
    """Raise ConfigError unless `value` is a valid AE title."""
    if not is_valid_ae_title(value):
        raise ConfigError(f"{source}: {key}: {value!r} is not a valid AE title "
                          "(1-16 printable ASCII characters, no backslash)")


def validate(cfg: Config) -> None:
    """Each section checks itself; then what spans sections (the peers list)."""
    s = cfg.source
    for fld in dataclasses.fields(cfg):
        section = getattr(cfg, fld.name)
        check = getattr(section, "check", None)
        if dataclasses.is_dataclass(section) and check is not None:
            check(s)
    if cfg.server.port == -1 and not cfg.tls.enabled:
        raise ConfigError(f"{s}: server.port: -1 turns the plain listener off, so tls.enabled "
                          "must be true (else nothing listens)")
    if cfg.monitoring.https and not (cfg.tls.cert_path and cfg.tls.key_path):
        raise ConfigError(f"{s}: monitoring.https: needs tls.cert_path and tls.key_path")
    seen: set[str] = set()
    for i, peer in enumerate(cfg.peers):
        peer.check(s, f"peers[{i}]")
        if peer.tls and not cfg.tls.enabled:
            raise ConfigError(f"{s}: peers[{i}].tls: needs tls.enabled (our certificate and "
                              "tls.ca_path are used towards the peer)")
        if peer.ae_title in seen:
            raise ConfigError(f"{s}: peers[{i}].ae_title: {peer.ae_title!r} listed twice")
        seen.add(peer.ae_title)


def iter_fields(cls: type = Config, prefix: str = "") -> typing.Iterator[
        tuple[str, dataclasses.Field[Any], Any]]:
    """Yield (dotted key, field, default) for every leaf setting; used by docs and tests."""
    for fld in dataclasses.fields(cls):
        if fld.metadata.get("internal"):
            continue
        tp = get_type_hints(cls)[fld.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(cast(type, tp), f"{prefix}{fld.name}.")
        else:
            default = (fld.default if fld.default is not dataclasses.MISSING
                       else cast(Callable[[], Any], fld.default_factory)())
            yield f"{prefix}{fld.name}", fld, default


def reloadable_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Split the keys that differ between two configs into (reloadable, needs restart)."""
    hot: list[str] = []
    cold: list[str] = []
    for key, fld, _ in iter_fields():
        a, b = _get(old, key), _get(new, key)
        if a != b:
            (hot if fld.metadata.get("reload") else cold).append(key)
    return hot, cold


def merge_reloadable(old: Config, new: Config) -> Config:
    """`old` with every reloadable field taken from `new` (what SIGHUP applies)."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, fld, _ in iter_fields():
        if not fld.metadata.get("reload"):
            continue
        if "." in key:
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = getattr(getattr(new, section), name)
        else:
            top[key] = getattr(new, key)
    replaced = {s: dataclasses.replace(getattr(old, s), **vals) for s, vals in sections.items()}
    return dataclasses.replace(old, **replaced, **top)


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
