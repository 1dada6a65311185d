"""Fetching the built-in viewer: OHIF from the npm package `@ohif/app` at a pinned
release, verified, unpacked and made to live under `/viewer/`.

`npm pack @ohif/app@<version>` downloads the package tarball; its SHA-512 must equal the
registry's `dist.integrity` pinned here (`RELEASES`), so a changed or substituted
tarball is refused. Only `package/dist/` is unpacked (tarfile's `data` filter: no
absolute paths, links out of the tree or device files), into a temporary directory
that is renamed to `<dest>/ohif-<version>` when complete, so a half-done unpack is
never served.

The npm `dist/` is built for `/`; served under `/viewer/` it needs its public path in
index.html (links, `window.PUBLIC_URL`), in the webpack runtime of the app bundle and of
every worker bundle (`__webpack_require__.p`), in the CSS font URLs, the manifests and
the service worker's precache list. That rewriting happens here, once. Text files are
also stored gzipped beside themselves (`x.js.gz`), which aiohttp sends to clients that
accept gzip.

Standard library only: `scripts/fetch-viewer` runs it before the package is installed.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

PACKAGE = "@ohif/app"
# version -> the registry's dist.integrity (`npm view @ohif/app@<version> dist.integrity`).
RELEASES = {
    "3.12.10": "sha512-0kuF66Mq9c9dMD++bUsTjMrJpXJwaZhz9B4uS244DawAjSkTwIYFU93pxPuRUQixaRi7QAHlF3"
               "Fe1qudBlZrmA==",
    "3.13.2": "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq"
              "+jd5xXZB9E8EA==",
}
DEFAULT_VERSION = "3.13.2"
BASE = "/viewer/"
MARKER = ".pacs-viewer.json"        # written last: the directory is complete
_COMPRESS = {".js", ".mjs", ".css", ".html", ".json", ".jsonc", ".wasm", ".svg", ".xml",
             ".map", ".txt"}
_COMPRESS_MIN = 1024
# Dropped from the unpacked tree: a deploy host's rules, and the stock config (the
# server generates app-config.js).
_SKIP = {"_headers", "_redirects", "app-config.js"}


def viewer_link(study_uid: str) -> str:
    """The path that opens a study in the viewer (web/viewer.py redirects `/viewer?...`
    to OHIF's viewer route)."""
    return f"{BASE.rstrip('/')}?StudyInstanceUIDs={study_uid}"


class FetchError(Exception):
    """The viewer could not be fetched or unpacked; the message says why."""


def installed_dir(dest: Path, version: str) -> Path:
    return dest / f"ohif-{version}"


def is_installed(dest: Path, version: str) -> bool:
    """True when `<dest>/ohif-<version>` is a complete unpack of the pinned tarball."""
    try:
        marker = json.loads((installed_dir(dest, version) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("version") == version and marker.get("integrity") == RELEASES.get(
        version) and marker.get("base") == BASE)


def integrity(path: Path) -> str:
    """`sha512-<base64>`, the form of npm's dist.integrity (Subresource Integrity)."""
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def npm_pack(version: str, workdir: Path) -> Path:
    """`npm pack @ohif/app@<version>` into workdir; the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is not installed: install Node.js/npm, or fetch the tarball "
                         f"elsewhere with `npm pack {PACKAGE}@{version}` and pass --tarball")
    proc = subprocess.run([npm, "pack", f"{PACKAGE}@{version}", "--json", "--silent",
                           "--pack-destination", str(workdir)], capture_output=True,
                          text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise FetchError(f"npm pack {PACKAGE}@{version} failed: {_npm_error(proc)}")
    tarballs = sorted(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise FetchError(f"npm pack {PACKAGE}@{version} left no tarball in {workdir}")
    return tarballs[0]


def _npm_error(proc: subprocess.CompletedProcess[str]) -> str:
    """npm's own reason: the summary of its --json error object (stdout), else the
    last `npm ERR!` line (stderr)."""
    try:
        error = json.loads(proc.stdout).get("error", {})
        if error.get("summary"):
            return f"{error.get('code', 'error')}: {error['summary']}"
    except (ValueError, AttributeError):
        pass
    lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def install(dest: Path, version: str = DEFAULT_VERSION, tarball: Path | None = None,
            log: Callable[[str], None] = print) -> Path:
    """Fetch (unless `tarball` is given), verify and unpack; the served directory.

    Raises:
        FetchError: unknown version, npm missing or failing, checksum mismatch, bad tarball.
    """
    expected = RELEASES.get(version)
    if expected is None:
        raise FetchError(f"{PACKAGE} {version} is not a pinned release "
                         f"(pinned: {', '.join(sorted(RELEASES))})")
    target = installed_dir(dest, version)
    if is_installed(dest, version):
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as tmp:
        work = Path(tmp)
        if tarball is None:
            log(f"fetching {PACKAGE}@{version} with npm pack ...")
            tarball = npm_pack(version, work)
        found = integrity(tarball)
        if found != expected:
            raise FetchError(f"{tarball.name}: checksum mismatch: expected {expected}, "
                             f"got {found}; refusing to unpack it")
        unpacked = work / "unpacked"
        _unpack(tarball, unpacked)
        rewrite_tree(unpacked, BASE)
        compress_tree(unpacked)
        (unpacked / MARKER).write_text(json.dumps(
            {"package": PACKAGE, "version": version, "integrity": expected, "base": BASE}))
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(unpacked, target)
        except OSError as exc:
            if not is_installed(dest, version):     # else another run just finished it
                raise FetchError(f"cannot move the viewer into {target}: {exc}") from None
    log(f"{PACKAGE}@{version} verified and unpacked into {target}")
    return target


def _unpack(tarball: Path, out: Path) -> None:
    prefix = "package/dist/"
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = []
            for member in tar.getmembers():
                if not member.name.startswith(prefix) or member.name == prefix:
                    continue
                member.name = member.name[len(prefix):]
                if member.name in _SKIP:
                    continue
                members.append(member)
            if not any(m.name == "index.html" for m in members):
                raise FetchError(f"{tarball.name} has no dist/index.html: not a built "
                                 "OHIF package")
            _extract(tar, out, members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FetchError(f"{tarball.name}: cannot unpack: {exc}") from None


def _extract(tar: tarfile.TarFile, out: Path, members: list[tarfile.TarInfo]) -> None:
    """`members` into `out`, refusing anything that is not a plain file or directory
    inside it. Python 3.11.4 and later do it with the "data" filter; before (Debian 12's
    3.11.2), the same refusal by hand, for what an npm package holds."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(out, members=members, filter="data")
        return
    for m in members:
        name = PurePosixPath(m.name)
        if not (m.isfile() or m.isdir()) or name.is_absolute() or ".." in name.parts:
            raise FetchError(f"refusing {m.name!r}: not a plain file or directory of the "
                             "package")
        m.mode = (m.mode & 0o755) | (0o755 if m.isdir() else 0o644)
    tar.extractall(out, members=members)  # noqa: S202 - checked above


# What points at the root of the site in the npm build, and its form under `base`.
_HTML_ATTR = re.compile(r'((?:href|src|content)=")/(?!/)')
_PUBLIC_URL = re.compile(r"""(window\.PUBLIC_URL\s*=\s*)(["'])/\2""")
_WEBPACK_PUBLIC_PATH = re.compile(r'(__webpack_require__\.p\s*=\s*)"/"')
_ROOT_STRING_JS = re.compile(r"""(['"])/(dicom-microscopy-viewer|assets|ort)/""")
_CSS_URL = re.compile(r"""url\((['"]?)/(?!/)""")
_JSON_PATH = re.compile(r'("(?:src|url|start_url|scope|href)"\s*:\s*")/(?!/)')
_XML_SRC = re.compile(r'(src=")/(?!/)')


def rewrite_text(name: str, text: str, base: str) -> str:
    """One file of the dist with its root-relative URLs moved under `base` (ends in /)."""
    prefix = base.rstrip("/")
    suffix = Path(name).suffix
    if suffix == ".html":
        text = _HTML_ATTR.sub(lambda m: m.group(1) + base, text)
        text = _PUBLIC_URL.sub(lambda m: f"{m.group(1)}{m.group(2)}{base}{m.group(2)}", text)
    elif suffix in (".js", ".mjs"):
        text = _WEBPACK_PUBLIC_PATH.sub(lambda m: f'{m.group(1)}"{base}"', text)
        text = _ROOT_STRING_JS.sub(lambda m: f"{m.group(1)}{prefix}/{m.group(2)}/", text)
        text = _JSON_PATH.sub(lambda m: m.group(1) + base, text)
    elif suffix == ".css":
        text = _CSS_URL.sub(lambda m: f"url({m.group(1)}{base}", text)
    elif suffix == ".json":
        text = _JSON_PATH.sub(lambda m: m.group(1) + base, text)
    elif suffix == ".xml":
        text = _XML_SRC.sub(lambda m: m.group(1) + base, text)
    return text


def rewrite_tree(root: Path, base: str) -> int:
    """Rewrite every HTML, JS, CSS, JSON and XML file under root; files changed."""
    changed = 0
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix not in (".html", ".js", ".mjs", ".css",
                                                     ".json", ".xml"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = rewrite_text(path.name, text, base)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed += 1
    return changed


def compress_tree(root: Path) -> None:
    """`x.gz` beside every text or wasm file above _COMPRESS_MIN bytes."""
    for path in list(root.rglob("*")):
        if (path.is_file() and path.suffix in _COMPRESS
                and path.stat().st_size >= _COMPRESS_MIN):
            with path.open("rb") as src, open(f"{path}.gz", "wb") as raw, \
                    gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
                shutil.copyfileobj(src, out, 1 << 20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fetch-viewer",
        description=f"Fetch {PACKAGE} (pinned, checksum verified) for pacs_server's /viewer.")
    parser.add_argument("--dest", default=".viewer",
                        help="directory that holds ohif-<version>/ (viewer.path; ./.viewer)")
    parser.add_argument("--version", default=DEFAULT_VERSION,
                        help=f"pinned release to fetch (viewer.version; {DEFAULT_VERSION})")
    parser.add_argument("--tarball", type=Path,
                        help="a tarball made by `npm pack` elsewhere (offline install)")
    parser.add_argument("--if-npm", action="store_true",
                        help="without npm (and no --tarball), say so and exit 0")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    if is_installed(dest, args.version):
        print(f"{PACKAGE}@{args.version} is installed in {installed_dir(dest, args.version)}")
        return 0
    if args.if_npm and args.tarball is None and shutil.which("npm") is None:
        print(f"fetch-viewer: npm is not installed; /viewer will say how to install "
              f"{PACKAGE}", file=sys.stderr)
        return 0
    try:
        install(dest, args.version, args.tarball)
    except (FetchError, OSError) as exc:       # OSError: disk full, permissions
        print(f"fetch-viewer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
