"""Worklist items (Modality Worklist SCP, worklist management)

One row per scheduled procedure step: the matching keys in columns (person names
folded), the item's full attribute set as DICOM JSON.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worklist_items",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("patient_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("patient_name_norm", sa.Text(), nullable=False, server_default=""),
        sa.Column("accession_number", sa.String(64), nullable=False, server_default=""),
        sa.Column("requested_procedure_id", sa.String(16), nullable=False, server_default=""),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, server_default=""),
        sa.Column("referring_physician_norm", sa.Text(), nullable=False, server_default=""),
        sa.Column("modality", sa.String(16), nullable=False, server_default=""),
        sa.Column("station_ae", sa.String(128), nullable=False, server_default=""),
        sa.Column("station_name", sa.String(128), nullable=False, server_default=""),
        sa.Column("start_date", sa.String(8), nullable=False, server_default=""),
        sa.Column("start_time", sa.String(16), nullable=False, server_default=""),
        sa.Column("performing_physician_norm", sa.Text(), nullable=False, server_default=""),
        sa.Column("sps_id", sa.String(16), nullable=False, server_default=""),
        sa.Column("sps_status", sa.String(16), nullable=False, server_default=""),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_worklist_items")),
    )
    for name, cols in (
            ("ix_worklist_items_patient_id", ["patient_id"]),
            ("ix_worklist_items_patient_name_norm", ["patient_name_norm"]),
            ("ix_worklist_items_accession_number", ["accession_number"]),
            ("ix_worklist_items_study_instance_uid", ["study_instance_uid"]),
            ("ix_worklist_items_sps_id", ["sps_id"]),
            ("ix_worklist_date_station", ["start_date", "station_ae"]),
            ("ix_worklist_station_date", ["station_ae", "start_date"]),
            ("ix_worklist_status_finished", ["sps_status", "finished_at"])):
        op.create_index(name, "worklist_items", cols)


def downgrade() -> None:
    op.drop_table("worklist_items")
