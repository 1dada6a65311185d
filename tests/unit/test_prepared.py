"""index/prepared.py: the general path's statements on SQLite's cursor write the rows
SQLAlchemy's own execution writes, and fail as it fails."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, create_engine, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from pacs_server.index.models import Base, Patient, Study
from pacs_server.index.prepared import Prepared, PreparedInsert

_STUDIES = cast(Table, Study.__table__)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = create_engine(f"sqlite:///{tmp_path / 'index.db'}")
    Base.metadata.create_all(eng)
    return eng


def _study(uid: str, patient_pk: int) -> dict[str, Any]:
    # Some columns left out: they take their defaults, as through insert(Study).
    return dict(study_instance_uid=uid, patient_pk=patient_pk, study_date="20240101",
                header=b"\x00\x01binary", updated_at=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC))


def test_a_row_inserted_on_the_cursor_reads_back_as_one_inserted_by_sqlalchemy(
        engine: Engine) -> None:
    with engine.begin() as conn:
        patient = PreparedInsert(cast(Table, Patient.__table__), returning=True).insert_pk(
            conn, dict(patient_id="P1", patient_name="DOE^JANE"))
        ours = PreparedInsert(_STUDIES, returning=True).insert_pk(conn, _study("1.2.3", patient))
        theirs = conn.execute(insert(Study).returning(Study.pk),
                              _study("1.2.4", patient)).scalar_one()
        a, b = (conn.execute(select(Study).where(Study.pk == pk)).one()._asdict()
                for pk in (ours, theirs))
    assert ours != theirs
    for row in (a, b):
        del row["pk"], row["study_instance_uid"]
    assert a == b
    assert a["header"] == b"\x00\x01binary" and a["modalities"] == "" and a["num_series"] == 0
    assert a["updated_at"].replace(tzinfo=UTC) == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_a_unique_conflict_is_sqlalchemys_integrity_error_naming_the_column(
        engine: Engine) -> None:
    insert_study = PreparedInsert(_STUDIES, returning=True)
    with engine.begin() as conn:
        insert_study.insert_pk(conn, _study("1.2.3", 1))
        with pytest.raises(IntegrityError) as caught:
            insert_study.insert_pk(conn, _study("1.2.3", 1))
    assert "study_instance_uid" in str(caught.value.orig)


def test_a_lookup_binds_by_name_and_answers_tuples(engine: Engine) -> None:
    by_uid = Prepared(select(Study.pk, Study.study_date).where(
        Study.study_instance_uid == bindparam("uid")))
    with engine.begin() as conn:
        pk = PreparedInsert(_STUDIES, returning=True).insert_pk(conn, _study("1.2.3", 1))
        PreparedInsert(_STUDIES).insert_many(conn, [_study("1.2.5", 1), _study("1.2.6", 1)])
        assert tuple(by_uid.first(conn, {"uid": "1.2.3"}) or ()) == (pk, "20240101")
        assert by_uid.first(conn, {"uid": "9.9"}) is None
        assert conn.execute(select(Study.study_instance_uid).order_by(Study.pk)
                            ).scalars().all() == ["1.2.3", "1.2.5", "1.2.6"]
