"""multi-frame images: the frames of an instance and the images (planes) of a series

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 11:40:00.000000

``instance.number_of_frames`` (Number of Frames of a multi-frame instance, NULL for a single-frame one)
and ``series.num_frames`` (its images: one per single-frame instance, Number of Frames per multi-frame
one), which the ``num_instances`` routing criterion compares. Rows indexed before this revision were read
without their functional groups: a series gets ``num_frames = num_instances``, which is right for every
single-frame series; a multi-frame object received before the upgrade keeps the empty geometry it was
indexed with until it is sent again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instance") as batch_op:
        batch_op.add_column(sa.Column("number_of_frames", sa.Integer(), nullable=True))
    with op.batch_alter_table("series") as batch_op:
        batch_op.add_column(sa.Column("num_frames", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE series SET num_frames = num_instances")


def downgrade() -> None:
    with op.batch_alter_table("series") as batch_op:
        batch_op.drop_column("num_frames")
    with op.batch_alter_table("instance") as batch_op:
        batch_op.drop_column("number_of_frames")
