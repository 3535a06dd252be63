"""Schema migrations: numbered plain SQL files applied in order, once.

``migrations/NNNN_name.sql`` files are append-only. Each pending file runs in
its own transaction together with its row in ``schema_migrations`` (version,
name, sha256 checksum), under ``pg_advisory_xact_lock``:

1. a transaction-level lock is released by commit, rollback or a dead
   connection, so a crashed runner never leaves the lock behind, and it works
   through a transaction-mode PgBouncer where session locks do not;
2. every runner re-reads the applied set after taking the lock, so two runners
   started at once (two release phases, a release and a one-off dyno) apply
   each file exactly once and both succeed;
3. a file whose checksum differs from the recorded one stops the runner before
   anything is applied: an edited migration means the database and the code
   disagree about the schema, and guessing would be worse than stopping.

Applied versions that have no file (the code was rolled back) are reported but
tolerated: Heroku runs the release phase on rollbacks too, and migrations are
written to be compatible with the previous release.

Run it with ``python -m broker.migrate``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

from broker import db

log = logging.getLogger("broker.migrate")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql\Z")

# Arbitrary constant shared by every runner: "forgedrain-migrate" as an int8.
LOCK_ID = int.from_bytes(hashlib.sha256(b"forgedrain-migrate").digest()[:8], "big", signed=True)

TRACKING_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The migrations on disk and in the database cannot be reconciled."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path
    sql: str
    checksum: str


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file in ``directory``, in version order."""
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: migration files are named NNNN_lowercase_name.sql"
            )
        version, name = match.groups()
        if version in found:
            raise MigrationError(
                f"{path.name}: version {version} is also used by {found[version].path.name}"
            )
        data = path.read_bytes()
        found[version] = Migration(
            version=version,
            name=name,
            path=path,
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


def _check_applied(applied: dict[str, dict], migrations: list[Migration]) -> None:
    on_disk = {m.version: m for m in migrations}
    for version, row in sorted(applied.items()):
        migration = on_disk.get(version)
        if migration is None:
            log.warning("migration=%s_%s is applied but has no file here", version, row["name"])
        elif migration.checksum != row["checksum"]:
            raise MigrationError(
                f"{migration.path.name} was changed after it was applied "
                f"(recorded sha256 {row['checksum'][:12]}…, file {migration.checksum[:12]}…); "
                "applied migrations are never edited: restore the file and add a new one"
            )


def _applied(conn: psycopg.Connection) -> dict[str, dict]:
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {row["version"]: row for row in rows}


def migrate(conn: psycopg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration on ``conn`` (autocommit); return the versions applied."""
    migrations = discover(directory)
    done: list[str] = []
    # One lock-protected transaction per file keeps each lock short and lets a
    # long migration history resume where a crash stopped it.
    for migration in migrations:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
            conn.execute(TRACKING_TABLE)
            applied = _applied(conn)
            _check_applied(applied, migrations)
            if migration.version in applied:
                continue
            # No parameters: psycopg then sends the whole file as one simple query,
            # which may hold several statements.
            try:
                conn.execute(migration.sql.encode("utf-8"))
            except psycopg.Error as exc:
                raise MigrationError(f"{migration.path.name} failed: {exc}") from exc
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            log.info("migration=%s_%s applied", migration.version, migration.name)
            done.append(migration.version)
    if not migrations:
        return done
    # Checksums are verified even when nothing is pending.
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        _check_applied(_applied(conn), migrations)
    return done


def main() -> int:
    from broker import config, logs

    settings = config.load_or_exit()
    logs.configure(settings.log_level)
    try:
        with db.connect(settings.database_url, "forgedrain-release") as conn:
            applied = migrate(conn)
    except MigrationError as exc:
        log.error("migrations refused: %s", exc)
        return 1
    except psycopg.OperationalError as exc:
        log.error("migrations failed: cannot reach PostgreSQL (%s)", type(exc).__name__)
        return 1
    log.info("migrations applied=%d pending=0", len(applied))
    return 0


if __name__ == "__main__":
    sys.exit(main())
