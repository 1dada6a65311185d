"""load_config(): every error is a one-line ConfigError naming the file and the key."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest

from pacs_server.config import (
    Config,
    iter_fields,
    load_config,
    merge_reloadable,
    reloadable_changes,
)
from pacs_server.errors import ConfigError
from pacs_server.passwords import hash_password


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pacs.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, "a config error must be one line"
    return message


def test_defaults_without_file() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.source == "<defaults>"
    assert cfg.storage.duplicate_policy == "reject"
    assert cfg.access_control.allowed_ae_titles == ["*"]


def test_full_file_is_typed_and_frozen(tmp_path: Path) -> None:
    path = write(tmp_path, """
server:
  ae_title: ARCHIVE
  port: 4242
  idle_timeout: 5          # an int where a float is expected is fine
  require_called_ae_title: true
storage:
  naming: FLAT             # enum values are case-insensitive
  accepted_sop_classes: CT, MR
database:
  synchronous: normal
logging:
  level: WARNING
access_control:
  allowed_ae_titles: [MODALITY1, WS2]
peers:
  - {ae_title: VIEWER, host: 10.0.0.5, port: 11113}
""")
    cfg = load_config(path)
    assert cfg.source == str(path)
    assert cfg.server.ae_title == "ARCHIVE"
    assert cfg.server.port == 4242
    assert cfg.server.idle_timeout == 5.0 and isinstance(cfg.server.idle_timeout, float)
    assert cfg.server.require_called_ae_title is True
    assert cfg.storage.naming == "flat"
    assert cfg.storage.accepted_sop_classes == ["CT", "MR"]
    assert cfg.logging.level == "warning"
    assert cfg.access_control.allowed_ae_titles == ["MODALITY1", "WS2"]
    viewer = cfg.peer("VIEWER")
    assert viewer is not None and (viewer.host, viewer.port) == ("10.0.0.5", 11113)
    assert cfg.peer("OTHER") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 4242\n  ae_title: FROMFILE\n")
    cfg = load_config(path, {"server.port": 0, "storage.duplicate_policy": "ignore"})
    assert cfg.server.port == 0
    assert cfg.server.ae_title == "FROMFILE"
    assert cfg.storage.duplicate_policy == "ignore"


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing here\n")) == Config()


@pytest.mark.parametrize(("text", "key", "what"), [
    ("server:\n  bogus: 1\n", "server.bogus", "unknown key"),
    ("bogus_section: {}\n", "bogus_section", "unknown key"),
    ("peers:\n  - {ae_title: A, port: 1, colour: red}\n", "peers[0].colour", "unknown key"),
])
def test_unknown_key(tmp_path: Path, text: str, key: str, what: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: {key}: {what}")


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("server:\n  port: abc\n", "server.port", "expected an integer, got 'abc'"),
    ("server:\n  port: true\n", "server.port", "expected an integer"),
    ("server:\n  port: 1.5\n", "server.port", "expected an integer"),
    ("server:\n  idle_timeout: '5'\n", "server.idle_timeout", "expected a number"),
    ("storage:\n  fsync: 'yes'\n", "storage.fsync", "expected true or false"),
    ("server:\n  ae_title: [A, B]\n", "server.ae_title", "expected a string"),
    ("access_control:\n  allowed_ae_titles: {A: 1}\n", "access_control.allowed_ae_titles",
     "expected a list"),
    ("server: 5\n", "server", "expected a mapping"),
    ("peers:\n  - ae_title: A\n    port: x\n", "peers[0].port", "expected an integer"),
])
def test_wrong_type(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: {key}: ")
    assert expected in message


@pytest.mark.parametrize(("text", "key"), [
    ("storage:\n  naming: weird\n", "storage.naming"),
    ("storage:\n  duplicate_policy: overwrite\n", "storage.duplicate_policy"),
    ("logging:\n  level: verbose\n", "logging.level"),
    ("database:\n  synchronous: off\n", "database.synchronous"),
    ("server:\n  transport: poll\n", "server.transport"),
])
def test_bad_enum_lists_the_choices(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: {key}: must be one of ")


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("server:\n  port: 70000\n", "server.port", "0-65535"),
    ("server:\n  ae_title: WAYTOOLONGAETITLE123\n", "server.ae_title", "not a valid AE title"),
    ("server:\n  ae_title: 'A\\\\B'\n", "server.ae_title", "not a valid AE title"),
    ("server:\n  ae_title: '   '\n", "server.ae_title", "not a valid AE title"),
    ("server:\n  max_pdu_size: 100\n", "server.max_pdu_size", ">= 4096"),
    ("server:\n  max_associations: 0\n", "server.max_associations", "at least 1"),
    ("server:\n  dimse_timeout: 0\n", "server.dimse_timeout", "greater than 0"),
    ("server:\n  shutdown_grace: -1\n", "server.shutdown_grace", "not be negative"),
    ("storage:\n  directory: ''\n", "storage.directory", "must not be empty"),
    ("database:\n  commit_batch: 0\n", "database.commit_batch", "at least 1"),
    ("monitoring:\n  metrics_port: -2\n", "monitoring.metrics_port", "-1..65535"),
    ("storage:\n  accepted_sop_classes: [CT, NOPE]\n", "storage.accepted_sop_classes", "'NOPE'"),
    ("access_control:\n  allowed_ae_titles: [GOOD, 'BAD\\\\AE']\n",
     "access_control.allowed_ae_titles[1]", "not a valid AE title"),
    # Found by scripts/fuzz-atheris (config): an empty entry was a traceback.
    ("access_control:\n  allowed_ae_titles:\n    -\n", "access_control.allowed_ae_titles[0]",
     "not a valid AE title"),
    ("peers:\n  - {ae_title: A, port: 0}\n", "peers[0].port", "1-65535"),
    ("peers:\n  - {ae_title: A, port: 1}\n  - {ae_title: A, port: 2}\n", "peers[1].ae_title",
     "listed twice"),
])
def test_bad_values(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: {key}: ")
    assert expected in message


@pytest.mark.parametrize(("text", "line"), [
    ("server: [\n", 2),
    ("server:\n  port: 1\n   x: 2\n", 3),
    ("server:\n\tport: 1\n", 2),
])
def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: line {line}: YAML syntax error: ")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- server\n- storage\n")
    assert config_error(path) == f"{path}: top level must be a mapping of sections"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert config_error(path) == f"{path}: cannot read file: No such file or directory"


def test_unreadable_file(tmp_path: Path) -> None:
    # Tests run as root, so a chmod 000 file would still be readable: a directory is not.
    message = config_error(tmp_path)
    assert message == f"{tmp_path}: cannot read file: Is a directory"


def test_bad_override_names_the_key() -> None:
    message = config_error(None, {"server.port": "eleven"})
    assert message.startswith("<defaults>: server.port: expected an integer")
    assert config_error(None, {"server.nope": 1}).startswith("<defaults>: server.nope: unknown")


def test_every_field_has_help_and_a_valid_default() -> None:
    keys = []
    for key, fld, default in iter_fields():
        keys.append(key)
        assert fld.metadata.get("help"), f"{key} has no help text"
        # Each default must survive its own validation when given explicitly.
        if "." in key:
            load_config(None, {key: default})
    assert "server.port" in keys and "storage.duplicate_policy" in keys and "peers" in keys
    assert len(keys) == len(set(keys))


def test_reloadable_changes_split_hot_and_cold() -> None:
    old = load_config(None)
    new = load_config(None, {
        "access_control.allowed_ae_titles": ["ONE"],
        "storage.duplicate_policy": "replace",
        "logging.level": "debug",
        "server.port": 1234,
        "storage.naming": "flat",
    })
    hot, cold = reloadable_changes(old, new)
    assert sorted(hot) == ["access_control.allowed_ae_titles", "logging.level",
                           "storage.duplicate_policy"]
    assert sorted(cold) == ["server.port", "storage.naming"]
    assert reloadable_changes(old, load_config(None)) == ([], [])


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("server:\n  ae_title: CAF\xc9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8"):
        load_config(path)


def test_top_level_list_override() -> None:
    cfg = load_config(None, {"peers": [{"ae_title": "VIEWER", "host": "127.0.0.1",
                                        "port": 11113}]})
    assert cfg.peer("VIEWER") is not None and cfg.peer("VIEWER").port == 11113


# --------------------------------------------------------------------------- reload

TLS_FILES = {"tls.cert_path": "server.pem", "tls.key_path": "server.key"}


def _other_value(key: str, default: Any) -> Any:
    """A valid value for `key` that differs from its default."""
    special: dict[str, Any] = {
        "server.ae_title": "OTHER",
        "server.node_name": "node-b",
        "server.max_pdu_size": 65536,
        "database.url": "postgresql+asyncpg://pacs@db.example/pacs",
        "storage.accepted_sop_classes": ["CT"],
        "access_control.allowed_ae_titles": ["OTHER"],
        "peers": [{"ae_title": "VIEWER", "host": "10.0.0.2", "port": 104}],
        "tls.min_version": "1.3",
        "admin.token": "a-token-of-twenty-four-c",
        "viewer.version": "3.12.10",
        "dicomweb.token": "a-dicomweb-token-of-24ch",
        "dicomweb.users": [{"name": "viewer", "password_hash": hash_password("secret")}],
        "dicomweb.cors_origins": ["https://viewer.example.org"],
        "server.workers": "auto",
    }
    if key in special:
        return special[key]
    section, _, name = key.partition(".")
    hint = get_type_hints(type(getattr(load_config(None), section)))[name]
    if get_origin(hint) is Literal:
        return next(choice for choice in get_args(hint) if choice != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int | float):
        return default + 1
    if isinstance(default, str):
        return default + "-other"
    raise AssertionError(f"{key}: no other value known for a {type(default).__name__}")


@pytest.mark.parametrize(("key", "reloadable"), [
    (key, bool(fld.metadata.get("reload"))) for key, fld, _ in iter_fields()])
def test_each_change_is_reloadable_or_needs_a_restart(key: str, reloadable: bool) -> None:
    """Every setting, changed alone, lands on the side its `reload` metadata says."""
    default = dict((k, d) for k, _, d in iter_fields())[key]
    # The TLS listener and HTTPS need a certificate: both sides have one.
    base = TLS_FILES if key in ("tls.enabled", "monitoring.https") else {}
    new = load_config(None, {**base, key: _other_value(key, default)})
    expected = ([key], []) if reloadable else ([], [key])
    assert reloadable_changes(load_config(None, base), new) == expected


def test_the_source_of_a_config_is_not_a_change(tmp_path: Path) -> None:
    from_file = load_config(write(tmp_path, "server:\n  port: 11112\n"))
    assert from_file.source != load_config(None).source
    assert reloadable_changes(load_config(None), from_file) == ([], [])


def test_reordered_peers_are_a_change() -> None:
    a = {"ae_title": "A", "host": "127.0.0.1", "port": 104}
    b = {"ae_title": "B", "host": "127.0.0.1", "port": 105}
    old = load_config(None, {"peers": [a, b]})
    assert reloadable_changes(old, load_config(None, {"peers": [b, a]})) == (["peers"], [])
    assert reloadable_changes(old, load_config(None, {"peers": [a, b]})) == ([], [])


def test_changes_are_listed_in_settings_order() -> None:
    changed = {"query.max_results": 5, "server.port": 1, "logging.level": "error",
               "database.commit_batch": 2, "storage.duplicate_policy": "ignore"}
    hot, cold = reloadable_changes(load_config(None), load_config(None, changed))
    order = [key for key, _, _ in iter_fields()]
    assert hot == [k for k in order if k in changed and k in hot]
    assert cold == [k for k in order if k in changed and k not in hot]
    assert set(hot) | set(cold) == set(changed)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"commitment.retry_interval": 0}, "commitment.retry_interval: must be greater than 0"),
    ({"commitment.retry_interval": 30, "commitment.max_retry_interval": 10},
     "commitment.max_retry_interval: must be at least retry_interval (30.0)"),
    ({"commitment.give_up_after": -1}, "commitment.give_up_after: must not be negative"),
    ({"commitment.report_on_same_association": "yes"},
     "commitment.report_on_same_association: expected true or false"),
])
def test_commitment_section_is_checked(overrides: dict[str, Any], message: str) -> None:
    assert config_error(None, overrides).startswith(f"<defaults>: {message}")


def test_commitment_retries_are_reloadable() -> None:
    old = load_config(None)
    new = load_config(None, {"commitment.retry_interval": 2.5, "commitment.give_up_after": 0})
    hot, cold = reloadable_changes(old, new)
    assert sorted(hot) == ["commitment.give_up_after", "commitment.retry_interval"]
    assert not cold
    assert merge_reloadable(old, new).commitment.retry_interval == 2.5


def test_workers_auto_is_the_cpus_this_process_may_use() -> None:
    assert load_config(None).server.worker_count == 1
    assert load_config(None, {"server.workers": 3}).server.worker_count == 3
    auto = load_config(None, {"server.workers": "auto"}).server
    assert auto.worker_count == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "many", "-2", "300"])
def test_workers_must_be_auto_or_a_count(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"server.workers": value})
    assert str(err.value) == (f"<defaults>: server.workers: must be auto or 1-256, "
                              f"got {value!r}")
