"""The operator's view of who has what in the log:

    python -m storage.owners list                        # owner, conversations, slides
    python -m storage.owners export OWNER FOLDER         # one JSON file per conversation
    python -m storage.owners purge OWNER                 # delete their conversations and grants

The database is OMNIPATH_DATABASE_URL, else ./data/omnipath.db, or --database-url. Owners are
"local" (no login), "user:NAME" (--auth-file) and "anon:..." (public demo visitors).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from omnipath.errors import OmniPathError
from storage.export import conversation_json
from storage.log import Store


def export_owner(store: Store, owner: str, folder: Path) -> list[Path]:
    """Every conversation of `owner` as <folder>/<conversation id>.json; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for summary in store.list_conversations(owner=owner, limit=1_000_000):
        path = folder / f"{summary['id']}.json"
        data = conversation_json(store, summary["id"], owner=owner)
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage.owners", description=__doc__)
    parser.add_argument("--database-url", default=None, help="SQLAlchemy URL or SQLite file")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="who has data")
    export = commands.add_parser("export", help="write an owner's conversations as JSON")
    export.add_argument("owner")
    export.add_argument("folder", type=Path)
    commands.add_parser("purge", help="delete an owner's data").add_argument("owner")
    args = parser.parse_args(argv)
    try:
        with Store(args.database_url) as store:
            if args.command == "list":
                for row in store.list_owners():
                    print(f"{row['owner']}\t{row['conversations']}\t{row['slides']}")
            elif args.command == "export":
                paths = export_owner(store, args.owner, args.folder)
                print(f"{len(paths)} conversation(s) of {args.owner} written to {args.folder}.")
            else:
                count = store.purge_owner(args.owner)
                print(
                    f"{count} conversation(s) of {args.owner} deleted, with their slide grants; "
                    "the server deletes the slide files nobody holds any more when it next starts."
                )
    except OmniPathError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
