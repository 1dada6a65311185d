"""Performed procedure steps (MPPS)

One row per Modality Performed Procedure Step SOP Instance: its whole attribute set
and the columns it is listed and linked to its worklist item by.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mpps',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=False),
    sa.Column('sps_id', sa.String(length=64), nullable=False),
    sa.Column('pps_id', sa.String(length=64), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.Text(), nullable=False),
    sa.Column('station_ae', sa.String(length=16), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('start_date', sa.String(length=8), nullable=False),
    sa.Column('start_time', sa.String(length=16), nullable=False),
    sa.Column('end_date', sa.String(length=8), nullable=False),
    sa.Column('end_time', sa.String(length=16), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dataset', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_mpps')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_mpps_sop_instance_uid'))
    )
    with op.batch_alter_table('mpps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mpps_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_mpps_study_instance_uid'),
                              ['study_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_mpps_accession_number'), ['accession_number'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_mpps_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mpps_start_date'), ['start_date'], unique=False)


def downgrade() -> None:
    op.drop_table('mpps')
