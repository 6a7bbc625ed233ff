"""Turn status: an answer is written when it starts and completed in place, so a crash
leaves it "in_progress" (marked "interrupted" at the next start) instead of losing it.

Rows that exist already are complete: they get "done". Plain ALTER TABLE ADD COLUMN on every
backend (no batch copy of `turns` on SQLite, whose DROP TABLE would cascade to masks and
feedback).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

IN_PROGRESS = sa.text("status = 'in_progress'")


def upgrade() -> None:
    op.add_column(
        "turns",
        sa.Column(
            "status",
            sa.String(16),
            sa.CheckConstraint(
                "status IN ('in_progress', 'done', 'interrupted', 'failed')",
                name="status",  # ck_turns_status, by the models' naming convention
            ),
            nullable=False,
            server_default="done",
        ),
    )
    op.create_index(
        "ix_turns_in_progress",
        "turns",
        ["status"],
        sqlite_where=IN_PROGRESS,
        postgresql_where=IN_PROGRESS,
    )


def downgrade() -> None:
    op.drop_index("ix_turns_in_progress", table_name="turns")
    op.drop_column("turns", "status")  # SQLite ≥ 3.35 drops it in place, with its CHECK
