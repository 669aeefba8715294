"""job: when its analysis first started and what its results depend on (result identity, issue 10)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("result_basis", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_job_result_basis"), ["result_basis"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_result_basis"))
        batch_op.drop_column("result_basis")
        batch_op.drop_column("first_started_at")
