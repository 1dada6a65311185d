"""pacs_server.viewer_fetch: the public-path rewriting of OHIF's npm build, and a tarball
that does not match the pinned checksum is never unpacked."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pacs_server import viewer_fetch
from pacs_server.viewer_fetch import (
    BASE,
    DEFAULT_VERSION,
    RELEASES,
    FetchError,
    install,
    integrity,
    is_installed,
    rewrite_text,
)

REPO = Path(__file__).resolve().parents[2]


def test_index_html_links_and_public_url() -> None:
    page = ('<link rel="manifest" href="/manifest.json"><meta name="x" content="/assets/t.png">'
            '<script>window.PUBLIC_URL="/"</script><script defer src="/app.bundle.1.js">'
            '</script><a href="//cdn.example/x">x</a><a href="https://ohif.org/">o</a>')
    out = rewrite_text("index.html", page, BASE)
    assert 'href="/viewer/manifest.json"' in out
    assert 'content="/viewer/assets/t.png"' in out
    assert 'window.PUBLIC_URL="/viewer/"' in out
    assert 'src="/viewer/app.bundle.1.js"' in out
    assert 'href="//cdn.example/x"' in out and 'href="https://ohif.org/"' in out
    # 3.12 writes it with single quotes.
    assert rewrite_text("index.html", "window.PUBLIC_URL = '/';", BASE) == (
        "window.PUBLIC_URL = '/viewer/';")


def test_bundles_workers_css_and_manifests() -> None:
    js = ('__webpack_require__.p = "/";\nimport("/dicom-microscopy-viewer/x.min.js");\n'
          'const rel = "./assets/a.png"; const other = "/api/x";')
    out = rewrite_text("compute.bundle.0fc3a3ee85296cf2.js", js, BASE)
    assert '__webpack_require__.p = "/viewer/";' in out
    assert '"/viewer/dicom-microscopy-viewer/x.min.js"' in out
    assert '"./assets/a.png"' in out and '"/api/x"' in out
    css = "@font-face{src:url(/a34f.woff2) format('woff2'),url('/b.woff')}a{b:url(data:x)}"
    assert rewrite_text("app.bundle.css", css, BASE) == (
        "@font-face{src:url(/viewer/a34f.woff2) format('woff2'),url('/viewer/b.woff')}"
        "a{b:url(data:x)}")
    manifest = '{"start_url": "/", "icons": [{"src": "/assets/i.png"}]}'
    assert rewrite_text("manifest.json", manifest, BASE) == (
        '{"start_url": "/viewer/", "icons": [{"src": "/viewer/assets/i.png"}]}')
    xml = '<square70x70logo src="/assets/mstile-70x70.png"/>'
    assert rewrite_text("browserconfig.xml", xml, BASE) == (
        '<square70x70logo src="/viewer/assets/mstile-70x70.png"/>')


def fake_tarball(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("package/dist/index.html", b'<script src="/a.js"></script>'),
                           ("package/dist/a.js", b'__webpack_require__.p = "/";')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    tarball = fake_tarball(tmp_path / "ohif-app.tgz")
    dest = tmp_path / "viewer"
    with pytest.raises(FetchError, match="checksum mismatch"):
        install(dest, DEFAULT_VERSION, tarball, log=lambda _line: None)
    assert not is_installed(dest, DEFAULT_VERSION)
    assert list(dest.iterdir()) == []              # nothing unpacked, no temporary left
    with pytest.raises(FetchError, match="not a pinned release"):
        install(dest, "0.0.1", tarball)


def test_an_unpack_of_a_tarball_pinned_for_the_test(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = fake_tarball(tmp_path / "ohif-app.tgz")
    monkeypatch.setitem(RELEASES, "0.0.0-test", integrity(tarball))
    dest = tmp_path / "viewer"
    served = install(dest, "0.0.0-test", tarball, log=lambda _line: None)
    assert served == dest / "ohif-0.0.0-test"
    assert is_installed(dest, "0.0.0-test")
    assert (served / "index.html").read_text() == '<script src="/viewer/a.js"></script>'
    assert (served / "a.js").read_text() == '__webpack_require__.p = "/viewer/";'
    assert sorted(p.name for p in dest.iterdir()) == ["ohif-0.0.0-test"]


def test_pins_are_sha512_integrity_strings() -> None:
    assert DEFAULT_VERSION in RELEASES
    for version, pin in RELEASES.items():
        assert pin.startswith("sha512-") and len(pin) == 7 + 88, version


def test_script_without_npm_explains_and_if_npm_exits_zero(tmp_path: Path) -> None:
    script = REPO / "scripts" / "fetch-viewer"
    env = {"PATH": str(tmp_path)}          # no npm on this PATH
    dest = tmp_path / "v"
    proc = subprocess.run([sys.executable, str(script), "--dest", str(dest)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "npm is not installed" in proc.stderr and "--tarball" in proc.stderr
    proc = subprocess.run([sys.executable, str(script), "--dest", str(dest), "--if-npm"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "npm is not installed" in proc.stderr
    assert viewer_fetch.installed_dir(dest, DEFAULT_VERSION).exists() is False


def _pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            extra: tarfile.TarInfo | None = None) -> Path:
    tarball = fake_tarball(tmp_path / "ohif-app.tgz")
    if extra is not None:
        with tarfile.open(tarball, "r:gz") as old:
            members = [(m, old.extractfile(m).read()) for m in old.getmembers()]  # type: ignore[union-attr]
        with tarfile.open(tarball, "w:gz") as tar:
            for m, data in members:
                tar.addfile(m, io.BytesIO(data))
            tar.addfile(extra)
    monkeypatch.setitem(RELEASES, "0.0.0-test", integrity(tarball))
    return tarball


@pytest.mark.parametrize("data_filter", [True, False], ids=["filter", "no-filter"])
def test_a_link_out_of_the_package_is_refused_with_or_without_tarfiles_filter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_filter: bool) -> None:
    # Without: Python before 3.11.4 (Debian 12's 3.11.2) has no extraction filters.
    if not data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    link = tarfile.TarInfo("package/dist/escape")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
    tarball = _pinned(tmp_path, monkeypatch, link)
    dest = tmp_path / "viewer"
    with pytest.raises(FetchError):
        install(dest, "0.0.0-test", tarball, log=lambda _line: None)
    assert not is_installed(dest, "0.0.0-test")
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def test_without_tarfiles_filter_a_plain_package_unpacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    served = install(tmp_path / "viewer", "0.0.0-test", _pinned(tmp_path, monkeypatch),
                     log=lambda _line: None)
    assert (served / "index.html").read_text() == '<script src="/viewer/a.js"></script>'
    assert (served / "a.js").stat().st_mode & 0o777 == 0o644


def test_npm_failure_names_npms_own_reason() -> None:
    # What `npm pack --json` printed behind a TLS-intercepting proxy whose CA it lacked.
    out = ('{\n  "error": {\n    "code": "SELF_SIGNED_CERT_IN_CHAIN",\n    "summary": '
           '"request to https://registry.npmjs.org/@ohif%2fapp failed, reason: '
           'self-signed certificate in certificate chain",\n    "detail": ""\n  }\n}\n')
    proc = subprocess.CompletedProcess(["npm"], 1, out, "npm ERR! code SELF_SIGNED_CERT\n")
    assert viewer_fetch._npm_error(proc) == (
        "SELF_SIGNED_CERT_IN_CHAIN: request to https://registry.npmjs.org/@ohif%2fapp "
        "failed, reason: self-signed certificate in certificate chain")
    proc = subprocess.CompletedProcess(["npm"], 1, "", "npm ERR! code E404\nnpm ERR! 404 x\n")
    assert viewer_fetch._npm_error(proc) == "npm ERR! 404 x"
