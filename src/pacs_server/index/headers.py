"""The stored headers: the dataset without bulk data that the index keeps per level.

Ingest encodes them (`services/ingest.py`); the reader decodes them to match and answer
attributes that have no column.
"""

from __future__ import annotations

from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from pacs_server.values import value_text


def decode_header(header: bytes, syntax: str) -> Dataset:
    """Rebuild a dataset from header bytes kept in the index (empty bytes: empty dataset)."""
    if not header:
        return Dataset()
    return read_dataset(BytesIO(header), syntax == ImplicitVRLittleEndian,
                        syntax != ExplicitVRBigEndian)


def header_text(ds: Dataset, tag: int) -> str:
    """The value of `tag` as matching text; "" when absent or undecodable."""
    if tag not in ds:
        return ""
    try:
        return value_text(ds[tag].value)
    except Exception:  # an undecodable stored value simply does not match
        return ""
