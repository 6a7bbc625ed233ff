"""Owners: each conversation belongs to one user, and each slide is granted to the users who
uploaded or opened it (stored once, by content hash).

Rows that exist already belong to the local user ("local", storage.models.LOCAL_OWNER), who
also gets a grant for every slide recorded so far.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LOCAL_OWNER = "local"  # storage.models.LOCAL_OWNER, frozen as it was when this ran


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("owner", sa.String(128), nullable=False, server_default=LOCAL_OWNER),
    )
    op.create_index("ix_conversations_owner_updated_at", "conversations", ["owner", "updated_at"])
    op.create_table(
        "slide_grants",
        sa.Column("slide_id", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["slide_id"],
            ["slides.id"],
            name="fk_slide_grants_slide_id_slides",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("slide_id", "owner", name="pk_slide_grants"),
    )
    op.create_index("ix_slide_grants_owner", "slide_grants", ["owner"])
    op.execute(
        sa.text(
            "INSERT INTO slide_grants (slide_id, owner, created_at) "
            "SELECT id, :owner, created_at FROM slides"
        ).bindparams(owner=LOCAL_OWNER)
    )


def downgrade() -> None:
    op.drop_index("ix_slide_grants_owner", table_name="slide_grants")
    op.drop_table("slide_grants")
    op.drop_index("ix_conversations_owner_updated_at", table_name="conversations")
    op.drop_column("conversations", "owner")
