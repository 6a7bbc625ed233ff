"""SQLAlchemy 2.0 typed models of the session log.

Coordinates are level-0 slide pixels (`l0_` prefix). Ids: conversations and turns use
uuid4 hex strings (safe to create on several app replicas), slides use the file's
content hash (sha256 hex), masks and feedback use integer keys (never shown to users).

The schema itself is created by the Alembic migrations in `storage/migrations`; keep
the two in step (tests/test_storage.py::test_migrations_match_the_models compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names: Alembic's batch mode on SQLite needs names to alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("user", "assistant")
# A turn's life: an answer is written "in_progress" when it starts (its text saved as it
# grows), then "done" or "failed" (error set); one still in progress when the server starts
# again was cut off by a crash and becomes "interrupted". Questions are "done" at once.
TURN_STATUSES = ("in_progress", "done", "interrupted", "failed")
FEEDBACK_VALUES = ("like", "dislike")

# JSON on SQLite, JSONB on PostgreSQL (indexable, compact).
JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _owned_children(*, back_populates: str, order_by: str) -> Any:
    """A parent's list of children that live and die with it: the database deletes them
    (ON DELETE CASCADE, so the ORM need not load them first: passive_deletes) and the ORM
    deletes one removed from the list (delete-orphan)."""
    return relationship(
        back_populates=back_populates,
        order_by=order_by,
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Slide(Base):
    """One slide file, keyed by its content hash (the same bytes are one slide)."""

    __tablename__ = "slides"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # sha256 hex
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # slides reach tens of GB
    vendor: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)  # level-0 pixels
    height: Mapped[int] = mapped_column(Integer)
    mpp_x: Mapped[float | None] = mapped_column(Float)  # µm per level-0 pixel
    mpp_y: Mapped[float | None] = mapped_column(Float)
    objective_power: Mapped[float | None] = mapped_column(Float)
    # The uploaded file's name can identify a patient: stored only when the operator
    # turns `log_file_names` on.
    file_name: Mapped[str | None] = mapped_column(String(512))
    # Where the app keeps the file, to reopen it with a past conversation.
    stored_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    conversations: Mapped[list[Conversation]] = relationship(back_populates="slide")


# Who a row belongs to when the server has one user (`--auth none`), and the owner of every
# row written before owners existed (migration 0003).
LOCAL_OWNER = "local"


class SlideGrant(Base):
    """A slide is stored once (content hash) and granted to each owner who uploaded or opened it."""

    __tablename__ = "slide_grants"

    slide_id: Mapped[str] = mapped_column(
        ForeignKey("slides.id", ondelete="CASCADE"), primary_key=True
    )
    owner: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_updated_at", "updated_at"),
        Index("ix_conversations_owner_updated_at", "owner", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    # The user the conversation belongs to (web/identity.py); only they list or open it.
    owner: Mapped[str] = mapped_column(String(128), server_default=LOCAL_OWNER)
    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="RESTRICT"), index=True)
    model_id: Mapped[str | None] = mapped_column(String(256))
    title: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    slide: Mapped[Slide] = relationship(back_populates="conversations")
    turns: Mapped[list[Turn]] = _owned_children(
        back_populates="conversation", order_by="Turn.index"
    )


class Turn(Base):
    """One message: a user question or an assistant answer (with its evidence).

    regions: [{rank, score, l0_rect: [x, y, w, h]}] — the tiles PGDFC read;
    boxes: [{rel: [x0, y0, x1, y1], l0_rect: [x, y, w, h], label}];
    masks live in the `masks` table (bitmaps), referenced by (turn, index);
    status: one of TURN_STATUSES.
    """

    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("conversation_id", "turn_index"),
        CheckConstraint("role IN ('user', 'assistant')", name="role"),
        CheckConstraint("turn_index >= 0", name="turn_index"),
        CheckConstraint(
            "status IN ('in_progress', 'done', 'interrupted', 'failed')", name="status"
        ),
        # Only the few answers in progress: what the sweep at start looks for.
        Index(
            "ix_turns_in_progress",
            "status",
            sqlite_where=text("status = 'in_progress'"),
            postgresql_where=text("status = 'in_progress'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column("turn_index", Integer)  # 0-based within conversation
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text, default="")
    pgdfc_mode: Mapped[str | None] = mapped_column(String(16))
    s: Mapped[int | None] = mapped_column(Integer)
    regions: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    boxes: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    timings: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)  # seconds
    tokens: Mapped[dict[str, int]] = mapped_column(JSONType, default=dict)
    # Anything else the web layer keeps with the turn (answer options, stopped /
    # timed_out flags, the region the user asked about).
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    model_id: Mapped[str | None] = mapped_column(String(256))
    revision: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="done", server_default="done")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    conversation: Mapped[Conversation] = relationship(back_populates="turns")
    masks: Mapped[list[Mask]] = _owned_children(back_populates="turn", order_by="Mask.index")
    feedback: Mapped[list[Feedback]] = _owned_children(
        back_populates="turn", order_by="Feedback.id"
    )


class Mask(Base):
    """A binary mask: a PNG sized to its own bitmap, stretched over `l0_rect` on the
    slide. Kept as bytes in the database (small, and written in the same transaction as
    its turn, so there are never orphan files)."""

    __tablename__ = "masks"
    __table_args__ = (
        UniqueConstraint("turn_id", "mask_index"),
        CheckConstraint("l0_w > 0 AND l0_h > 0", name="l0_size"),
        CheckConstraint("width > 0 AND height > 0", name="bitmap_size"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column("mask_index", Integer)
    l0_x: Mapped[int] = mapped_column(Integer)
    l0_y: Mapped[int] = mapped_column(Integer)
    l0_w: Mapped[int] = mapped_column(Integer)
    l0_h: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)  # bitmap pixels
    height: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(256))
    png: Mapped[bytes] = mapped_column(LargeBinary)

    turn: Mapped[Turn] = relationship(back_populates="masks")


class Feedback(Base):
    """A like or dislike on a turn (every click is kept; the last one counts)."""

    __tablename__ = "feedback"
    __table_args__ = (CheckConstraint("value IN ('like', 'dislike')", name="value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"), index=True)
    value: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    turn: Mapped[Turn] = relationship(back_populates="feedback")


class Share(Base):
    """A read-only link to one conversation (issue 12, "sharing a case"): whoever holds the
    token sees the slide, the turns and the overlays, and asks nothing. The owner revokes it;
    it expires at `expires_at` (never when None)."""

    __tablename__ = "shares"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)  # secrets.token_urlsafe
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    owner: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
