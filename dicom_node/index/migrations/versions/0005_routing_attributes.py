"""routing attributes: requested procedure description and procedure codes of a study; anatomic region
and the range of slice positions of a series (``extent_mm`` from positions)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000

Rows indexed before this revision have none of these values (nothing here reads the stored files): a
series received before the upgrade has no ``extent_mm``, and a rule that asks for one refuses it with
"extent_mm (none)". Studies routed before the upgrade are not routed again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch_op:
        batch_op.add_column(sa.Column("requested_procedure_description", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("procedure_codes", sa.Text(), nullable=True))
    with op.batch_alter_table("series") as batch_op:
        batch_op.add_column(sa.Column("anatomic_region", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("slice_position_min", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("slice_position_max", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("series") as batch_op:
        batch_op.drop_column("slice_position_max")
        batch_op.drop_column("slice_position_min")
        batch_op.drop_column("anatomic_region")
    with op.batch_alter_table("study") as batch_op:
        batch_op.drop_column("procedure_codes")
        batch_op.drop_column("requested_procedure_description")
