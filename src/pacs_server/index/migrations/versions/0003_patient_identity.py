"""Patient identity: (PatientID, IssuerOfPatientID), and each study's patient attributes

A patient is identified by PatientID with IssuerOfPatientID, and an empty PatientID
identifies nobody: 0002 merged every instance with the same (or an empty) PatientID into
one patient, so a study could be answered with another person's name. Here:

* patients.issuer_of_patient_id, and uniqueness on (patient_id, issuer) for non-empty
  IDs only (a partial unique index);
* studies.patient_name/_norm, patient_birth_date, patient_sex: the patient attributes
  as the study's instances had them, backfilled from each study's stored header (the
  patient row's values where a study has none);
* patients merged by 0002 are split: one per issuer, and one per study for an empty
  PatientID; each split patient takes the demographics of its newest study and its
  counts are recomputed. Nothing else changes.

SQLite rebuilds the patients table (batch mode) to drop the old UNIQUE constraint, so
the count triggers of 0002 are dropped first and created again at the end.

Revision ID: 0003
Revises: 0002
"""
import importlib
import unicodedata
from io import BytesIO
from typing import Any

import sqlalchemy as sa
from alembic import op
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from pacs_server.values import value_text

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_triggers = importlib.import_module(
    "pacs_server.index.migrations.versions.0002_count_triggers")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        _triggers.downgrade()
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('issuer_of_patient_id', sa.String(length=64),
                                      nullable=False, server_default=''))
        batch_op.drop_constraint('uq_patients_patient_id', type_='unique')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_name', sa.Text(), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('patient_name_norm', sa.Text(), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('patient_birth_date', sa.String(length=8),
                                      nullable=False, server_default=''))
        batch_op.add_column(sa.Column('patient_sex', sa.String(length=16), nullable=False,
                                      server_default=''))
    _backfill(op.get_bind())
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.create_index('ix_patients_patient_id', ['patient_id'], unique=False)
        batch_op.create_index('uq_patients_patient_id_issuer',
                              ['patient_id', 'issuer_of_patient_id'], unique=True,
                              sqlite_where=sa.text("patient_id <> ''"),
                              postgresql_where=sa.text("patient_id <> ''"))
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index('ix_studies_patient_name_norm', ['patient_name_norm'],
                              unique=False)
    if sqlite:
        _triggers.upgrade()


def downgrade() -> None:
    # Patients split here may share a PatientID, which 0002's UNIQUE(patient_id) refuses.
    raise NotImplementedError("revision 0003 (patient identity) cannot be downgraded")


_PATIENTS = sa.table('patients', sa.column('pk'), sa.column('patient_id'),
                     sa.column('issuer_of_patient_id'), sa.column('patient_name'),
                     sa.column('patient_name_norm'), sa.column('birth_date'),
                     sa.column('sex'), sa.column('num_studies'), sa.column('num_series'),
                     sa.column('num_instances'), sa.column('header'),
                     sa.column('header_syntax'))
_STUDIES = sa.table('studies', sa.column('pk'), sa.column('patient_pk'),
                    sa.column('patient_name'), sa.column('patient_name_norm'),
                    sa.column('patient_birth_date'), sa.column('patient_sex'),
                    sa.column('num_series'), sa.column('num_instances'),
                    sa.column('header'), sa.column('header_syntax'))


def _backfill(bind: Any) -> None:
    patients = {r.pk: r for r in bind.execute(sa.select(_PATIENTS)).all()}
    groups: dict[int, dict[Any, list[Any]]] = {}
    for study in bind.execute(sa.select(_STUDIES).order_by(_STUDIES.c.pk)).all():
        patient = patients[study.patient_pk]
        values = _study_values(study, patient)
        bind.execute(_STUDIES.update().where(_STUDIES.c.pk == study.pk).values(
            {k: v for k, v in values.items() if k != 'issuer'}))
        key = values['issuer'] if patient.patient_id else study.pk
        groups.setdefault(study.patient_pk, {}).setdefault(key, []).append(
            (study, values))
    for patient_pk, by_key in groups.items():
        first, *others = by_key.values()    # the group of the oldest study keeps the row
        bind.execute(_PATIENTS.update().where(_PATIENTS.c.pk == patient_pk).values(
            issuer_of_patient_id=first[0][1]['issuer']))
        if not others:
            continue
        _follow_newest(bind, patient_pk, first)
        for group in others:
            study, values = group[0]
            pk = bind.execute(_PATIENTS.insert().values(
                patient_id=patients[patient_pk].patient_id,
                issuer_of_patient_id=values['issuer'], patient_name='',
                patient_name_norm='', birth_date='', sex='', num_studies=0, num_series=0,
                num_instances=0, header=study.header, header_syntax=study.header_syntax)
                .returning(_PATIENTS.c.pk)).scalar_one()
            bind.execute(_STUDIES.update().where(
                _STUDIES.c.pk.in_([s.pk for s, _ in group])).values(patient_pk=pk))
            _follow_newest(bind, pk, group)


def _follow_newest(bind: Any, patient_pk: int, group: list[Any]) -> None:
    """Demographics of the newest study, counts of the patient's studies."""
    _, newest = group[-1]
    studies = [s for s, _ in group]
    bind.execute(_PATIENTS.update().where(_PATIENTS.c.pk == patient_pk).values(
        patient_name=newest['patient_name'], patient_name_norm=newest['patient_name_norm'],
        birth_date=newest['patient_birth_date'], sex=newest['patient_sex'],
        num_studies=len(studies), num_series=sum(s.num_series for s in studies),
        num_instances=sum(s.num_instances for s in studies)))


def _study_values(study: Any, patient: Any) -> dict[str, str]:
    """The patient attributes of a study's stored header (the patient row's if none)."""
    if not study.header:
        return dict(patient_name=patient.patient_name, patient_name_norm=patient.patient_name_norm,
                    patient_birth_date=patient.birth_date, patient_sex=patient.sex, issuer='')
    syntax = study.header_syntax
    ds = read_dataset(BytesIO(study.header), syntax == ImplicitVRLittleEndian,
                      syntax != ExplicitVRBigEndian)
    name = _text(ds, 'PatientName', 256)
    return dict(patient_name=name,
                patient_name_norm=unicodedata.normalize('NFC', name.split('=', 1)[0]).casefold(),
                patient_birth_date=_text(ds, 'PatientBirthDate', 64).replace('.', '')
                .replace('-', '')[:8],
                patient_sex=_text(ds, 'PatientSex', 16),
                issuer=_text(ds, 'IssuerOfPatientID', 64))


def _text(ds: Any, keyword: str, limit: int) -> str:
    # As services/ingest.py indexed values when this revision was written.
    try:
        value = ds.get(keyword)
    except Exception:
        return ''
    return value_text(value).strip().rstrip('\0')[:limit]
