"""initial schema

Revision ID: 0001
Revises: 
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patients',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.Text(), nullable=False),
    sa.Column('patient_name_norm', sa.Text(), nullable=False),
    sa.Column('birth_date', sa.String(length=8), nullable=False),
    sa.Column('sex', sa.String(length=16), nullable=False),
    sa.Column('num_studies', sa.Integer(), nullable=False),
    sa.Column('num_series', sa.Integer(), nullable=False),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.Column('header', sa.LargeBinary(), nullable=False),
    sa.Column('header_syntax', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_patients')),
    sa.UniqueConstraint('patient_id', name=op.f('uq_patients_patient_id'))
    )
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patients_patient_name_norm'), ['patient_name_norm'], unique=False)

    op.create_table('studies',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_pk', sa.Integer(), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=False),
    sa.Column('study_time', sa.String(length=16), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=False),
    sa.Column('study_id', sa.String(length=16), nullable=False),
    sa.Column('study_description', sa.Text(), nullable=False),
    sa.Column('referring_physician', sa.Text(), nullable=False),
    sa.Column('referring_physician_norm', sa.Text(), nullable=False),
    sa.Column('modalities', sa.Text(), nullable=False),
    sa.Column('sop_classes', sa.Text(), nullable=False),
    sa.Column('num_series', sa.Integer(), nullable=False),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.Column('header', sa.LargeBinary(), nullable=False),
    sa.Column('header_syntax', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_pk'], ['patients.pk'], name=op.f('fk_studies_patient_pk_patients'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_studies')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_studies_study_instance_uid'))
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_studies_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index('ix_studies_patient_date', ['patient_pk', 'study_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_patient_pk'), ['patient_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_study_date'), ['study_date'], unique=False)

    op.create_table('series',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.Text(), nullable=False),
    sa.Column('series_date', sa.String(length=8), nullable=False),
    sa.Column('series_time', sa.String(length=16), nullable=False),
    sa.Column('body_part', sa.String(length=16), nullable=False),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.Column('header', sa.LargeBinary(), nullable=False),
    sa.Column('header_syntax', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.pk'], name=op.f('fk_series_study_pk_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_series_series_instance_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_modality'), ['modality'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study_pk'), ['study_pk'], unique=False)

    op.create_table('instances',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_pk', sa.Integer(), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('content_date', sa.String(length=8), nullable=False),
    sa.Column('content_time', sa.String(length=16), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('source_ae', sa.String(length=16), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('header', sa.LargeBinary(), nullable=False),
    sa.Column('header_syntax', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['series_pk'], ['series.pk'], name=op.f('fk_instances_series_pk_series'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_instances')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_instances_sop_instance_uid'))
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_series_pk'), ['series_pk'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_series_pk'))

    op.drop_table('instances')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_pk'))
        batch_op.drop_index(batch_op.f('ix_series_modality'))

    op.drop_table('series')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_study_date'))
        batch_op.drop_index(batch_op.f('ix_studies_patient_pk'))
        batch_op.drop_index('ix_studies_patient_date')
        batch_op.drop_index(batch_op.f('ix_studies_accession_number'))

    op.drop_table('studies')
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patients_patient_name_norm'))

    op.drop_table('patients')
