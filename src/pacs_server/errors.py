"""Exceptions of the domain, factored out to avoid import loops.

Services raise these; `dicom/status.py` is the one place that turns them into DIMSE
status codes. They carry human-readable messages that end up in the Error Comment.
"""


class PacsError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(PacsError):
    """The configuration file or an override is invalid. The message is one line."""


class StartupError(PacsError):
    """The server cannot start (port busy, storage not writable, index unopenable)."""


# --- storage / ingest ------------------------------------------------------------

class UnreadableDataset(PacsError):
    """The received bytes are not a dataset we can parse."""


class DatasetMismatch(PacsError):
    """The dataset lacks a required attribute or contradicts the request."""


class DuplicateInstance(PacsError):
    """The SOP Instance UID is already archived and the policy is `reject`."""


class StorageFull(PacsError):
    """No space (or quota) left on the archive filesystem."""


class StorageUnavailable(PacsError):
    """The archive directory cannot be written (permissions, read-only fs, I/O error)."""


class IndexUnavailable(PacsError):
    """The index did not answer (timeout, locked, connection lost)."""


# --- query / retrieve ------------------------------------------------------------

class InvalidQuery(PacsError):
    """The identifier is not a valid query for this information model and level."""


class TooManyMatches(PacsError):
    """More matches than `query.max_results` allows."""


class UnknownDestination(PacsError):
    """C-MOVE destination AE title is not a configured peer."""


class DestinationUnreachable(PacsError):
    """Could not associate with the C-MOVE destination."""


class MissingFile(PacsError):
    """An indexed instance's file is gone from the archive."""


# --- worklist / MPPS ---------------------------------------------------------------

class NoSuchInstance(PacsError):
    """N-SET/N-GET on an SOP instance we do not hold."""


class InstanceExists(PacsError):
    """N-CREATE of an SOP instance UID that already exists."""


class InvalidAttributeValue(PacsError):
    """An attribute value is not allowed in this state or context."""


class StepFinalised(PacsError):
    """The procedure step is COMPLETED or DISCONTINUED and may not change any more."""


# --- admin API (web/errors.py maps these to HTTP statuses) ---------------------------

class InvalidRequest(PacsError):
    """A request parameter or body is not valid."""


class NotAuthorized(PacsError):
    """No valid bearer token (or no token configured: the API is off)."""


class NotFound(PacsError):
    """The named association, AE, peer or route does not exist."""


class ConflictingRequest(PacsError):
    """The request contradicts the current state (entry from the config file, exists)."""


class ServiceUnavailable(PacsError):
    """The server cannot do this now (stopping, no index)."""
