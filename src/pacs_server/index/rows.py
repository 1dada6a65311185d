"""The rows of the hierarchy's tables that an InstanceRecord gives, as the index writer
inserts them (its general path and index/batch_insert.py alike)."""

from __future__ import annotations

from typing import Any

from pacs_server.index.attributes import QR_ATTRIBUTES
from pacs_server.index.records import InstanceRecord
from pacs_server.index.text import name_key

# Per level: the (column, default) pairs a record provides, and the Person Name columns
# with their case-folded copy.
_RECORD_COLUMNS = {level: tuple((r.column, None if r.kind == "int" else "")
                                for r in QR_ATTRIBUTES.recorded(level))
                   for level in QR_ATTRIBUTES.levels}
_NORMS = {level: tuple((r.column, r.norm) for r in QR_ATTRIBUTES.at(level) if r.norm)
          for level in QR_ATTRIBUTES.levels}


def level_values(level: str, values: dict[str, Any]) -> dict[str, Any]:
    """The columns of `level`'s table a record fills, with the case-folded name copies."""
    out = {column: values.get(column, default) for column, default in _RECORD_COLUMNS[level]}
    for column, norm in _NORMS[level]:
        out[norm] = name_key(out[column] or "")
    return out


def instance_row(rec: InstanceRecord, series_pk: int) -> dict[str, Any]:
    """The instances row of `rec`."""
    return dict(
        level_values("IMAGE", rec.instance),
        sop_instance_uid=rec.sop_instance_uid,
        series_pk=series_pk,
        sop_class_uid=rec.sop_class_uid,
        transfer_syntax_uid=rec.transfer_syntax_uid,
        path=str(rec.rel_path),
        size=rec.size,
        source_ae=rec.source_ae,
        received_at=rec.received_at,
        header=rec.header,
        header_syntax=rec.header_syntax,
    )


def series_row(rec: InstanceRecord, study_pk: int) -> dict[str, Any]:
    """The series row of `rec`'s new series (the count triggers keep num_instances)."""
    return dict(
        level_values("SERIES", rec.series),
        series_instance_uid=rec.series_instance_uid,
        study_pk=study_pk,
        num_instances=0,
        header=rec.header,
        header_syntax=rec.header_syntax,
    )
