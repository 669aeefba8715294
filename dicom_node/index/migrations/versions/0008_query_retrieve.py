"""query/retrieve: the patient and study attributes C-FIND matches on, and Q/R counts per association

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 14:40:00.000000

``study`` gains Patient's Name, Patient's Birth Date, Patient's Sex, Study ID and Referring Physician's
Name, ``series`` its Series Time, with indexes on what queries match most (patient id, name, study date,
accession number). ``association`` counts the C-FIND, C-MOVE and C-GET requests it carried and the
instances its retrieves sent.

Rows indexed before this revision are not read again from their files: their studies have these
attributes empty until an instance of the study is received again, so a C-FIND on Patient's Name does
not find them (a query by Patient ID, accession number, date or UID still does).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch_op:
        batch_op.add_column(sa.Column("patient_name", sa.String(324), nullable=True))
        batch_op.add_column(sa.Column("patient_birth_date", sa.String(8), nullable=True))
        batch_op.add_column(sa.Column("patient_sex", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("study_id", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("referring_physician_name", sa.String(324), nullable=True))
    with op.batch_alter_table("series") as batch_op:
        batch_op.add_column(sa.Column("series_time", sa.String(16), nullable=True))
    with op.batch_alter_table("association") as batch_op:
        for name in ("find_requests", "move_requests", "get_requests", "instances_sent"):
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_study_patient_id", "study", ["patient_id"])
    op.create_index("ix_study_study_date", "study", ["study_date"])
    op.create_index("ix_study_accession_number", "study", ["accession_number"])
    op.create_index("ix_study_patient_name", "study", ["patient_name"])


def downgrade() -> None:
    for name in ("ix_study_patient_name", "ix_study_accession_number", "ix_study_study_date"):
        op.drop_index(name, table_name="study")
    op.drop_index("ix_study_patient_id", table_name="study")
    with op.batch_alter_table("association") as batch_op:
        for name in ("instances_sent", "get_requests", "move_requests", "find_requests"):
            batch_op.drop_column(name)
    with op.batch_alter_table("series") as batch_op:
        batch_op.drop_column("series_time")
    with op.batch_alter_table("study") as batch_op:
        for name in (
            "referring_physician_name",
            "study_id",
            "patient_sex",
            "patient_birth_date",
            "patient_name",
        ):
            batch_op.drop_column(name)
