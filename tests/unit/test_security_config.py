"""The tls, limits and pinned access_control settings load, and reject what is wrong
with one line naming the key."""

from __future__ import annotations

import pytest

from pacs_server.config import AllowedAE, load_config
from pacs_server.errors import ConfigError


def test_mapping_and_plain_entries_load() -> None:
    cfg = load_config(None, {"access_control.allowed_ae_titles": [
        "CT_02", {"ae_title": "CT_01", "hosts": ["10.0.0.5", "10.1.0.0/16"], "tls": True}]})
    assert cfg.access_control.allowed_ae_titles == [
        "CT_02", AllowedAE("CT_01", ["10.0.0.5", "10.1.0.0/16"], True)]


def test_tls_defaults() -> None:
    cfg = load_config(None, {"tls.enabled": True, "tls.cert_path": "c.pem",
                             "tls.key_path": "k.pem", "tls.min_version": 1.3})
    assert (cfg.tls.port, cfg.tls.min_version, cfg.tls.ca_path) == (2762, "1.3", "")


@pytest.mark.parametrize(("overrides", "key"), [
    ({"access_control.allowed_ae_titles": [{"ae_title": "CT", "hosts": ["10.0.0.300"]}]},
     "access_control.allowed_ae_titles[0].hosts[0]"),
    ({"access_control.allowed_ae_titles": [{"ae_title": "CT", "port": 1}]},
     "access_control.allowed_ae_titles[0].port"),
    ({"access_control.allowed_ae_titles": ["CT", {"ae_title": "CT"}]},
     "access_control.allowed_ae_titles[1]"),
    ({"tls.enabled": True, "tls.key_path": "k.pem"}, "tls.cert_path"),
    ({"tls.min_version": "1.1"}, "tls.min_version"),
    ({"server.port": -1}, "server.port"),
    ({"peers": [{"ae_title": "X", "tls": True}]}, "peers[0].tls"),
    ({"limits.unassociated_total": 0}, "limits.unassociated_total"),
    ({"storage.min_free_bytes": -1}, "storage.min_free_bytes"),
])
def test_errors_name_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert f": {key}:" in message and "\n" not in message, message


def test_plain_listener_off_with_tls() -> None:
    cfg = load_config(None, {"server.port": -1, "tls.enabled": True, "tls.cert_path": "c",
                             "tls.key_path": "k"})
    assert cfg.server.port == -1
