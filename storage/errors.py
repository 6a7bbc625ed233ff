"""Storage's own typed errors (subclasses of omnipath.errors.OmniPathError).

Unknown ids raise omnipath.errors.NotFoundError; these two cover what is specific to
storage: a database that cannot be used, and a log entry with malformed content.
"""

from __future__ import annotations

from omnipath.errors import NotFoundError, OmniPathError

__all__ = ["DatabaseError", "InvalidRecordError", "NotFoundError"]


class DatabaseError(OmniPathError):
    """The database cannot be reached, opened or upgraded."""


class InvalidRecordError(OmniPathError):
    """A value handed to the session log has the wrong shape or is out of range."""
