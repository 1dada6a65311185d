"""The keys of the operations issue: tls, monitoring.enabled/host, admin, audit_file,
naming spellings, top-level accepted_sop_classes and short SOP class names."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_server.config import load_config
from pacs_server.errors import ConfigError
from pacs_server.sop_classes import resolve_storage_classes, sop_class_name


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pacs.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_tls_keys_are_schema_and_disabled_means_plain(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "tls:\n  enabled: false\n  cert_path: a.crt\n"
                                      "  key_path: a.key\n  min_version: 1.3\n"))
    assert (cfg.tls.enabled, cfg.tls.cert_path, cfg.tls.min_version) == (False, "a.crt", "1.3")


def test_tls_enabled_without_a_certificate_is_refused_in_one_line(tmp_path: Path) -> None:
    message = error(write(tmp_path, "tls:\n  enabled: true\n"))
    assert message.endswith("tls.cert_path: required when tls.enabled is true")


def test_monitoring_enabled_and_hosts(tmp_path: Path) -> None:
    off = load_config(write(tmp_path, "monitoring:\n  enabled: false\n  metrics_port: 9090\n"))
    assert not off.monitoring.serves
    old = load_config(write(tmp_path, "monitoring:\n  metrics_host: 0.0.0.0\n"))
    assert old.monitoring.bind_host == "0.0.0.0"
    new = load_config(write(tmp_path, "monitoring:\n  host: ::1\n"))
    assert new.monitoring.bind_host == "::1" and new.monitoring.serves
    assert "contradicts monitoring.host" in error(
        write(tmp_path, "monitoring:\n  host: 10.0.0.1\n  metrics_host: 0.0.0.0\n"))


def test_naming_date_based_is_date(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "storage:\n  naming: date-based\n")).storage.naming \
        == "date"


def test_admin_token_rules(tmp_path: Path) -> None:
    assert "token or token_file, not both" in error(
        write(tmp_path, "admin:\n  token: 0123456789abcdef\n  token_file: /x\n"))
    assert "at least 16 characters" in error(write(tmp_path, "admin:\n  token: short\n"))


def test_accepted_sop_classes_at_top_level(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "accepted_sop_classes:\n  - US Image Storage\n"))
    assert cfg.storage.accepted_sop_classes == ["US Image Storage"]
    assert "keep one" in error(write(tmp_path, "accepted_sop_classes: [CT]\n"
                                               "storage:\n  accepted_sop_classes: [MR]\n"))


@pytest.mark.parametrize(("entry", "name"), [
    ("US Image Storage", "Ultrasound Image Storage"),
    ("us multi-frame image storage", "Ultrasound Multi-frame Image Storage"),
    ("Secondary Capture", "Secondary Capture Image Storage"),
    ("CR Image Storage", "Computed Radiography Image Storage"),
    ("PET Image Storage", "Positron Emission Tomography Image Storage"),
    ("NM Image Storage", "Nuclear Medicine Image Storage"),
    ("Encapsulated PDF", "Encapsulated PDF Storage"),
    ("Enhanced MR", "Enhanced MR Image Storage"),
])
def test_short_forms(entry: str, name: str) -> None:
    assert [sop_class_name(u) for u in resolve_storage_classes([entry])] == [name]


def test_unknown_name_is_named_with_a_hint(tmp_path: Path) -> None:
    message = error(write(tmp_path, "accepted_sop_classes:\n  - CT Image Storage\n"
                                    "  - Ultrasond Image Storage\n"))
    assert message.endswith("storage.accepted_sop_classes: 'Ultrasond Image Storage' is not a "
                            "modality code, storage SOP class name or UID (did you mean "
                            "'Ultrasound Image Storage'?)")
