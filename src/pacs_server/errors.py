"""Exceptions of the domain, factored out to avoid import loops.

Services raise these; `dicom/status.py` is the one place that turns them into DIMSE
status codes. They carry human-readable messages that end up in the Error Comment.
The process exit codes of every entry point live here too, beside the errors that
cause them.
"""

import enum
from collections.abc import Iterable


class ExitCode(enum.IntEnum):
    """Exit status of `pacs_server`, `store_scp` and the admin commands."""

    OK = 0
    STARTUP = 1          # port in use, storage not writable, database unopenable
    CONFIG = 2           # invalid configuration file, option or input file


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


class PathTaken(StorageUnavailable):
    """The archive path stays held by another process's store: nothing was placed, the
    sender should retry (answered as StorageUnavailable)."""


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


class TranscodeFailed(PacsError):
    """An instance cannot be converted to a transfer syntax the peer accepts."""


# --- worklist / MPPS ---------------------------------------------------------------

class NoSuchInstance(PacsError):
    """N-SET/N-GET on an SOP instance we do not hold."""


class InstanceExists(PacsError):
    """N-CREATE of an SOP instance UID that already exists."""


class InvalidAttributeValue(PacsError):
    """An attribute value is not allowed in this state or context."""


class StepFinalised(PacsError):
    """The procedure step is COMPLETED or DISCONTINUED and may not change any more."""

    error_id = 0xA710  # PS3.4 Table F.7.2-2: the Error ID of this Processing Failure


class _NamesAttributes(PacsError):
    """An error about given attributes; dicom/status.py lists their tags in the
    Attribute Identifier List (0000,1005)."""

    def __init__(self, message: str, attribute_tags: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.attribute_tags = [int(t) for t in attribute_tags]


class MissingAttribute(_NamesAttributes, DatasetMismatch):
    """Required (Type 1) attributes are absent (PS3.7 C.5.13, Missing Attribute)."""


class MissingAttributeValue(_NamesAttributes, DatasetMismatch):
    """Required attributes are present but empty (PS3.7 C.5.14, Missing Attribute Value)."""


class AttributeNotAllowed(_NamesAttributes):
    """The request touches attributes the operation may not set (PS3.4 Table F.7.2-1,
    "Not allowed" in the N-SET column)."""

# --- storage commitment ------------------------------------------------------------

class NoSuchAction(PacsError):
    """N-ACTION with an Action Type ID the SOP class does not define."""


class InvalidArgument(PacsError):
    """The Action Information of an N-ACTION lacks an attribute or has an invalid value."""


class ReportNotDelivered(PacsError):
    """An N-EVENT-REPORT did not reach the requester, or it did not answer Success."""

class InvalidWorklistItem(PacsError):
    """A worklist item to import is refused; the message names the item and the field."""


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


# --- DICOMweb (PS3.18; web/errors.py maps these to HTTP statuses) --------------------

class Forbidden(PacsError):
    """The client is known (or local policy decides) and may not do this."""


class NotAcceptable(PacsError):
    """None of the media types the client accepts can be produced (406)."""


class UnsupportedMediaType(PacsError):
    """A request body in a media type the service does not read (415)."""


class RequestTooLarge(PacsError):
    """A request body above the configured limit (413)."""


class RequestTimeout(PacsError):
    """The client stopped sending its request body (408)."""
