"""The session log: SQLAlchemy models, Alembic migrations, the log API and exports.

Imports no torch and nothing from omnipath except omnipath.errors.

    from storage import Store, conversation_json, conversation_geojson
    store = Store()                      # ./data/omnipath.db, or OMNIPATH_DATABASE_URL
"""

from storage.errors import DatabaseError, InvalidRecordError, NotFoundError
from storage.export import (
    conversation_geojson,
    conversation_json,
    export_files,
    mask_polygons,
    turn_overlays,
)
from storage.log import Store

__all__ = [
    "DatabaseError",
    "InvalidRecordError",
    "NotFoundError",
    "Store",
    "conversation_geojson",
    "conversation_json",
    "export_files",
    "mask_polygons",
    "turn_overlays",
]
