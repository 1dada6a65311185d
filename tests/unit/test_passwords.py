"""Password hashes of the DICOMweb users and `pacs_server hash-password`."""

from __future__ import annotations

import io

import pytest

from pacs_server import cli
from pacs_server.config import load_config
from pacs_server.errors import ConfigError
from pacs_server.passwords import check_password, hash_password, is_password_hash


def test_hash_checks_only_its_password() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert check_password("correct horse", stored)
    assert not check_password("correct horse ", stored)
    assert hash_password("correct horse") != stored          # a new salt each time


@pytest.mark.parametrize("bad", ["", "secret", "scrypt$16384$8$1$!!$!!", "md5$x$y$z$a$b",
                                 "scrypt$1000$8$1$c2FsdA==$a2V5"])
def test_malformed_hashes_are_refused(bad: str) -> None:
    assert not is_password_hash(bad)
    assert not check_password("secret", bad)


def test_config_refuses_a_clear_password() -> None:
    with pytest.raises(ConfigError, match=r"dicomweb.users\[0\].password_hash"):
        load_config(None, {"dicomweb.users": [{"name": "viewer", "password_hash": "secret"}]})
    cfg = load_config(None, {"dicomweb.users": [
        {"name": "viewer", "password_hash": hash_password("secret")}]})
    assert cfg.dicomweb.users[0].name == "viewer"


def test_hash_password_command(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert cli.main(["hash-password"]) == 0
    printed = capsys.readouterr().out.strip()
    assert check_password("s3cret", printed)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert cli.main(["hash-password"]) == 2
    assert "empty password" in capsys.readouterr().err
