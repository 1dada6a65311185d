"""Migration 0003 (patient identity) on an archive written under 0002, on SQLite and on
PostgreSQL: data kept, study copies of the patient attributes backfilled from the stored
headers, merged patients split, counts and count triggers still right."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pacs_server.config import DatabaseConfig
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.records import InstanceRecord
from pacs_server.index.repository import IndexRepository
from support.instances import encode


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    cfg = DatabaseConfig(path=str(tmp_path / "index.db"))
    if request.param == "postgresql":
        cfg = DatabaseConfig(url=request.getfixturevalue("postgres_url"))
    eng = create_engine(cfg)
    yield eng
    await eng.dispose()


def header(**attrs: str) -> bytes:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return encode(ds)


# (patient key as 0002 merged it, study header attributes) per study, in arrival order.
STUDIES: list[tuple[str, dict[str, str]]] = [
    ("", {"PatientName": "Test^S R", "PatientID": ""}),
    ("", {"PatientName": "Anonymized", "PatientBirthDate": "19700101", "PatientSex": "O"}),
    ("P1", {"PatientName": "Doe^Jane", "PatientID": "P1", "IssuerOfPatientID": "HOSP"}),
    ("P1", {"PatientName": "Doe^Jane", "PatientID": "P1", "IssuerOfPatientID": "HOSP"}),
    ("P2", {"PatientName": "Roe^Rick", "PatientID": "P2"}),
    ("P2", {"PatientName": "Poe^Pia", "PatientID": "P2", "IssuerOfPatientID": "CLINIC"}),
]


async def write_0002_archive(engine: AsyncEngine) -> list[str]:
    """Patients merged as 0002 did (one per PatientID, the last name sent), two
    instances per study; returns the study UIDs."""
    await migrate(engine, "0002")
    uids = []
    async with engine.begin() as conn:
        patients: dict[str, int] = {}
        for pid, attrs in STUDIES:
            blob = header(**attrs)
            if pid not in patients:
                patients[pid] = (await conn.execute(text(
                    "INSERT INTO patients (patient_id, patient_name, patient_name_norm, "
                    "birth_date, sex, num_studies, num_series, num_instances, header, "
                    "header_syntax) VALUES (:pid, '', '', '', '', 0, 0, 0, :h, :s) "
                    "RETURNING pk"), {"pid": pid, "h": blob, "s": ExplicitVRLittleEndian}
                )).scalar_one()
            await conn.execute(text(
                "UPDATE patients SET patient_name = :n, patient_name_norm = lower(:n) "
                "WHERE pk = :pk"), {"n": attrs["PatientName"], "pk": patients[pid]})
            uid = generate_uid()
            uids.append(uid)
            study_pk = (await conn.execute(text(
                "INSERT INTO studies (study_instance_uid, patient_pk, study_date, study_time, "
                "accession_number, study_id, study_description, referring_physician, "
                "referring_physician_norm, modalities, sop_classes, num_series, "
                "num_instances, header, header_syntax, updated_at) VALUES (:uid, :p, '', '', "
                "'', '', '', '', '', 'CT', '1.2', 0, 0, :h, :s, CURRENT_TIMESTAMP) "
                "RETURNING pk"), {"uid": uid, "p": patients[pid], "h": blob,
                                  "s": ExplicitVRLittleEndian})).scalar_one()
            series_pk = (await conn.execute(text(
                "INSERT INTO series (series_instance_uid, study_pk, modality, "
                "series_description, series_date, series_time, body_part, num_instances, "
                "header, header_syntax) VALUES (:uid, :st, 'CT', '', '', '', '', 0, :h, :s) "
                "RETURNING pk"), {"uid": generate_uid(), "st": study_pk, "h": blob,
                                  "s": ExplicitVRLittleEndian})).scalar_one()
            for _ in range(2):
                await conn.execute(text(
                    "INSERT INTO instances (sop_instance_uid, series_pk, sop_class_uid, "
                    "content_date, content_time, transfer_syntax_uid, path, size, "
                    "source_ae, received_at, header, header_syntax) VALUES (:uid, :se, "
                    "'1.2', '', '', :s, 'x.dcm', 10, '', CURRENT_TIMESTAMP, :h, :s)"),
                    {"uid": generate_uid(), "se": series_pk, "h": blob,
                     "s": ExplicitVRLittleEndian})
    return uids


async def fetch(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def test_0003_splits_merged_patients_and_backfills_the_studies(
        engine: AsyncEngine) -> None:
    uids = await write_0002_archive(engine)
    assert len(await fetch(engine, "SELECT pk FROM patients")) == 3
    await migrate(engine)

    studies = {r.study_instance_uid: r for r in await fetch(
        engine, "SELECT s.study_instance_uid, s.patient_name, s.patient_name_norm, "
        "s.patient_birth_date, s.patient_sex, p.patient_id, p.issuer_of_patient_id, "
        "p.patient_name AS current_name, s.patient_pk FROM studies s "
        "JOIN patients p ON p.pk = s.patient_pk")}
    for uid, (_, attrs) in zip(uids, STUDIES, strict=True):
        row = studies[uid]
        assert row.patient_name == attrs["PatientName"]
        assert row.patient_name_norm == attrs["PatientName"].casefold()
        assert row.patient_birth_date == attrs.get("PatientBirthDate", "")
        assert row.patient_sex == attrs.get("PatientSex", "")
        assert row.issuer_of_patient_id == attrs.get("IssuerOfPatientID", "")
    # The two studies without a PatientID no longer share a patient, nor do P2's two
    # issuers; P1's two studies (one issuer) still do.
    patient_of = [studies[uid].patient_pk for uid in uids]
    assert len({patient_of[0], patient_of[1]}) == 2
    assert patient_of[2] == patient_of[3]
    assert patient_of[4] != patient_of[5]
    assert studies[uids[0]].current_name == "Test^S R"
    assert studies[uids[4]].current_name == "Roe^Rick"
    counts = await fetch(engine, "SELECT pk, num_studies, num_series, num_instances "
                         "FROM patients ORDER BY pk")
    assert len(counts) == 5
    expected = {pk: (patient_of.count(pk), patient_of.count(pk), 2 * patient_of.count(pk))
                for pk in patient_of}
    assert {r.pk: (r.num_studies, r.num_series, r.num_instances) for r in counts} == expected
    assert len(await fetch(engine, "SELECT pk FROM instances")) == 12


async def test_0003_keeps_the_count_triggers_and_the_new_uniqueness(
        engine: AsyncEngine) -> None:
    uids = await write_0002_archive(engine)
    await migrate(engine)
    async with engine.connect() as conn:
        p1 = (await conn.execute(text(
            "SELECT patient_pk FROM studies WHERE study_instance_uid = :u"),
            {"u": uids[2]})).scalar_one()
        series_pk = (await conn.execute(text(
            "SELECT se.pk FROM series se JOIN studies st ON st.pk = se.study_pk "
            "WHERE st.study_instance_uid = :u"), {"u": uids[2]})).scalar_one()
        await conn.execute(text(
            "INSERT INTO instances (sop_instance_uid, series_pk, sop_class_uid, content_date, "
            "content_time, transfer_syntax_uid, path, size, source_ae, received_at, header, "
            "header_syntax) VALUES (:uid, :se, '1.2', '', '', '1.2', 'y.dcm', 1, '', "
            "CURRENT_TIMESTAMP, '', '')"), {"uid": generate_uid(), "se": series_pk})
        await conn.commit()
        (n,) = (await conn.execute(text(
            "SELECT num_instances FROM patients WHERE pk = :pk"), {"pk": p1})).one()
        assert n == 5
        with pytest.raises(IntegrityError):
            await conn.execute(text(
                "INSERT INTO patients (patient_id, issuer_of_patient_id, patient_name, "
                "patient_name_norm, birth_date, sex, num_studies, num_series, "
                "num_instances, header, header_syntax) VALUES ('P1', 'HOSP', '', '', '', "
                "'', 0, 0, 0, '', '')"))
        await conn.rollback()


async def test_the_writer_finds_migrated_patients_by_id_and_issuer(
        engine: AsyncEngine) -> None:
    uids = await write_0002_archive(engine)
    await migrate(engine)
    repo = IndexRepository(engine)
    await repo.start()
    try:
        rec = InstanceRecord(
            sop_instance_uid=generate_uid(), sop_class_uid="1.2", study_instance_uid=generate_uid(),
            series_instance_uid=generate_uid(), transfer_syntax_uid=ExplicitVRLittleEndian,
            patient={"patient_id": "P2", "issuer_of_patient_id": "CLINIC",
                     "patient_name": "Poe^Pia"},
            study={"patient_name": "Poe^Pia"}, series={"modality": "CT"}, instance={},
            header=b"",
            header_syntax=ExplicitVRLittleEndian)
        await repo.add_instance(rec)
        patients = {r.study_instance_uid: r.patient_pk for r in await fetch(
            engine, "SELECT study_instance_uid, patient_pk FROM studies")}
        assert patients[rec.study_instance_uid] == patients[uids[5]]
        assert (await repo.counts())["patients"] == 5
    finally:
        await repo.close()
