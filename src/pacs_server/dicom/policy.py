"""Who may associate, from where, how often and how many at once: the one decision
taken for every A-ASSOCIATE-RQ, and the bookkeeping of connections not yet associated.

`AssociationPolicy.decide()` is consulted by the acceptor (dicom/transport.py) after
the A-ASSOCIATE-RQ is decoded and before pynetdicom negotiates; a refusal becomes an
A-ASSOCIATE-RJ (PS3.8 9.3.4):

  calling AE not allowed, known AE from a host it is not pinned to, plain TCP where
  TLS is required    rejected-permanent, service-user, calling AE title not recognised
  max_associations, concurrency or rate limit exceeded, or paused (`pause()`: the
  answer a modality reads as "try again later"; live associations continue)
                     rejected-transient, service-provider (presentation), local limit
                     exceeded

The allowed calling AEs are the config file's `access_control.allowed_ae_titles` and
the entries added through the admin API (`set_api_entries`, kept in the index); the
config file is authoritative for a title it lists.

`admit_connection()` runs in the accept loop, before any thread exists for the
connection: it caps the connections that have not associated yet, per address and in
total, so connections that never send a byte cannot starve everyone else.

Every limit is read from the current configuration (`reconfigure`, SIGHUP); pause and
the API's entries change at once (the admin API).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from pacs_server.config import AccessControlConfig, AllowedAE, LimitsConfig
from pacs_server.metrics import Metrics

log = structlog.get_logger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 Table 9-21.
PERMANENT_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
TRANSIENT_LOCAL_LIMIT = (0x02, 0x03, 0x02)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Refusal:
    """Why an association is refused and the A-ASSOCIATE-RJ that says so."""

    reason: str          # metrics label and log field
    rjt: tuple[int, int, int]
    security: bool       # logged as a security event (who), not a capacity one (how many)


@dataclass(frozen=True)
class _Rule:
    networks: tuple[Network, ...]   # empty: any host
    tls: bool


@dataclass(frozen=True)
class AccessEntry:
    """A calling AE allowed through the admin API; from `host` only when it is set."""

    ae_title: str
    host: str = ""


class TokenBucket:
    """`per_minute` tokens, refilled continuously; a burst may use them all at once."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.capacity / 60)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _compile(access: AccessControlConfig,
             api: Iterable[AccessEntry]) -> tuple[bool, dict[str, _Rule]]:
    anyone = False
    rules: dict[str, _Rule] = {}
    for entry in access.allowed_ae_titles:
        if isinstance(entry, AllowedAE):
            nets = tuple(ipaddress.ip_network(h, strict=False) for h in entry.hosts)
            rules[entry.ae_title.strip()] = _Rule(nets, entry.tls)
        elif entry == "*":
            anyone = True
        else:
            rules[entry.strip()] = _Rule((), False)
    # The API's entries for a title: any host if one of them has none, else their hosts.
    hosts: dict[str, list[Network] | None] = {}
    for e in api:
        title = e.ae_title.strip()
        if title in rules:
            continue                     # the config file decides what it lists
        known = hosts.setdefault(title, [])
        if not e.host or known is None:
            hosts[title] = None
        else:
            known.append(ipaddress.ip_network(e.host, strict=False))
    for title, listed in hosts.items():
        rules[title] = _Rule(tuple(listed or ()), False)
    return anyone, rules


def _host(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


class AssociationPolicy:
    """Access control and limits for every listener of one server (plain and TLS)."""

    def __init__(self, access: AccessControlConfig, limits: LimitsConfig,
                 max_associations: int, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._max = max_associations
        self._ae_buckets: dict[str, TokenBucket] = {}
        self._addr_buckets: dict[str, TokenBucket] = {}
        self._active_ae: dict[str, int] = defaultdict(int)
        self._active_addr: dict[str, int] = defaultdict(int)
        self._active = 0
        self._pending_addr: dict[str, int] = defaultdict(int)
        self._pending = 0
        self._paused = False
        self._api: tuple[AccessEntry, ...] = ()
        self.reconfigure(access, limits)

    def reconfigure(self, access: AccessControlConfig, limits: LimitsConfig) -> None:
        with self._lock:
            self._access = access
            anyone, rules = _compile(access, self._api)
            self._anyone, self._rules = anyone, rules
            self._require_tls = access.require_tls
            self._limits = limits
            # New rates start full; kept buckets keep their level but take the new size.
            for bucket in self._ae_buckets.values():
                bucket.capacity = float(limits.associations_per_minute_per_ae)
            for bucket in self._addr_buckets.values():
                bucket.capacity = float(limits.associations_per_minute_per_address)

    def set_api_entries(self, entries: Iterable[AccessEntry]) -> None:
        """Replace the calling AEs allowed through the admin API (applied at once)."""
        with self._lock:
            self._api = tuple(entries)
            self._anyone, self._rules = _compile(self._access, self._api)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Refuse new associations (transient) until `resume()`; live ones continue."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    # ---------------------------------------------------------------- before associating
    def admit_connection(self, address: str) -> bool:
        """Count a new connection as unassociated, or say it must be closed at once."""
        with self._lock:
            lim = self._limits
            if self._pending >= lim.unassociated_total:
                reason = "unassociated_total"
            elif self._pending_addr[address] >= lim.unassociated_per_address:
                reason = "unassociated_per_address"
            else:
                self._pending += 1
                self._pending_addr[address] += 1
                return True
        self._metrics.connections_refused.labels(reason).inc()
        log.debug("connection.refused", peer=address, reason=reason)
        return False

    def connection_done(self, address: str) -> None:
        """The connection associated, was refused, or closed: no longer unassociated."""
        with self._lock:
            self._pending -= 1
            self._pending_addr[address] -= 1
            if self._pending_addr[address] <= 0:
                del self._pending_addr[address]

    def unassociated(self) -> int:
        with self._lock:
            return self._pending

    # ---------------------------------------------------------------- the decision
    def decide(self, calling_ae: str, address: str, tls: bool,
               tls_subject: str = "") -> Refusal | None:
        """None if the association may proceed (it is then counted as active until
        `release()`), else why not. Refusals are counted and logged here."""
        calling = calling_ae.strip()
        if self._paused:
            refusal: Refusal | None = Refusal("paused", TRANSIENT_LOCAL_LIMIT, False)
        else:
            refusal = self._check_access(calling, address, tls)
        if refusal is None:
            refusal = self._take_slot(calling, address)
        if refusal is not None:
            self._metrics.associations_rejected.labels(refusal.reason).inc()
            fields: dict[str, Any] = {"peer": address, "calling_ae": calling,
                                      "reason": refusal.reason, "tls": tls}
            if tls_subject:
                fields["tls_subject"] = tls_subject
            if refusal.security:
                log.warning("security.association_refused", **fields)
            elif refusal.reason == "paused":
                log.info("association.refused_paused", **fields)
            else:
                log.warning("association.limit_exceeded", **fields)
        return refusal

    def _check_access(self, calling: str, address: str, tls: bool) -> Refusal | None:
        with self._lock:
            rule = self._rules.get(calling)
            anyone, require_tls = self._anyone, self._require_tls
        if rule is None:
            if not anyone:
                return Refusal("calling_ae_not_allowed", PERMANENT_AE_NOT_RECOGNISED, True)
            rule = _Rule((), False)
        if rule.networks:
            host = _host(address)
            if host is None or not any(host in net for net in rule.networks):
                return Refusal("host_not_allowed", PERMANENT_AE_NOT_RECOGNISED, True)
        if (rule.tls or require_tls) and not tls:
            return Refusal("tls_required", PERMANENT_AE_NOT_RECOGNISED, True)
        return None

    def _take_slot(self, calling: str, address: str) -> Refusal | None:
        now = time.monotonic()
        with self._lock:
            lim = self._limits
            per_ae = lim.concurrent_per_ae or self._max
            per_addr = lim.concurrent_per_address or self._max
            if self._active >= self._max:
                reason = "max_associations"
            elif self._active_ae[calling] >= per_ae:
                reason = "concurrent_per_ae"
            elif self._active_addr[address] >= per_addr:
                reason = "concurrent_per_address"
            elif not self._bucket(self._ae_buckets, calling,
                                  lim.associations_per_minute_per_ae, now):
                reason = "rate_per_ae"
            elif not self._bucket(self._addr_buckets, address,
                                  lim.associations_per_minute_per_address, now):
                reason = "rate_per_address"
            else:
                self._active += 1
                self._active_ae[calling] += 1
                self._active_addr[address] += 1
                return None
        return Refusal(reason, TRANSIENT_LOCAL_LIMIT, False)

    @staticmethod
    def _bucket(buckets: dict[str, TokenBucket], key: str, per_minute: int,
                now: float) -> bool:
        if per_minute <= 0:
            return True
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) > 10_000:   # forget idle keys, or spoofed names grow the map
                for k in [k for k, b in buckets.items() if b.tokens >= b.capacity - 1]:
                    del buckets[k]
            bucket = buckets[key] = TokenBucket(per_minute, now)
        return bucket.take(now)

    def release(self, calling_ae: str, address: str) -> None:
        """An association admitted by `decide()` has ended."""
        calling = calling_ae.strip()
        with self._lock:
            self._active -= 1
            for counts, key in ((self._active_ae, calling), (self._active_addr, address)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]
