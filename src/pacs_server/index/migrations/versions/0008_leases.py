"""Leases: which process runs each singleton job (index/leases.py); the process holding
a Storage Commitment while it reports on the requesting association

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
    )
    op.add_column("commitments", sa.Column("held_by", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("commitments") as batch:
        batch.drop_column("held_by")
    op.drop_table("leases")
