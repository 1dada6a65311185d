"""QueryService: C-FIND results and retrieve resolution over the index.

Requests arrive as `FindRequest` (built by dicom/identifiers.py). The index matches
them and streams typed `Match` rows (`index/reader.py`); this module builds the answers
(`services/answers.py`): exactly the requested keys plus the ones PS3.4 C.4.1.1.3 asks
for, filled from index columns, computed counts, or the stored header (never from files),
as pydicom Datasets or, for the C-FIND SCP, already encoded.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from pacs_server.config import QueryConfig
from pacs_server.errors import InvalidQuery, TooManyMatches
from pacs_server.index.attributes import QR_ATTRIBUTES, QR_LEVELS, InformationModel, Level
from pacs_server.index.matching import check_range, is_universal
from pacs_server.index.repository import IndexRepository, Match, StoredRef
from pacs_server.services import answers
from pacs_server.services.answers import Element

# Keys the SCP adds to every response (PS3.4 C.4.1.1.3.2, C.6.1.1.5/C.6.2.1).
_ALWAYS = {"QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability",
           "SpecificCharacterSet"}


@dataclass(frozen=True)
class QueryKey:
    """One element of the request identifier."""

    tag: int
    keyword: str
    vr: str
    value: str                  # the matching value as text; "" = universal
    element: DataElement | None = None


@dataclass(frozen=True)
class FindRequest:
    """A C-FIND/C-MOVE/C-GET identifier, decoded."""

    model: InformationModel     # PATIENT | STUDY (root)
    level: str                  # as received; validate() checks it is a Level
    keys: tuple[QueryKey, ...] = field(default_factory=tuple)
    combined_datetime: bool = False   # negotiated PS3.4 C.2.2.2.5.1 combined matching


class QueryService:
    """Matching and result building; `reconfigure` swaps the reloadable query section."""

    def __init__(self, repo: IndexRepository, cfg: QueryConfig, ae_title: str) -> None:
        self._repo = repo
        self._cfg = cfg
        self._ae_title = ae_title

    def reconfigure(self, cfg: QueryConfig) -> None:
        self._cfg = cfg

    def validate(self, req: FindRequest) -> None:
        """Raises InvalidQuery for a level the information model does not have, or a
        date or time key that is not a value, a range or a list of them."""
        if req.level not in QR_LEVELS:
            raise InvalidQuery(f"QueryRetrieveLevel {req.level!r} is not valid")
        if req.model == "STUDY" and req.level == "PATIENT":
            raise InvalidQuery("Study Root has no PATIENT level")
        for key in req.keys:
            check_range(key.keyword or f"{key.tag:08X}", key.vr, key.value)

    async def find(self, req: FindRequest,
                   batch: int = 200) -> AsyncGenerator[list[Dataset], None]:
        """Yield response identifiers in batches as the rows stream from the index.

        Raises:
            InvalidQuery: bad level for the model.
            TooManyMatches: more than query.max_results matches (after yielding that many).
        """
        async with aclosing(self._answers(req, batch)) as batches:
            async for found in batches:
                yield [answers.to_dataset(a) for a in found]

    async def find_encoded(self, req: FindRequest, implicit_vr: bool,
                           batch: int = 200) -> AsyncIterator[list[bytes]]:
        """`find()`, each identifier already encoded in Implicit (or Explicit) VR Little
        Endian: the bytes pydicom would write for `find()`'s Dataset."""
        async with aclosing(self._answers(req, batch)) as batches:
            async for found in batches:
                yield [answers.encode(a, implicit_vr) for a in found]

    async def _answers(self, req: FindRequest,
                       batch: int) -> AsyncGenerator[list[list[Element]], None]:
        self.validate(req)
        cfg = self._cfg
        limit = cfg.max_results
        sent = 0
        async with aclosing(self._matching(req, cast(Level, req.level), batch)) as rows_iter:
            async for rows in rows_iter:
                out = [self._response(req, row) for row in rows]
                if limit and sent + len(out) > limit:
                    if limit - sent > 0:
                        yield out[:limit - sent]
                    raise TooManyMatches(f"more than {limit} matches; refine the query")
                sent += len(out)
                yield out

    async def resolve(self, req: FindRequest) -> list[StoredRef]:
        """Every stored instance under the entities the identifier selects (C-MOVE/C-GET)."""
        self.validate(req)
        if all(is_universal(k.value) for k in req.keys if k.keyword != "QueryRetrieveLevel"):
            raise InvalidQuery("a retrieve needs at least one unique key")
        refs: list[StoredRef] = []
        async with aclosing(self._matching(req, "IMAGE", 1000, within=req.level,
                                           refs_only=True)) as rows:
            async for batch in rows:
                refs.extend(found.ref for found in batch)
        return refs

    def _matching(self, req: FindRequest, level: Level, batch: int,
                  within: str | None = None,
                  refs_only: bool = False) -> AsyncGenerator[list[Match], None]:
        keys = [k for k in req.keys if k.keyword not in _ALWAYS]
        return self._repo.find(level, keys, within=within, batch=batch,
                               case_sensitive_names=self._cfg.case_sensitive_names,
                               combined_datetime=req.combined_datetime, refs_only=refs_only)

    def _response(self, req: FindRequest, row: Match) -> list[Element]:
        """The answer for one match: the requested keys plus the ones always returned."""
        out: list[Element] = []
        for key in req.keys:
            if key.keyword in _ALWAYS:
                continue
            found = row.indexed(key.keyword)
            if found is not None:
                out.append(_put(key, _column_value(*found)))
                continue
            if QR_ATTRIBUTES.indexed(key.keyword):
                out.append(_put(key, None))     # below the query level: returned empty
                continue
            header = row.header()
            if key.tag in header:
                elem = header[key.tag]
                out.append((key.tag, elem.VR,
                            DataElement(key.tag, elem.VR, _decoded(elem.value))))
            else:
                out.append(_put(key, None))
        out += [(0x00080052, "CS", req.level), (0x00080054, "AE", self._ae_title),
                (0x00080056, "CS", "ONLINE")]
        if answers.has_non_ascii(out):
            out.append((answers.CHARSET_TAG, "CS", answers.UTF8))
        return out


def _column_value(value: Any, kind: str) -> Any:
    if value is None or value == "":
        return None
    if kind in ("count", "int"):
        return str(int(value))
    if kind == "multi":
        return str(value).split("\\")
    return str(value)


def _put(key: QueryKey, value: Any) -> Element:
    if key.vr == "SQ":
        return key.tag, "SQ", DataElement(key.tag, "SQ", DicomSequence([]))
    return key.tag, key.vr, value


def _decoded(value: Any) -> Any:
    """A stored header value that can be re-encoded in the response's character set.

    Sequence items read from the header keep their text as raw bytes of the stored
    character set and pydicom would write those bytes unchanged; rebuilding each item
    from its decoded elements makes them plain text, encoded like the rest (ISO_IR 192).
    """
    if not isinstance(value, DicomSequence):
        return value
    items = []
    for item in value:
        clean = Dataset()
        for elem in item:             # iterating decodes with the item's character set
            if elem.tag != 0x00080005:
                clean.add(DataElement(elem.tag, elem.VR, _decoded(elem.value)))
        items.append(clean)
    return DicomSequence(items)


def key_vr(tag: int, fallback: str) -> str:
    """The VR to answer with: the dictionary's, else what the request used."""
    try:
        vr = dictionary_VR(Tag(tag))
    except KeyError:
        return fallback or "UN"
    if " or " in vr:
        return fallback if fallback and " or " not in fallback else vr.split(" or ")[0]
    return vr
