"""The users file of `--auth-file` (TOML: `[users.NAME] password_hash = "$2b$..."`), and its CLI.

    python -m web.users add NAME [--file users.toml]     # asks for the password twice
    python -m web.users add NAME --password-stdin        # reads it from standard input
    python -m web.users remove NAME
    python -m web.users list

Passwords are kept only as bcrypt hashes; the file is written readable by its owner only (0600)
and replaced whole, so a crash never leaves half of it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

import bcrypt
import tomlkit

from omnipath.errors import OmniPathError

DEFAULT_FILE = Path("users.toml")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
# bcrypt reads at most 72 bytes of a password; a longer one is refused rather than cut.
MAX_PASSWORD_BYTES = 72
MIN_PASSWORD_CHARS = 8


class UsersError(OmniPathError):
    """The users file or a user's name or password cannot be used."""


def read_users(path: Path) -> dict[str, str]:
    """{name: bcrypt hash}; {} when the file does not exist yet."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsersError(f"The users file {path} cannot be read: {exc}.") from None
    users = data.get("users", {})
    return {name: str(entry.get("password_hash", "")) for name, entry in users.items()}


def _write_users(path: Path, users: dict[str, str]) -> None:
    doc = tomlkit.document()
    doc.add(tomlkit.comment("OmniPath users (python -m web.users); bcrypt hashes only."))
    table = tomlkit.table()
    for name, hashed in sorted(users.items()):
        entry = tomlkit.table()
        entry["password_hash"] = hashed
        table[name] = entry
    doc["users"] = table
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(tomlkit.dumps(doc))
    os.replace(partial, path)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsersError(
            "A user name is 1 to 64 letters, digits and . _ @ - (starting with a letter or digit)."
        )
    return name


def add_user(path: Path, name: str, password: str) -> None:
    """Add `name` (or change their password)."""
    _check_name(name)
    if len(password) < MIN_PASSWORD_CHARS:
        raise UsersError(f"The password must have at least {MIN_PASSWORD_CHARS} characters.")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise UsersError(f"The password must be at most {MAX_PASSWORD_BYTES} bytes long.")
    users = read_users(path)
    users[name] = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    _write_users(path, users)


def remove_user(path: Path, name: str) -> None:
    users = read_users(path)
    if name not in users:
        raise UsersError(f"There is no user {name!r} in {path}.")
    del users[name]
    _write_users(path, users)


def verify(path: Path, name: str, password: str) -> bool:
    """True when `name` is in the file and `password` is theirs."""
    hashed = read_users(path).get(name)
    encoded = password.encode() if isinstance(password, str) else b""
    if not hashed or not encoded or len(encoded) > MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(encoded, hashed.encode())
    except ValueError:  # not a bcrypt hash
        return False


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise UsersError("The two passwords differ; nothing was changed.")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m web.users", description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="default users.toml")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a user or change their password")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    commands.add_parser("remove", help="remove a user").add_argument("name")
    commands.add_parser("list", help="list the users")
    args = parser.parse_args(argv)
    try:
        if args.command == "add":
            add_user(args.file, args.name, _read_password(args.password_stdin))
            print(f"User {args.name} saved in {args.file}.")
        elif args.command == "remove":
            remove_user(args.file, args.name)
            print(f"User {args.name} removed from {args.file}.")
        else:
            print("\n".join(sorted(read_users(args.file))))
    except OmniPathError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
