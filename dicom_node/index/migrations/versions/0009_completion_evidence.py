"""completion evidence: association release, Storage Commitment requests, Modality Performed Procedure Steps

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-01 14:40:00.000000

``study.released_at`` (the association that brought the study's last instances was released), the
Storage Commitment requests with their referenced instances (``commitment_request``,
``commitment_item``) and the MPPS the node received with the instances they list (``mpps``,
``mpps_instance``): what ``workflow/completion.py`` reads for a route's ``complete_on``. Studies indexed
before this revision have no evidence and complete by their quiet period, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch_op:
        batch_op.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "commitment_request",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("transaction_uid", sa.String(64), nullable=False),
        sa.Column("calling_ae_title", sa.String(16), nullable=False),
        sa.Column("peer_address", sa.String(64), nullable=False),
        sa.Column(
            "association_id",
            sa.Integer(),
            sa.ForeignKey("association.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_commitment_request_transaction_uid", "commitment_request", ["transaction_uid"])
    op.create_index("ix_commitment_request_state", "commitment_request", ["state"])
    op.create_table(
        "commitment_item",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "request_id",
            sa.Integer(),
            sa.ForeignKey("commitment_request.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("failure_reason", sa.Integer(), nullable=True),
    )
    op.create_index("ix_commitment_item_request_id", "commitment_item", ["request_id"])
    op.create_index("ix_commitment_item_sop_instance_uid", "commitment_item", ["sop_instance_uid"])
    op.create_table(
        "mpps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("calling_ae_title", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_mpps_state", "mpps", ["state"])
    op.create_index("ix_mpps_study_instance_uid", "mpps", ["study_instance_uid"])
    op.create_table(
        "mpps_instance",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("mpps_id", sa.Integer(), sa.ForeignKey("mpps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
    )
    op.create_index("ix_mpps_instance_mpps_id", "mpps_instance", ["mpps_id"])
    op.create_index("ix_mpps_instance_sop_instance_uid", "mpps_instance", ["sop_instance_uid"])


def downgrade() -> None:
    op.drop_table("mpps_instance")
    op.drop_table("mpps")
    op.drop_table("commitment_item")
    op.drop_table("commitment_request")
    with op.batch_alter_table("study") as batch_op:
        batch_op.drop_column("released_at")
