"""A stored worklist item as plain values: decoded from its DICOM JSON, matched against
an MWL identifier, and answered as a services/answers.py element list.

A C-FIND decodes every candidate item, so an item is not a pydicom Dataset here but a
dict `tag -> (VR, value)`: a value is None (empty), a str, a list (a multi-valued
element; numbers as the JSON has them), for SQ a list of items, or a `DataElement`
(binary values). The response is encoded by `answers.encode` in the context's transfer
syntax, the bytes pydicom would write for the Dataset the same answer used to be
(tests/unit/test_worklist_answers.py compares them against pydicom's JSON decoding of
the item); values were checked on import (services/worklist_import.py) and are not
validated again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pacs_server.index.attributes import Kind
from pacs_server.index.matching import VR_KIND, combine_range, is_universal, matches
from pacs_server.services import answers
from pacs_server.services.answers import Element

Item = dict[int, tuple[str, Any]]

SPS_TAG = 0x00400100
CHARSET_TAG = answers.CHARSET_TAG
# Not attributes of an item: the character set of the request, and a Query/Retrieve
# Level some SCUs (findscu -W -k) put into worklist identifiers.
NOT_KEYS = frozenset({CHARSET_TAG, 0x00080052})
# Date and time keys matched as one date-time when combined matching is negotiated
# (PS3.4 C.2.2.2.5.1).
_DATE_TIME_PAIRS = ((0x00400002, 0x00400003), (0x00080020, 0x00080030))
# The Scheduled Procedure Step return keys (PS3.4 Table K.6-1) answered, zero length when
# the item has none, for a query whose sequence item is empty (as dcmtk's wlmscpfs does).
SPS_RETURN_KEYS = (0x00080060, 0x00321070, 0x00400001, 0x00400002, 0x00400003, 0x00400004,
                   0x00400005, 0x00400006, 0x00400007, 0x00400009, 0x00400010, 0x00400011,
                   0x00400012, 0x00400020, 0x00400400)


def load_item(text: str) -> Item:
    """The item from its stored DICOM JSON (PS3.18 F.2)."""
    return _from_json(json.loads(text))


def _from_json(data: dict[str, Any]) -> Item:
    out: Item = {}
    for key, obj in data.items():
        tag, vr = int(key, 16), obj["vr"]
        if "Value" not in obj:
            if "InlineBinary" in obj or "BulkDataURI" in obj:
                kind = "InlineBinary" if "InlineBinary" in obj else "BulkDataURI"
                out[tag] = (vr, DataElement.from_json(Dataset, key, vr, obj[kind], kind))
            else:
                out[tag] = (vr, [] if vr == "SQ" else None)
            continue
        values = obj["Value"]
        if vr == "SQ":
            out[tag] = (vr, [_from_json(i) for i in values])
            continue
        if vr == "PN":
            values = ["=".join(v.get(g, "") for g in ("Alphabetic", "Ideographic",
                                                      "Phonetic")).rstrip("=")
                      if isinstance(v, dict) else v for v in values]
        out[tag] = (vr, values[0] if len(values) == 1 else values)
    return out


# ---------------------------------------------------------------------- the query

@dataclass(frozen=True, slots=True)
class Key:
    """One key of the identifier, read once per request rather than once per item."""

    tag: int
    vr: str                     # for a key the item lacks: the dictionary's VR
    text: str                   # the matching value as text ("" and "*" universal)
    kind: Kind                  # how it matches (index/matching.VR_KIND); "" for SQ
    universal: bool
    # SQ: the keys of the query's item; None for a zero-length sequence or an empty
    # item (the stored items are returned whole).
    items: tuple[Key, ...] | None = None
    selective: bool = False     # SQ: its item has a key that is not universal


def compile_query(query: Dataset) -> tuple[Key, ...]:
    """The identifier's keys (not the request's character set or a Q/R level)."""
    keys = []
    for elem in query:
        tag = int(elem.tag)
        if tag in NOT_KEYS or elem.tag.group == 0:
            continue
        if elem.VR == "SQ":
            wanted = elem.value[0] if elem.value else None
            items = compile_query(wanted) if wanted is not None and len(wanted) else None
            keys.append(Key(tag, "SQ", "", cast(Kind, ""), True, items,
                            wanted is not None and _has_keys(wanted)))
            continue
        text = query_text(elem.value)
        keys.append(Key(tag, _vr(tag, elem.VR), text, VR_KIND.get(elem.VR, "str"),
                        is_universal(text)))
    return tuple(keys)


def _keys(query: Dataset | tuple[Key, ...]) -> tuple[Key, ...]:
    return compile_query(query) if isinstance(query, Dataset) else query


def _has_keys(item: Dataset) -> bool:
    return any(e.VR == "SQ" and e.value and _has_keys(e.value[0])
               or e.VR != "SQ" and not is_universal(query_text(e.value)) for e in item)


# ---------------------------------------------------------------------- matching

def item_matches(item: Item, query: Dataset | tuple[Key, ...], combined: bool = False
                 ) -> bool:
    """Does a stored item match every key of the identifier (PS3.4 C.2.2.2)?

    A sequence key matches when one of the stored items matches all the keys of the
    query's item; a zero-length sequence or an item without keys matches anything
    (C.2.2.2.6). Person names match case-insensitively (as Q/R C-FIND by default).
    """
    keys = _keys(query)
    pairs: set[int] = set()
    if combined:
        by_tag = {k.tag: k for k in keys}
        for date_tag, time_tag in _DATE_TIME_PAIRS:
            day, clock = by_tag.get(date_tag), by_tag.get(time_tag)
            if day is None or clock is None or day.universal or clock.universal:
                continue
            pairs.update((date_tag, time_tag))
            stored = stored_text(item, date_tag) + stored_text(item, time_tag)
            if not matches(stored, combine_range(day.text, clock.text), "datetime"):
                return False
    for key in keys:
        if key.universal and not key.selective or key.tag in pairs:
            continue
        if key.items is not None and key.selective:
            wanted = key.items
            if not any(item_matches(s, wanted, combined) for s in _items(item, key.tag)):
                return False
            continue
        if key.vr == "SQ":
            continue
        if not matches(stored_text(item, key.tag), key.text, key.kind,
                       case_sensitive_names=False):
            return False
    return True


def _items(item: Item, tag: int) -> list[Item]:
    """The stored items of sequence `tag` (none if the item has no such sequence)."""
    vr, value = item.get(tag, ("", None))
    return value or [] if vr == "SQ" else []


# ---------------------------------------------------------------------- the answer

def response(item: Item, query: Dataset | tuple[Key, ...]) -> list[Element]:
    """Exactly the requested keys, valued from the item (zero length where it has none).

    A requested sequence with a zero-length value or one empty item returns the stored
    items whole (the Scheduled Procedure Step item completed with the return keys of
    Table K.6-1); otherwise each stored item with the query item's keys. Non-ASCII text
    makes the answer ISO_IR 192 (PS3.5 6.1.2.3; the stored values are Unicode).
    """
    out = _pick(item, _keys(query))
    if answers.has_non_ascii(out):
        out.append((CHARSET_TAG, "CS", answers.UTF8))
    return out


def _pick(item: Item, keys: tuple[Key, ...]) -> list[Element]:
    out: list[Element] = []
    for key in keys:
        tag = key.tag
        if key.vr == "SQ":
            items = _items(item, tag)
            if key.items is not None:
                out.append((tag, "SQ", [_pick(s, key.items) for s in items]))
            elif tag == SPS_TAG:
                out.append((tag, "SQ", [_completed_step(s) for s in items]))
            else:
                out.append((tag, "SQ", [elements(s) for s in items]))
        elif tag in item:
            out.append(_stored(tag, *item[tag]))
        else:
            out.append((tag, key.vr, None))
    return out


def _stored(tag: int, vr: str, value: Any) -> Element:
    if vr == "SQ":
        return tag, vr, [elements(s) for s in value or []]
    return tag, vr, value


def elements(item: Item) -> list[Element]:
    """The whole item as an answer's element list."""
    return [_stored(tag, vr, value) for tag, (vr, value) in item.items()]


def _completed_step(step: Item) -> list[Element]:
    return elements(step) + [(tag, _vr(tag, ""), None) for tag in SPS_RETURN_KEYS
                           if tag not in step]


def _vr(tag: int, fallback: str) -> str:
    try:
        vr = dictionary_VR(Tag(tag))
    except KeyError:
        return fallback or "UN"
    return vr.split(" or ")[0] if " or " in vr else vr


# ---------------------------------------------------------------------- values as text

def stored_text(item: Item, tag: int) -> str:
    """The item's value of `tag` as matching text ("" if it has none)."""
    if tag not in item:
        return ""
    value = item[tag][1]
    return query_text(value.value if isinstance(value, DataElement) else value)


def query_text(value: Any) -> str:
    """A value (of a query or of an item) as matching text: multiple values joined
    with backslashes, binary values empty."""
    if value is None or isinstance(value, bytes):
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()
