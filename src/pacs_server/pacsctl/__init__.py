"""pacsctl: the administrator's command line over the admin API (/api/...)."""

from pacs_server.pacsctl.cli import main

__all__ = ["main"]
