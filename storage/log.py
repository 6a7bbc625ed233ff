"""The session log the web layer calls: slides, conversations, turns, masks, feedback.

Every public method is one database transaction: it writes everything or nothing.
Unknown ids raise omnipath.errors.NotFoundError; malformed values raise
storage.errors.InvalidRecordError (checked before anything is written); a database
that cannot be reached raises storage.errors.DatabaseError. Coordinates are level-0
slide pixels (`l0_`). Timestamps are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from omnipath.errors import echo
from omnipath.facts import is_slide_id
from storage import shapes
from storage.db import (
    create_database_engine,
    describe_url,
    resolve_url,
    unavailable_sentence,
    upgrade_to_head,
)
from storage.errors import DatabaseError, InvalidRecordError, NotFoundError
from storage.models import (
    FEEDBACK_VALUES,
    LOCAL_OWNER,
    Conversation,
    Feedback,
    Mask,
    Share,
    Slide,
    SlideGrant,
    Turn,
    utcnow,
)
from storage.rows import (
    add_masks,
    answer_fields,
    clean_text,
    conversation_summary,
    new_id,
    optional_text,
    slide_dict,
    title_from,
    turn_dict,
    turn_row,
)

log = logging.getLogger(__name__)

class Store:
    """The session log on one database.

    Store(url=None): `url` is a SQLAlchemy URL or a filesystem path (a SQLite file);
    None means `OMNIPATH_DATABASE_URL`, else `./data/omnipath.db` (`/data/omnipath.db`
    on Spaces with persistent storage). Migrations are applied at start.
    `log_file_names=False` keeps uploaded file names out of the database (they can
    identify patients); the operator turns it on.
    Thread-safe: each call opens its own session.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        *,
        log_file_names: bool = False,
        migrate: bool = True,
    ) -> None:
        self.url = resolve_url(url)
        self.log_file_names = log_file_names
        # Called, after the commit, with the ids of slides that lost their last grant (see
        # delete_conversation): the web layer deletes their stored files (web/slide_files.py).
        self.on_unheld: Callable[[list[str]], None] | None = None
        # Counts the commits that removed slide grants in this process, so that caches of who
        # may see a slide (web/access.py) know when to forget.
        self.grants_dropped = 0
        self.engine = create_database_engine(self.url)
        if migrate:
            upgrade_to_head(self.engine)
        # Write transactions carry `omnipath_write`: on SQLite they BEGIN IMMEDIATE.
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            self.engine.execution_options(omnipath_write=True), expire_on_commit=False
        )

    def __repr__(self) -> str:
        return f"Store({describe_url(self.url)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes pooled connections (the Store can still be used; it reconnects)."""
        self.engine.dispose()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Session]:
        factory = self._write_sessions if write else self._read_sessions
        try:
            with factory() as session, session.begin():
                yield session
        except OperationalError as exc:
            log.warning("the database at %s failed: %s", describe_url(self.url), exc.orig)
            raise DatabaseError(unavailable_sentence(exc), detail=str(exc)) from exc

    # --- slides ---------------------------------------------------------------------

    def record_slide(
        self,
        slide_id: str,
        *,
        size_bytes: int,
        vendor: str,
        width: int,
        height: int,
        mpp_x: float | None = None,
        mpp_y: float | None = None,
        objective_power: float | None = None,
        stored_path: str | os.PathLike[str] | None = None,
        file_name: str | None = None,
    ) -> str:
        """Records a slide by content hash; idempotent. Returns `slide_id`.

        Recording a known slide again only updates `stored_path` (when given) and
        `file_name` (when given and `log_file_names` is on). `file_name` is dropped
        unless `log_file_names` is on. `width`/`height` are level-0 pixels, `mpp_*`
        µm per level-0 pixel.
        """
        if not isinstance(slide_id, str) or not is_slide_id(slide_id):
            raise InvalidRecordError(
                f"The slide id {echo(slide_id)} is not a content hash "
                "(16–128 lowercase hex digits)."
            )
        for name, value in (("size_bytes", size_bytes), ("width", width), ("height", height)):
            if not shapes._is_int(value) or value < (0 if name == "size_bytes" else 1):
                raise InvalidRecordError(
                    f"The slide's {name} must be a positive integer, not {echo(value)}."
                )
        if not isinstance(vendor, str) or not vendor:
            raise InvalidRecordError(f"The slide's vendor must be text, not {echo(vendor)}.")
        optional = {}
        for name, value in (
            ("mpp_x", mpp_x),
            ("mpp_y", mpp_y),
            ("objective_power", objective_power),
        ):
            optional[name] = None if value is None else shapes._finite(value, f"The slide's {name}")
        path = None if stored_path is None else os.fspath(stored_path)
        name = optional_text(file_name, "The file name", 512) if self.log_file_names else None

        def write() -> None:
            with self._transaction(write=True) as session:
                slide = session.get(Slide, slide_id)
                if slide is None:
                    session.add(
                        Slide(
                            id=slide_id,
                            size_bytes=int(size_bytes),
                            vendor=vendor,
                            width=int(width),
                            height=int(height),
                            stored_path=path,
                            file_name=name,
                            **optional,
                        )
                    )
                else:
                    if path is not None:
                        slide.stored_path = path
                    if name is not None:
                        slide.file_name = name

        try:
            write()
        except IntegrityError:
            # Another replica inserted the same slide between our read and our insert:
            # the second attempt finds the row and updates it.
            write()
        return slide_id

    def record_slide_info(
        self,
        slide_id: str,
        info: Any,
        *,
        size_bytes: int,
        stored_path: str | os.PathLike[str] | None = None,
        file_name: str | None = None,
    ) -> str:
        """record_slide() from an omnipath.slide.SlideInfo (or anything with vendor,
        l0_width, l0_height, mpp_x, mpp_y, objective_power attributes)."""
        return self.record_slide(
            slide_id,
            size_bytes=size_bytes,
            vendor=info.vendor,
            width=info.l0_width,
            height=info.l0_height,
            mpp_x=getattr(info, "mpp_x", None),
            mpp_y=getattr(info, "mpp_y", None),
            objective_power=getattr(info, "objective_power", None),
            stored_path=stored_path,
            file_name=file_name,
        )

    def get_slide(self, slide_id: str) -> dict[str, Any]:
        """{id, size_bytes, vendor, width, height, mpp_x, mpp_y, objective_power,
        file_name, stored_path, created_at}."""
        with self._transaction(write=False) as session:
            slide = session.get(Slide, slide_id)
            if slide is None:
                raise NotFoundError(f"No slide with id {echo(slide_id)} has been recorded.")
            return slide_dict(slide)

    # --- conversations ----------------------------------------------------------------

    def grant_slide(self, slide_id: str, owner: str) -> None:
        """Lets `owner` see a recorded slide (idempotent). The file is stored once; each owner
        who uploads or opens it gets a grant."""
        with self._transaction(write=True) as session:
            if session.get(Slide, slide_id) is None:
                raise NotFoundError(f"No slide with id {echo(slide_id)} has been recorded.")
            _grant(session, slide_id, owner)

    def may_see_slide(self, slide_id: str, owner: str) -> bool:
        """True when `owner` has been granted the slide."""
        with self._transaction(write=False) as session:
            return session.get(SlideGrant, (slide_id, owner)) is not None

    def start_conversation(
        self,
        slide_id: str,
        model_id: str | None = None,
        *,
        title: str = "",
        owner: str = LOCAL_OWNER,
    ) -> str:
        """A new conversation of `owner` about a recorded slide (granted to them now when it
        was not); returns its id (uuid4 hex). The title defaults to the first question (set
        by log_turn). The caller checks that the owner may see the slide."""
        model_id = optional_text(model_id, "The model id", 256)
        title = title_from(optional_text(title, "The title") or "")
        with self._transaction(write=True) as session:
            if session.get(Slide, slide_id) is None:
                raise NotFoundError(
                    f"No slide with id {echo(slide_id)} has been recorded; record it before "
                    "starting a conversation about it."
                )
            _grant(session, slide_id, owner)
            conv = Conversation(
                id=new_id(), slide_id=slide_id, model_id=model_id, title=title, owner=owner
            )
            session.add(conv)
            return conv.id

    def _locked_conversation(
        self, session: Session, conversation_id: str, owner: str | None = None
    ) -> Conversation:
        """The conversation, locked for writing; NotFoundError when it does not exist or (with
        `owner`) belongs to someone else: the same sentence either way."""
        # FOR UPDATE on PostgreSQL serializes writers of one conversation (turn indexes);
        # SQLite's BEGIN IMMEDIATE already did.
        conv = session.get(Conversation, conversation_id, with_for_update=True)
        if conv is None or (owner is not None and conv.owner != owner):
            raise _no_conversation(conversation_id)
        return conv

    def owns_conversation(self, conversation_id: str, owner: str) -> bool:
        """True when the conversation exists and is `owner`'s."""
        with self._transaction(write=False) as session:
            conv = session.get(Conversation, conversation_id)
            return conv is not None and conv.owner == owner

    def list_conversations(
        self, *, owner: str = LOCAL_OWNER, slide_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The conversations of `owner`, newest first: [{id, title, slide_id, model_id,
        created_at, updated_at, turn_count}]; only those about `slide_id` when given."""
        counts = (
            select(Turn.conversation_id, func.count(Turn.id).label("n"))
            .group_by(Turn.conversation_id)
            .subquery()
        )
        query = (
            select(Conversation, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.conversation_id == Conversation.id)
            .order_by(Conversation.updated_at.desc(), Conversation.id)
            .where(Conversation.owner == owner)
            .limit(max(1, int(limit)))
        )
        if slide_id is not None:
            query = query.where(Conversation.slide_id == slide_id)
        with self._transaction(write=False) as session:
            return [conversation_summary(c, int(n)) for c, n in session.execute(query).all()]

    def load_conversation(
        self, conversation_id: str, *, owner: str = LOCAL_OWNER
    ) -> dict[str, Any]:
        """Everything needed to restore a conversation of `owner` in the UI (NotFoundError,
        the same as for an unknown id, when it belongs to someone else):

        {id, title, slide_id, model_id, created_at, updated_at,
         slide: {... get_slide() ...},
         turns: [{id, conversation_id, index, role, text, pgdfc_mode, s,
                  regions: [{rank, score, l0_rect}], boxes: [{rel, l0_rect, label}],
                  masks: [{index, l0_rect, width, height, label, png: bytes}],
                  timings, tokens, meta, model_id, revision, error, created_at,
                  feedback: [{value, comment, created_at}], liked: "like"|"dislike"|None}]}
        Turns are in order (index 0, 1, ...).
        """
        with self._transaction(write=False) as session:
            out = _full_conversation(session, conversation_id, owner)
            if out is None:
                raise _no_conversation(conversation_id)
            return out

    # --- read-only share links ------------------------------------------------------

    def create_share(
        self, conversation_id: str, owner: str, expires_in_s: float | None = None
    ) -> str:
        """A new read-only link to a conversation of `owner` (NotFoundError, the same as for an
        unknown id, when it is someone else's); returns its unguessable token. It expires
        `expires_in_s` seconds from now, or never when None."""
        if expires_in_s is not None and not expires_in_s > 0:
            raise InvalidRecordError("A share link must last a positive time, or never expire.")
        expires_at = None if expires_in_s is None else utcnow() + timedelta(seconds=expires_in_s)
        with self._transaction(write=True) as session:
            self._locked_conversation(session, conversation_id, owner)
            token = secrets.token_urlsafe(SHARE_TOKEN_BYTES)
            session.add(
                Share(
                    token=token,
                    conversation_id=conversation_id,
                    owner=owner,
                    expires_at=expires_at,
                )
            )
            return token

    def revoke_share(self, token: str, owner: str) -> None:
        """Revokes one link of `owner` (NotFoundError when there is no such link of theirs)."""
        with self._transaction(write=True) as session:
            share = session.get(Share, token)
            if share is None or share.owner != owner or share.revoked_at is not None:
                raise NotFoundError(NO_SHARE)
            share.revoked_at = utcnow()

    def revoke_shares(self, conversation_id: str, owner: str) -> int:
        """Revokes every link to a conversation of `owner`; returns how many were live."""
        with self._transaction(write=True) as session:
            self._locked_conversation(session, conversation_id, owner)
            done = session.execute(
                update(Share)
                .where(Share.conversation_id == conversation_id, Share.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            return int(done.rowcount or 0)

    def load_shared(self, token: str) -> dict[str, Any]:
        """The conversation a live link opens (load_conversation()'s dict); NotFoundError with
        one sentence whether the token is unknown, revoked or expired."""
        with self._transaction(write=False) as session:
            share = _live_share(session, token)
            out = _full_conversation(session, share.conversation_id, share.owner)
            if out is None:
                raise NotFoundError(NO_SHARE)
            return out

    def shared_slide_id(self, token: str) -> str:
        """The slide a live link shows (for the tile routes); NotFoundError as load_shared."""
        with self._transaction(write=False) as session:
            share = _live_share(session, token)
            return session.get_one(Conversation, share.conversation_id).slide_id

    # --- turns ----------------------------------------------------------------------

    def log_turn(
        self,
        conversation_id: str,
        role: str,
        text: str,
        *,
        pgdfc_mode: str | None = None,
        s: int | None = None,
        regions: Sequence[Any] | None = None,
        boxes: Sequence[Any] | None = None,
        masks: Sequence[Any] | None = None,
        timings: Mapping[str, float] | None = None,
        tokens: Mapping[str, int] | None = None,
        model_id: str | None = None,
        revision: str | None = None,
        error: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Appends a turn (role "user" or "assistant") and returns its id (uuid4 hex).

        A failed model call is logged as an assistant turn with `error` set (and
        whatever text was produced). Shapes: see storage.shapes (regions, boxes, masks
        in level-0 pixels). The turn and its masks are written in one transaction.
        """
        row, mask_records = turn_row(
            role, text, pgdfc_mode=pgdfc_mode, s=s, regions=regions, boxes=boxes, masks=masks,
            timings=timings, tokens=tokens, model_id=model_id, revision=revision, error=error,
            meta=meta,
        )  # fmt: skip
        with self._transaction(write=True) as session:
            conv = self._locked_conversation(session, conversation_id)
            return self._append(session, conv, row, mask_records).id

    def _append(
        self,
        session: Session,
        conv: Conversation,
        row: dict[str, Any],
        mask_records: Sequence[shapes.MaskRecord] = (),
    ) -> Turn:
        """Adds a turn (a turn_row) with its masks at the end of the locked conversation."""
        last = session.scalar(select(func.max(Turn.index)).where(Turn.conversation_id == conv.id))
        turn = Turn(
            id=new_id(), conversation_id=conv.id, index=0 if last is None else last + 1, **row
        )
        session.add(turn)
        session.flush()
        add_masks(session, turn.id, mask_records)
        if not conv.title and row["role"] == "user" and row["text"].strip():
            conv.title = title_from(row["text"])
        conv.updated_at = utcnow()
        return turn

    def log_answer(
        self,
        conversation_id: str,
        answer: Any,
        *,
        pgdfc_mode: str | None = None,
        s: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """log_turn() for an engine Answer (the object or its to_dict()): text,
        regions, boxes, masks, timings, tokens, model_id, revision, error; its
        `stopped` / `timed_out` flags go into meta."""
        return self.log_turn(
            conversation_id, "assistant", pgdfc_mode=pgdfc_mode, s=s, **answer_fields(answer, meta)
        )

    # --- an answer written as it is generated ----------------------------------------

    def begin_answer(
        self,
        conversation_id: str,
        question: str | None = None,
        *,
        retry_of: str | None = None,
        pgdfc_mode: str | None = None,
        s: int | None = None,
        model_id: str | None = None,
        question_meta: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Starts an answer: in ONE transaction, the question (a user turn with
        `question_meta`) and an empty assistant turn with status "in_progress" (with
        `meta`). Returns the answer's turn id, for save_answer_text(), finish_answer() and
        fail_answer(). A crash then leaves the question with its partial answer, never a
        question alone.

        Retry: `retry_of` (instead of `question`) is the id of the conversation's last user
        turn; the turns after it (its old answer) are deleted in the same transaction.
        NotFoundError when it is no longer the last question.
        """
        if (question is None) == (retry_of is None):
            raise InvalidRecordError("Give either a question or the question to retry.")
        answer_row, _ = turn_row(
            "assistant", "", pgdfc_mode=pgdfc_mode, s=s, model_id=model_id, meta=meta
        )
        answer_row["status"] = "in_progress"
        question_row = None
        if question is not None:
            question_row, _ = turn_row(
                "user", question, pgdfc_mode=pgdfc_mode, s=s, meta=question_meta
            )
        with self._transaction(write=True) as session:
            conv = self._locked_conversation(session, conversation_id)
            if question_row is not None:
                self._append(session, conv, question_row)
            else:
                last = self._last_user_turn(session, conversation_id)
                if last is None or last.id != retry_of:
                    raise NotFoundError(
                        "The question to answer again is no longer the last one in this "
                        "conversation; reopen the conversation."
                    )
                self._delete_from(session, conversation_id, last.index + 1)
            return self._append(session, conv, answer_row).id

    def save_answer_text(self, turn_id: str, text: str) -> bool:
        """Saves the text generated so far of an answer begun by begin_answer() (one small
        UPDATE; the caller bounds how often). False when the answer is no longer there
        (undone, retried or deleted meanwhile) or already finished."""
        if not isinstance(text, str):
            raise InvalidRecordError(f"A turn's text must be text, not {type(text).__name__}.")
        with self._transaction(write=True) as session:
            result = session.execute(
                update(Turn)
                # "interrupted" too: another replica's start may have marked a live answer
                .where(Turn.id == turn_id, Turn.status.in_(("in_progress", "interrupted")))
                .values(text=clean_text(text))
                .execution_options(synchronize_session=False)
            )
            return result.rowcount > 0

    def finish_answer(
        self, turn_id: str, answer: Any, *, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Completes an answer begun by begin_answer() with the engine's Answer (mapped as
        log_answer() does; `meta` is added to the turn's meta): status "done"."""
        fields = answer_fields(answer, meta)
        row, mask_records = turn_row("assistant", **fields)
        del row["role"], row["pgdfc_mode"], row["s"]  # set by begin_answer
        self._complete(turn_id, {**row, "status": "done"}, mask_records)

    def fail_answer(self, turn_id: str, text: str, error: str) -> None:
        """Completes an answer begun by begin_answer() that failed: the text generated
        until then and the error (a sentence for a person); status "failed"."""
        row, _ = turn_row("assistant", text, error=error)
        self._complete(turn_id, {"text": row["text"], "error": row["error"], "status": "failed"})

    def _complete(
        self,
        turn_id: str,
        values: dict[str, Any],
        mask_records: Sequence[shapes.MaskRecord] = (),
    ) -> None:
        with self._transaction(write=True) as session:
            conversation_id = session.scalar(select(Turn.conversation_id).where(Turn.id == turn_id))
            # the conversation first, as every writer locks it (no deadlock on PostgreSQL)
            conv = (
                None
                if conversation_id is None
                else session.get(Conversation, conversation_id, with_for_update=True)
            )
            turn = None if conv is None else session.get(Turn, turn_id, populate_existing=True)
            if turn is None:
                raise NotFoundError(
                    "The answer being written is no longer in the conversation (it was "
                    "undone, retried or deleted meanwhile)."
                )
            if "meta" in values:
                values = {**values, "meta": {**(turn.meta or {}), **values["meta"]}}
            for name, value in values.items():
                setattr(turn, name, value)
            session.execute(delete(Mask).where(Mask.turn_id == turn_id))
            add_masks(session, turn_id, mask_records)
            conv.updated_at = utcnow()

    def interrupt_answers_in_progress(self) -> int:
        """Marks every answer still "in_progress" as "interrupted", keeping its partial
        text: call once when the app starts (a crash or kill cut those answers off).
        Returns how many there were. With several app replicas on one database, a live
        answer on another replica shows as interrupted until it finishes (finishing
        completes it anyway)."""
        with self._transaction(write=True) as session:
            result = session.execute(
                update(Turn)
                .where(Turn.status == "in_progress")
                .values(status="interrupted")
                .execution_options(synchronize_session=False)
            )
            return result.rowcount

    def get_turn(self, turn_id: str) -> dict[str, Any]:
        """One turn as in load_conversation()['turns']."""
        query = (
            select(Turn)
            .where(Turn.id == turn_id)
            .options(selectinload(Turn.masks), selectinload(Turn.feedback))
        )
        with self._transaction(write=False) as session:
            turn = session.execute(query).scalar_one_or_none()
            if turn is None:
                raise NotFoundError(f"No turn with id {echo(turn_id)} exists.")
            return turn_dict(turn)

    def _last_user_turn(self, session: Session, conversation_id: str) -> Turn | None:
        return session.scalars(
            select(Turn)
            .where(Turn.conversation_id == conversation_id, Turn.role == "user")
            .order_by(Turn.index.desc())
            .limit(1)
        ).first()

    def undo_last_exchange(
        self, conversation_id: str, *, owner: str = LOCAL_OWNER
    ) -> dict[str, Any] | None:
        """Deletes the last user turn and everything after it (its answer). Returns
        {question: the deleted question's text, removed_turn_ids: [...]} so the UI can
        put the question back in the textbox; None when there is nothing to undo."""
        with self._transaction(write=True) as session:
            conv = self._locked_conversation(session, conversation_id, owner)
            question = self._last_user_turn(session, conversation_id)
            if question is None:
                return None
            text, index = question.text, question.index
            removed = self._delete_from(session, conversation_id, index)
            conv.updated_at = utcnow()
            return {"question": text, "removed_turn_ids": removed}

    def _delete_from(self, session: Session, conversation_id: str, first_index: int) -> list[str]:
        """Deletes the conversation's turns with index ≥ first_index (masks and feedback
        go with them through ON DELETE CASCADE). Returns the deleted ids."""
        ids = list(
            session.scalars(
                select(Turn.id)
                .where(Turn.conversation_id == conversation_id, Turn.index >= first_index)
                .order_by(Turn.index)
            )
        )
        if ids:
            session.execute(
                delete(Turn).where(Turn.id.in_(ids)).execution_options(synchronize_session=False)
            )
            session.expire_all()
        return ids

    def delete_conversation(self, conversation_id: str, *, owner: str = LOCAL_OWNER) -> None:
        """Deletes a conversation of `owner` with its turns, masks and feedback (NotFoundError
        when there is none of that id that is theirs). When it was their last conversation
        about its slide, their grant of the slide goes too: an owner holds a slide while
        they have a conversation about it (or uploaded it and have not deleted that one).
        A slide nobody holds any more is reported to `on_unheld`."""
        with self._transaction(write=True) as session:
            conv = self._locked_conversation(session, conversation_id, owner)
            slide_id = conv.slide_id
            session.delete(conv)
            session.flush()
            if session.scalar(
                select(func.count()).where(
                    Conversation.owner == owner, Conversation.slide_id == slide_id
                )
            ):
                return
            session.execute(
                delete(SlideGrant).where(SlideGrant.owner == owner, SlideGrant.slide_id == slide_id)
            )
            unheld = _unheld(session, [slide_id])
        self._report_unheld(unheld)

    def _report_unheld(self, slide_ids: list[str]) -> None:
        """After a commit that removed grants: count it, and report the slides nobody holds."""
        self.grants_dropped += 1
        if slide_ids and self.on_unheld is not None:
            self.on_unheld(slide_ids)

    def unheld_stored_slides(self) -> list[str]:
        """Slides that still have a stored file but no grant: left by a purge that ran outside
        the server (`python -m storage.owners purge`); the server deletes their files at start."""
        with self._transaction(write=False) as session:
            held = select(SlideGrant.slide_id).where(SlideGrant.slide_id == Slide.id).exists()
            return list(
                session.scalars(select(Slide.id).where(Slide.stored_path.is_not(None), ~held))
            )

    def drop_stored_path(self, slide_id: str) -> str | None:
        """When nobody holds the slide any more: clears its `stored_path` (the row stays, with
        its metadata, for the conversations that name it) and returns the old path, for the
        caller to delete the file; None when someone holds it or no file was stored."""
        with self._transaction(write=True) as session:
            slide = session.get(Slide, slide_id, with_for_update=True)
            if slide is None or slide.stored_path is None or not _unheld(session, [slide_id]):
                return None
            path, slide.stored_path = slide.stored_path, None
            return path

    def purge_idle_owners(self, prefix: str, idle_s: float) -> int:
        """Deletes the conversations (with their turns) and slide grants of the owners whose
        name starts with `prefix` ("anon:", public demo visitors) and who wrote nothing for
        `idle_s` seconds. Returns the number of owners purged."""
        cutoff = utcnow() - timedelta(seconds=idle_s)
        anonymous = Conversation.owner.startswith(prefix, autoescape=True)
        with self._transaction(write=True) as session:
            last = dict(
                session.execute(
                    select(Conversation.owner, func.max(Conversation.updated_at))
                    .where(anonymous)
                    .group_by(Conversation.owner)
                ).all()
            )
            granted = SlideGrant.owner.startswith(prefix, autoescape=True)
            for owner, created in session.execute(
                select(SlideGrant.owner, func.max(SlideGrant.created_at))
                .where(granted)
                .group_by(SlideGrant.owner)
            ).all():
                last[owner] = max(created, last.get(owner, created))
            idle = [owner for owner, when in last.items() if when < cutoff]
            unheld = _purge(session, idle)
        self._report_unheld(unheld)
        return len(idle)

    def list_owners(self) -> list[dict[str, Any]]:
        """Everyone with data, by name: [{owner, conversations, slides}] (for operators)."""
        with self._transaction(write=False) as session:
            counts: dict[str, dict[str, Any]] = {}
            for key, column in (
                ("conversations", Conversation.owner),
                ("slides", SlideGrant.owner),
            ):
                for owner, n in session.execute(select(column, func.count()).group_by(column)):
                    empty = {"owner": owner, "conversations": 0, "slides": 0}
                    counts.setdefault(owner, empty)[key] = int(n)
            return [counts[owner] for owner in sorted(counts)]

    def purge_owner(self, owner: str) -> int:
        """Deletes everything of `owner`: their conversations (with turns) and slide grants.
        Returns the number of conversations deleted."""
        with self._transaction(write=True) as session:
            n = session.scalar(select(func.count()).where(Conversation.owner == owner))
            unheld = _purge(session, [owner])
        self._report_unheld(unheld)
        return int(n or 0)

    # --- feedback ---------------------------------------------------------------------

    def add_feedback(self, turn_id: str, value: str | bool, comment: str | None = None) -> int:
        """Records "like" or "dislike" (True / False accepted, as Gradio's LikeData
        gives them) on a turn; every click is kept, the last one counts. Returns the
        feedback row id."""
        if isinstance(value, bool):
            value = "like" if value else "dislike"
        if value not in FEEDBACK_VALUES:
            raise InvalidRecordError(f"Feedback must be 'like' or 'dislike', not {echo(value)}.")
        comment = optional_text(comment, "The feedback comment", 10_000)
        with self._transaction(write=True) as session:
            if session.get(Turn, turn_id) is None:
                raise NotFoundError(f"No turn with id {echo(turn_id)} exists to give feedback on.")
            row = Feedback(turn_id=turn_id, value=value, comment=comment)
            session.add(row)
            session.flush()
            return row.id




# Bytes of randomness in a share link's token (32 URL-safe characters).
SHARE_TOKEN_BYTES = 24
NO_SHARE = (
    "This share link does not exist, was revoked, or has expired; ask its owner for a new one."
)


def _live_share(session: Session, token: str) -> Share:
    """The share of `token`, or NotFoundError(NO_SHARE) when unknown, revoked or expired."""
    share = session.get(Share, token) if isinstance(token, str) else None
    if (
        share is None
        or share.revoked_at is not None
        or (share.expires_at is not None and share.expires_at <= utcnow())
    ):
        raise NotFoundError(NO_SHARE)
    return share


def _full_conversation(session: Session, conversation_id: str, owner: str) -> dict[str, Any] | None:
    """load_conversation()'s dict, or None when `owner` has no such conversation."""
    query = (
        select(Conversation)
        .where(Conversation.id == conversation_id, Conversation.owner == owner)
        .options(
            selectinload(Conversation.slide),
            selectinload(Conversation.turns).selectinload(Turn.masks),
            selectinload(Conversation.turns).selectinload(Turn.feedback),
        )
    )
    conv = session.execute(query).scalar_one_or_none()
    if conv is None:
        return None
    out = conversation_summary(conv, len(conv.turns))
    out["slide"] = slide_dict(conv.slide)
    out["turns"] = [turn_dict(t) for t in conv.turns]
    return out


def _no_conversation(conversation_id: str) -> NotFoundError:
    return NotFoundError(f"No conversation with id {echo(conversation_id)} exists.")


def _purge(session: Session, owners: list[str]) -> list[str]:
    """Deletes the owners' conversations and grants; returns the slides nobody holds now."""
    if not owners:
        return []
    held = list(
        session.scalars(select(SlideGrant.slide_id).where(SlideGrant.owner.in_(owners)).distinct())
    )
    session.execute(delete(Conversation).where(Conversation.owner.in_(owners)))
    session.execute(delete(SlideGrant).where(SlideGrant.owner.in_(owners)))
    return _unheld(session, held)


def _unheld(session: Session, slide_ids: list[str]) -> list[str]:
    """Those of `slide_ids` that no owner has a grant of."""
    held = set(
        session.scalars(select(SlideGrant.slide_id).where(SlideGrant.slide_id.in_(slide_ids)))
    )
    return [slide_id for slide_id in slide_ids if slide_id not in held]


def _grant(session: Session, slide_id: str, owner: str) -> None:
    if session.get(SlideGrant, (slide_id, owner)) is None:
        session.add(SlideGrant(slide_id=slide_id, owner=owner))

