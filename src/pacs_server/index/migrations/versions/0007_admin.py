"""Admin state: calling AE titles and C-MOVE peers added through the admin API, and
instances whose files verify found missing

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_ae_titles",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("ae_title", "host", name="uq_admin_ae_titles_ae_title"),
    )
    op.create_table(
        "admin_peers",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("ae_title", sa.String(16), nullable=False, unique=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "missing_instances",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("problem", sa.String(32), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("missing_instances")
    op.drop_table("admin_peers")
    op.drop_table("admin_ae_titles")
