"""Initial schema: slides, conversations, turns, masks, feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "slides",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("vendor", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("mpp_x", sa.Float(), nullable=True),
        sa.Column("mpp_y", sa.Float(), nullable=True),
        sa.Column("objective_power", sa.Float(), nullable=True),
        sa.Column("file_name", sa.String(512), nullable=True),
        sa.Column("stored_path", sa.Text(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_slides"),
    )
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("slide_id", sa.String(128), nullable=False),
        sa.Column("model_id", sa.String(256), nullable=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["slide_id"], ["slides.id"], name="fk_conversations_slide_id_slides",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
    )
    op.create_index("ix_conversations_slide_id", "conversations", ["slide_id"])
    op.create_index("ix_conversations_updated_at", "conversations", ["updated_at"])
    op.create_table(
        "turns",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("conversation_id", sa.String(32), nullable=False),
        sa.Column("turn_index", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("pgdfc_mode", sa.String(16), nullable=True),
        sa.Column("s", sa.Integer(), nullable=True),
        sa.Column("regions", JSONType, nullable=False),
        sa.Column("boxes", JSONType, nullable=False),
        sa.Column("timings", JSONType, nullable=False),
        sa.Column("tokens", JSONType, nullable=False),
        sa.Column("meta", JSONType, nullable=False),
        sa.Column("model_id", sa.String(256), nullable=True),
        sa.Column("revision", sa.String(128), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.CheckConstraint("role IN ('user', 'assistant')", name="ck_turns_role"),
        sa.CheckConstraint("turn_index >= 0", name="ck_turns_turn_index"),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"],
            name="fk_turns_conversation_id_conversations", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_turns"),
        sa.UniqueConstraint("conversation_id", "turn_index", name="uq_turns_conversation_id"),
    )
    op.create_table(
        "masks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("turn_id", sa.String(32), nullable=False),
        sa.Column("mask_index", sa.Integer(), nullable=False),
        sa.Column("l0_x", sa.Integer(), nullable=False),
        sa.Column("l0_y", sa.Integer(), nullable=False),
        sa.Column("l0_w", sa.Integer(), nullable=False),
        sa.Column("l0_h", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(256), nullable=True),
        sa.Column("png", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("l0_w > 0 AND l0_h > 0", name="ck_masks_l0_size"),
        sa.CheckConstraint("width > 0 AND height > 0", name="ck_masks_bitmap_size"),
        sa.ForeignKeyConstraint(
            ["turn_id"], ["turns.id"], name="fk_masks_turn_id_turns", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_masks"),
        sa.UniqueConstraint("turn_id", "mask_index", name="uq_masks_turn_id"),
    )
    op.create_index("ix_masks_turn_id", "masks", ["turn_id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("turn_id", sa.String(32), nullable=False),
        sa.Column("value", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.CheckConstraint("value IN ('like', 'dislike')", name="ck_feedback_value"),
        sa.ForeignKeyConstraint(
            ["turn_id"], ["turns.id"], name="fk_feedback_turn_id_turns", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_turn_id", "feedback", ["turn_id"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("masks")
    op.drop_table("turns")
    op.drop_table("conversations")
    op.drop_table("slides")
