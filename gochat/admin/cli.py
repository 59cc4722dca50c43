"""``gochat-admin``: operator commands beside a node (stopped while they run).

``gochat-admin import-gochat --from mysql://user@host/gochat --salt SALT``
moves a GoChat database into the node's ``--db`` (or the SQLite file in
``--data-dir``). Errors are one line and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from gochat.auth import load_legacy_key

#: where import-gochat puts GoChat's sign key; the node loads it from there
LEGACY_KEY_NAME = "gochat-jwt.key"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gochat-admin", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    imp = commands.add_parser(
        "import-gochat",
        help="import a GoChat (MySQL) database: users, friends, groups, message lists",
        description="Import users (same ids, phones, nicknames, passwords), friends, groups,"
        " members and every message list with its seqs from a GoChat MySQL database into"
        " this node's database. Stop the node first. A second run changes nothing.",
    )
    imp.add_argument(
        "--from", dest="source", required=True, metavar="URL", help="mysql://user:pw@host/db"
    )
    imp.add_argument(
        "--salt", required=True, help="GoChat's app.salt (its passwords are md5(pw + salt))"
    )
    imp.add_argument(
        "--db",
        help="the node's --db [sqlite:DATA-DIR/gochat.db]",
        default=os.environ.get("GOCHAT_DB"),
    )
    imp.add_argument(
        "--data-dir",
        default=os.environ.get("GOCHAT_DATA_DIR") or "./gochat-data",
        help="the node's --data-dir [./gochat-data]",
    )
    imp.add_argument(
        "--jwt-key-file",
        metavar="PATH",
        help="a file holding GoChat's jwt.sign_key: its unexpired tokens keep working"
        f" (copied to DATA-DIR/{LEGACY_KEY_NAME}, which the node loads)",
    )
    imp.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def install_legacy_key(source: str, data_dir: str) -> str:
    """Copy GoChat's sign key into the data dir (mode 0600); returns the new path."""
    key = load_legacy_key(source)
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, LEGACY_KEY_NAME)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    os.replace(tmp, path)
    return path


def import_gochat(
    args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    from gochat.admin.gochat_import import ImportFailed, run_import

    db = args.db or "sqlite:" + os.path.join(args.data_dir, "gochat.db")
    key_path = None
    try:
        if args.jwt_key_file:
            key_path = install_legacy_key(args.jwt_key_file, args.data_dir)
        summary = run_import(
            args.source, db, args.data_dir, args.salt, None if args.no_progress else err
        )
    except ImportFailed as exc:
        err.write(f"gochat-admin: {exc}\n")
        return 1
    except (OSError, ValueError) as exc:
        err.write(f"gochat-admin: {' '.join(str(exc).split())}\n")
        return 1
    except Exception as exc:  # a driver error: one line, not a traceback
        err.write(f"gochat-admin: import failed: {' '.join(str(exc).split())}\n")
        return 1
    for line in summary.lines():
        out.write(line + "\n")
    if key_path is not None:
        out.write(f"GoChat's sign key: {key_path} (GoChat tokens valid until they expire)\n")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "import-gochat":
        raise SystemExit(import_gochat(args))


if __name__ == "__main__":
    main()
