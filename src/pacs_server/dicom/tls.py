"""TLS contexts for DICOM (PS3.15 B.9 BCP 195 profiles): the listener's and the one used
towards peers marked `tls: true`.

Both are built from the `tls` section. Every problem with it (missing file, unreadable
file, a key that does not match the certificate, an unknown cipher list) becomes one
`StartupError` line naming the key, so `pacs_server` exits with code 1 instead of a
traceback. `TlsContexts` holds the current pair and swaps it on SIGHUP: a new
association takes whatever context is current when it starts, a live one keeps the
context its socket was wrapped with.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import structlog

from pacs_server.config import TlsConfig
from pacs_server.errors import StartupError

log = structlog.get_logger(__name__)

# BCP 195 (RFC 9325) as PS3.15 B.9 adopts it: forward secrecy (ECDHE/DHE) and AEAD only.
# TLS 1.3 suites are not chosen by this list: OpenSSL's TLS 1.3 defaults already meet it.
BCP195_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
])

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _readable(cfg: TlsConfig, key: str) -> str:
    path = getattr(cfg, key)
    try:
        with Path(path).open("rb") as fh:
            fh.read(1)
    except FileNotFoundError:
        raise StartupError(f"tls.{key}: {path}: no such file") from None
    except IsADirectoryError:
        raise StartupError(f"tls.{key}: {path}: is a directory, expected a PEM file") from None
    except OSError as exc:
        raise StartupError(f"tls.{key}: {path}: cannot read: {exc.strerror or exc}") from None
    return str(path)


def _base_context(cfg: TlsConfig, purpose: ssl.Purpose) -> ssl.SSLContext:
    side = ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH \
        else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = _VERSIONS[cfg.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.set_ciphers(cfg.ciphers or BCP195_CIPHERS)
    except ssl.SSLError:
        raise StartupError(f"tls.ciphers: {cfg.ciphers!r} selects no cipher OpenSSL "
                           "knows") from None
    return ctx


def _load_identity(ctx: ssl.SSLContext, cfg: TlsConfig) -> None:
    cert, key = _readable(cfg, "cert_path"), _readable(cfg, "key_path")
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        if "key values mismatch" in reason:
            raise StartupError(f"tls.key_path: {key} does not match the certificate in "
                               f"tls.cert_path {cert}") from None
        if "pem" in reason or "no start line" in reason:
            # OpenSSL does not say which of the two files failed; try each alone.
            raise StartupError(_which_unparsable(cert, key)) from None
        raise StartupError(f"tls.cert_path/tls.key_path: {cert}, {key}: {reason}") from None


def _which_unparsable(cert: str, key: str) -> str:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cert)
    except ssl.SSLError:
        return f"tls.cert_path: {cert}: not a PEM certificate"
    return f"tls.key_path: {key}: not a PEM private key (or encrypted, which is not supported)"


def _load_ca(ctx: ssl.SSLContext, cfg: TlsConfig) -> None:
    ca = _readable(cfg, "ca_path")
    try:
        ctx.load_verify_locations(ca)
    except ssl.SSLError:
        raise StartupError(f"tls.ca_path: {ca}: not a PEM certificate bundle") from None


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """The listener's context: our certificate; client certificates required and
    verified against ca_path when it is set (mutual TLS)."""
    ctx = _base_context(cfg, ssl.Purpose.CLIENT_AUTH)
    _load_identity(ctx, cfg)
    if cfg.ca_path:
        _load_ca(ctx, cfg)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def https_context(cfg: TlsConfig) -> ssl.SSLContext:
    """The HTTP side's context (monitoring.https): our certificate, the same versions and
    ciphers; no client certificate asked (DICOMweb authenticates with a bearer token or
    HTTP Basic, which browsers can send)."""
    ctx = _base_context(cfg, ssl.Purpose.CLIENT_AUTH)
    _load_identity(ctx, cfg)
    return ctx


def client_context(cfg: TlsConfig) -> ssl.SSLContext:
    """The context for associations we open to peers marked `tls: true`: the peer's
    certificate is verified (ca_path, else the system store) and ours is presented."""
    ctx = _base_context(cfg, ssl.Purpose.SERVER_AUTH)
    if cfg.ca_path:
        _load_ca(ctx, cfg)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cfg.cert_path and cfg.key_path:
        _load_identity(ctx, cfg)
    return ctx


def peer_subject(cert: dict[str, object] | None) -> str:
    """`CN=..., O=...` of a peer certificate as `SSLSocket.getpeercert()` returns it."""
    if not cert:
        return ""
    parts = []
    for rdn in cert.get("subject", ()):  # type: ignore[attr-defined]
        for name, value in rdn:
            parts.append(f"{_SHORT.get(name, name)}={value}")
    return ", ".join(parts)


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}


class TlsContexts:
    """The current server and client contexts; `reload()` swaps both (SIGHUP).

    A reload that fails (a certificate being replaced, a mismatched key) keeps the
    previous contexts and logs why, so a bad edit never takes the TLS port down.
    """

    def __init__(self, cfg: TlsConfig) -> None:
        self._lock = threading.Lock()
        self._cfg = cfg
        self._server = server_context(cfg)
        self._client = client_context(cfg)

    @property
    def server(self) -> ssl.SSLContext:
        with self._lock:
            return self._server

    @property
    def client(self) -> ssl.SSLContext:
        with self._lock:
            return self._client

    def reload(self, cfg: TlsConfig) -> bool:
        """Re-read certificates and keys; returns whether the new ones are in use."""
        try:
            server, client = server_context(cfg), client_context(cfg)
        except StartupError as exc:
            log.error("tls.reload_rejected", error=str(exc))
            return False
        with self._lock:
            self._cfg, self._server, self._client = cfg, server, client
        log.info("tls.reloaded", cert_path=cfg.cert_path, ca_path=cfg.ca_path or None,
                 min_version=cfg.min_version)
        return True
