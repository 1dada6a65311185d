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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pacs_server.errors import ConfigError

Naming = Literal["hierarchical", "flat", "date"]
DuplicatePolicy = Literal["reject", "replace", "ignore"]
LogLevel = Literal["debug", "info", "warning", "error"]
Synchronous = Literal["full", "normal"]
TlsVersion = Literal["1.2", "1.3"]

# Other spellings users write for an enum value, accepted as the value itself.
_SPELLINGS: dict[str, str] = {"date-based": "date"}
# Top-level keys of the files users have, and the keys of the schema they stand for
# (store_scp's files list `accepted_sop_classes` at the top level).
TOP_LEVEL_ALIASES: dict[str, str] = {"accepted_sop_classes": "storage.accepted_sop_classes"}


def _f(default: Any, help: str, reload: bool = False) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default),
                     metadata={"help": help, "reload": reload})
    return field(default=default, metadata={"help": help, "reload": reload})


@dataclass(frozen=True)
class ServerConfig:
    ae_title: str = _f("PACS", "AE title of this server (1-16 characters, no backslash)")
    host: str = _f("0.0.0.0", "address to listen on")
    port: int = _f(11112, "DICOM port; 0 binds an ephemeral port (logged at start)")
    max_associations: int = _f(50, "simultaneous associations; more are rejected (A-ASSOCIATE-RJ)")
    idle_timeout: float = _f(60.0, "seconds of silence before an association is aborted")
    max_pdu_size: int = _f(131072, "largest P-DATA PDU we accept, in bytes; 0 = unlimited")
    require_called_ae_title: bool = _f(False, "reject associations whose called AE is not ae_title")
    shutdown_grace: float = _f(10.0, "seconds SIGTERM waits for associations before aborting them")
    acse_timeout: float = _f(30.0, "seconds to wait for association negotiation messages")
    dimse_timeout: float = _f(60.0, "seconds to wait for a DIMSE message from the peer")


@dataclass(frozen=True)
class StorageConfig:
    directory: str = _f("./archive", "root of the file archive")
    naming: Naming = _f("hierarchical", "file layout: hierarchical | flat | date")
    duplicate_policy: DuplicatePolicy = _f(
        "reject", "same SOP Instance UID received again: reject | replace | ignore", reload=True)
    accepted_sop_classes: list[str] = _f(
        [], "empty = every Storage SOP class; else modality codes, names or UIDs")
    fsync: bool = _f(True, "fsync each file and its directory before acknowledging a C-STORE")


@dataclass(frozen=True)
class DatabaseConfig:
    path: str = _f("./pacs.db", "SQLite index file (ignored when url is set)")
    url: str = _f("", "SQLAlchemy async URL, e.g. postgresql+asyncpg://user@host/db")
    wal_mode: bool = _f(True, "SQLite write-ahead log (concurrent readers during writes)")
    synchronous: Synchronous = _f("full", "SQLite synchronous pragma: full (durable) | normal")
    commit_batch: int = _f(256, "most index writes grouped into one transaction")


@dataclass(frozen=True)
class LoggingConfig:
    level: LogLevel = _f("info", "debug | info | warning | error", reload=True)
    file: str = _f("./logs/pacs.log", "JSON-lines log file; empty = console only")
    json_console: bool = _f(False, "JSON on the console too (always JSON when not a terminal)")
    audit_file: str = _f("", "JSON-lines audit trail (PS3.15 A.5 events); empty = off",
                         reload=True)


@dataclass(frozen=True)
class AccessControlConfig:
    allowed_ae_titles: list[str] = _f(["*"], '"*" = any calling AE, else the list', reload=True)


@dataclass(frozen=True)
class MonitoringConfig:
    enabled: bool = _f(True, "serve the HTTP side (/metrics, /status, /healthz, /api)")
    host: str = _f("127.0.0.1", "address of the HTTP side")
    metrics_host: str = _f("", "older name of monitoring.host; when set it wins")
    metrics_port: int = _f(9110, "port of the HTTP side; -1 disables it, 0 = ephemeral")

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
class TlsConfig:
    """DICOM over TLS (PS3.15 B.1). Only the schema for now: enabling it is refused."""

    enabled: bool = _f(False, "DICOM over TLS; false = plain DICOM on server.port")
    port: int = _f(2762, "TLS port (2762 is the registered dicom-tls port)")
    cert_path: str = _f("", "server certificate (PEM)")
    key_path: str = _f("", "private key of the certificate (PEM)")
    ca_path: str = _f("", "CA bundle for verifying peer certificates; empty = no client auth")
    min_version: TlsVersion = _f("1.2", "lowest TLS version accepted: 1.2 | 1.3")
    ciphers: str = _f("", "OpenSSL cipher list; empty = the library's secure default")

    def check(self, source: str) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{source}: tls.port: must be 0-65535, got {self.port}")
        if self.enabled:
            raise ConfigError(f"{source}: tls.enabled: DICOM over TLS is not supported yet; "
                              "set it to false")


@dataclass(frozen=True)
class AdminConfig:
    """The bearer token of the admin API (/api/...); without one the API is refused."""

    token: str = _f("", "admin API bearer token; empty = see token_file", reload=True)
    token_file: str = _f("", "file whose first line is the token (keeps it out of this file)",
                         reload=True)

    def check(self, source: str) -> None:
        if self.token and self.token_file:
            raise ConfigError(f"{source}: admin.token: set token or token_file, not both")
        if self.token and len(self.token) < 16:
            raise ConfigError(f"{source}: admin.token: must be at least 16 characters")


@dataclass(frozen=True)
class QueryConfig:
    case_sensitive_names: bool = _f(False, "Person Name matching respects case", reload=True)
    max_results: int = _f(0, "most matches a C-FIND returns; 0 = unlimited", reload=True)


@dataclass(frozen=True)
class PeerConfig:
    ae_title: str = _f("", "AE title of the remote node")
    host: str = _f("127.0.0.1", "its address")
    port: int = _f(104, "its port")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    access_control: AccessControlConfig = field(default_factory=AccessControlConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    peers: list[PeerConfig] = field(
        default_factory=list,
        metadata={"help": "C-MOVE destinations: list of {ae_title, host, port}", "reload": True})
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
    cfg = _build(Config, data, source, "")
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
        return _build(tp, value if value is not None else {}, source, key + ".")
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
        if value is None:
            return None
        return _coerce(args[0], value, source, key)
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


def _check_ae_title(source: str, key: str, value: str) -> None:
    if not is_valid_ae_title(value):
        raise ConfigError(f"{source}: {key}: {value!r} is not a valid AE title "
                          "(1-16 printable ASCII characters, no backslash)")


def validate(cfg: Config) -> None:
    """Cross-field and range checks that types alone cannot express."""
    s = cfg.source
    _check_ae_title(s, "server.ae_title", cfg.server.ae_title)
    if not 0 <= cfg.server.port <= 65535:
        raise ConfigError(f"{s}: server.port: must be 0-65535, got {cfg.server.port}")
    if cfg.server.max_associations < 1:
        raise ConfigError(f"{s}: server.max_associations: must be at least 1")
    if cfg.server.max_pdu_size != 0 and cfg.server.max_pdu_size < 4096:
        raise ConfigError(f"{s}: server.max_pdu_size: must be 0 (unlimited) or >= 4096")
    for key in ("idle_timeout", "acse_timeout", "dimse_timeout"):
        if getattr(cfg.server, key) <= 0:
            raise ConfigError(f"{s}: server.{key}: must be greater than 0")
    if cfg.server.shutdown_grace < 0:
        raise ConfigError(f"{s}: server.shutdown_grace: must not be negative")
    if not cfg.storage.directory:
        raise ConfigError(f"{s}: storage.directory: must not be empty")
    if not cfg.database.url and not cfg.database.path:
        raise ConfigError(f"{s}: database.path: must not be empty (or set database.url)")
    if cfg.database.commit_batch < 1:
        raise ConfigError(f"{s}: database.commit_batch: must be at least 1")
    for section in (cfg.monitoring, cfg.tls, cfg.admin):
        section.check(s)
    if cfg.query.max_results < 0:
        raise ConfigError(f"{s}: query.max_results: must not be negative")
    for i, title in enumerate(cfg.access_control.allowed_ae_titles):
        if title != "*":
            _check_ae_title(s, f"access_control.allowed_ae_titles[{i}]", title)
    seen: set[str] = set()
    for i, peer in enumerate(cfg.peers):
        _check_ae_title(s, f"peers[{i}].ae_title", peer.ae_title)
        if not 1 <= peer.port <= 65535:
            raise ConfigError(f"{s}: peers[{i}].port: must be 1-65535, got {peer.port}")
        if peer.ae_title in seen:
            raise ConfigError(f"{s}: peers[{i}].ae_title: {peer.ae_title!r} listed twice")
        seen.add(peer.ae_title)
    # Resolving SOP class entries needs the UID dictionary; imported here to keep
    # config free of DICOM knowledge everywhere else.
    from pacs_server.sop_classes import resolve_storage_classes

    try:
        resolve_storage_classes(cfg.storage.accepted_sop_classes)
    except ValueError as exc:
        raise ConfigError(f"{s}: storage.accepted_sop_classes: {exc}") from None


def iter_fields(cls: type = Config, prefix: str = "") -> typing.Iterator[
        tuple[str, dataclasses.Field[Any], Any]]:
    """Yield (dotted key, field, default) for every leaf setting; used by docs and tests."""
    for fld in dataclasses.fields(cls):
        if fld.metadata.get("internal"):
            continue
        tp = get_type_hints(cls)[fld.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, f"{prefix}{fld.name}.")  # type: ignore[arg-type]
        else:
            default = (fld.default if fld.default is not dataclasses.MISSING
                       else fld.default_factory())  # type: ignore[misc]
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
