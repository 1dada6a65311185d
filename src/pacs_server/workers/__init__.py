"""Worker processes on one host (`server.workers`): the supervisor, its workers, and the
control channel between them (docs/architecture.md, process model)."""
