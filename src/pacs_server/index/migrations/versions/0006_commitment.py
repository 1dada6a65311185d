"""Storage Commitment requests awaiting (or done with) their N-EVENT-REPORT

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'commitments',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('transaction_uid', sa.String(length=64), nullable=False),
        sa.Column('calling_ae', sa.String(length=16), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('refs', sa.Text(), nullable=False),
        sa.Column('failures', sa.Text(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('pk', name='pk_commitments'),
    )
    op.create_index('ix_commitments_transaction_uid', 'commitments', ['transaction_uid'])
    op.create_index('ix_commitments_state', 'commitments', ['state'])
    op.create_index('ix_commitments_next_attempt_at', 'commitments', ['next_attempt_at'])


def downgrade() -> None:
    op.drop_table('commitments')
