"""The image's build context: every file the Dockerfile COPYs from it exists and is not
left out by .dockerignore (the viewer stage's `COPY scripts/fetch-viewer` once was, and
`docker build` stopped there: "file not found in build context or excluded by
.dockerignore")."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[2]


def ignore_patterns() -> list[tuple[bool, str]]:
    """(.dockerignore's patterns in order, as (negated, pattern))."""
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            out.append((negated, line.lstrip("!").rstrip("/")))
    return out


def _regex(pattern: str) -> re.Pattern[str]:
    # Docker's matcher: `*` and `?` stay within one path element, `**` spans any.
    out = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            part, re.escape(part))
    return re.compile(out)


def excluded(path: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern that matches the path, or one of its parent
    directories, decides."""
    p = PurePosixPath(path)
    candidates = [str(p), *(str(q) for q in p.parents if str(q) != ".")]
    verdict = False
    for negated, pattern in patterns:
        rx = _regex(pattern)
        if any(rx.fullmatch(c) for c in candidates):
            verdict = not negated
    return verdict


def copied_sources() -> list[str]:
    """The sources of the Dockerfile's COPY instructions that read the build context."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    sources = []
    for args in re.findall(r"^COPY\s+(.*)$", text, re.M):
        words = args.split()
        if any(w.startswith("--from") for w in words):
            continue
        sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def test_every_copied_file_is_in_the_build_context() -> None:
    patterns = ignore_patterns()
    sources = copied_sources()
    assert "scripts/fetch-viewer" in sources and "src" in sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such file in the tree"
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()
                                                and "__pycache__" not in f.parts]
        kept = [f for f in files if not excluded(str(f.relative_to(REPO)), patterns)]
        assert kept, f"COPY {source}: everything left out by .dockerignore"
        if path.is_file():
            assert kept == [path], f"COPY {source}: left out by .dockerignore"


def test_the_rule_leaves_out_what_docker_leaves_out() -> None:
    patterns = ignore_patterns()
    assert excluded("tests/unit/test_config.py", patterns)
    assert excluded("scripts/bench/run.py", patterns)
    assert excluded("src/pacs_server/__pycache__/app.cpython-311.pyc", patterns)
    assert not excluded("src/pacs_server/app.py", patterns)
    assert not excluded("docker/pacs_server.yaml", patterns)
    assert not excluded("scripts/fetch-viewer", patterns)
