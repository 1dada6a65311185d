"""The admin API's bearer token: `admin.token`, or the first line of `admin.token_file`.

Read by the server (at start and on SIGHUP) and by pacsctl --config.
"""

from __future__ import annotations

from pathlib import Path

from pacs_server.config import Config
from pacs_server.errors import StartupError


def read_token(cfg: Config) -> str:
    """admin.token, or the first line of admin.token_file ("" = API off).

    Raises:
        StartupError: the token file cannot be read or holds a short token.
    """
    if cfg.admin.token:
        return cfg.admin.token
    if not cfg.admin.token_file:
        return ""
    try:
        lines = Path(cfg.admin.token_file).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"admin.token_file {cfg.admin.token_file} cannot be read: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
    token = lines[0].strip() if lines else ""
    if len(token) < 16:
        raise StartupError(f"admin.token_file {cfg.admin.token_file}: the token must be "
                           "at least 16 characters")
    return token
