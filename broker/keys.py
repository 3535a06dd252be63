"""Re-encrypting every secret at rest under the newest Fernet key (``python -m broker rotate-keys``).

Every ``text`` column whose name ends in ``_enc`` holds a Fernet token
(:mod:`broker.vault`); they are found in the catalogue, so a column added by a
later migration is rotated without a change here. Each table is walked by
primary key in batches, each batch in its own transaction. A value that
already opens with the newest key is skipped, so an interrupted rotation run
again continues where it stopped and a finished one is a cheap no-op.

A value is replaced only if it is still what was read (``UPDATE … WHERE id =
%s AND col = %s``): a secret the web or a worker changed meanwhile is never
overwritten with a re-encryption of its old plaintext; it is read again and
rotated if it still needs it. A value no configured key opens is reported by
table, column and id (never the value) and left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import psycopg
from psycopg import sql

from broker.vault import Vault, VaultError

SUFFIX = "_enc"
DEFAULT_BATCH_SIZE = 500
# A value changed under us this many times in a row is left for the next run.
MAX_RACES = 3


@dataclass(frozen=True)
class EncryptedTable:
    table: str
    key: str  # the single-column primary key
    columns: tuple[str, ...]


@dataclass
class ColumnTally:
    checked: int = 0       # non-null values looked at
    current: int = 0       # already under the newest key
    rotated: int = 0       # re-encrypted now
    raced: int = 0         # changed by someone else meanwhile and left for the next run
    undecryptable: int = 0


@dataclass(frozen=True)
class Unreadable:
    table: str
    column: str
    row_id: str


@dataclass
class Report:
    columns: dict[str, ColumnTally] = field(default_factory=dict)
    unreadable: list[Unreadable] = field(default_factory=list)
    batches: int = 0
    finished: bool = True  # False when stopped by ``limit_batches``

    def tally(self, table: str, column: str) -> ColumnTally:
        return self.columns.setdefault(f"{table}.{column}", ColumnTally())

    @property
    def complete(self) -> bool:
        """Every secret opens with the newest key: the older keys can be removed."""
        return self.finished and not self.unreadable and not any(t.raced for t in self.columns.values())


class SchemaError(Exception):
    """An encrypted column this command cannot walk safely."""


CATALOGUE = """
SELECT c.relname AS "table", a.attname AS "column",
       (SELECT string_agg(k.attname, ',') FROM pg_index i
          JOIN pg_attribute k ON k.attrelid = i.indrelid AND k.attnum = ANY(i.indkey)
        WHERE i.indrelid = c.oid AND i.indisprimary) AS key
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
  AND right(a.attname, length(%(suffix)s)) = %(suffix)s AND a.atttypid = 'text'::regtype
ORDER BY c.relname, a.attnum
"""


def encrypted_tables(conn: psycopg.Connection) -> list[EncryptedTable]:
    """Every table with ``*_enc`` text columns, with its primary key."""
    found: dict[str, EncryptedTable] = {}
    for row in conn.execute(CATALOGUE, {"suffix": SUFFIX}).fetchall():
        if not row["key"] or "," in row["key"]:
            raise SchemaError(f"table {row['table']} has encrypted column {row['column']} but no "
                              "single-column primary key to walk it by")
        previous = found.get(row["table"])
        columns = (previous.columns if previous else ()) + (row["column"],)
        found[row["table"]] = EncryptedTable(row["table"], row["key"], columns)
    return list(found.values())


def count_values(conn: psycopg.Connection, tables: list[EncryptedTable]) -> int:
    """How many non-null encrypted values there are (the progress bar's total)."""
    total = 0
    for t in tables:
        counts = sql.SQL(", ").join(sql.SQL("count({}) AS {}").format(sql.Identifier(c), sql.Identifier(f"n{i}"))
                                    for i, c in enumerate(t.columns))
        row = conn.execute(sql.SQL("SELECT {} FROM {}").format(counts, sql.Identifier(t.table))).fetchone()
        total += sum(row.values())
    return total


def _is_current(vault: Vault, token: str) -> bool:
    try:
        return vault.is_current(token)
    except VaultError:  # not even ASCII: damaged, and rotate() will say so
        return False


def rotate(conn: psycopg.Connection, vault: Vault, *, batch_size: int = DEFAULT_BATCH_SIZE,
           limit_batches: int | None = None, progress: Callable[[int], None] = lambda n: None,
           warn: Callable[[str], None] = lambda message: None,
           tables: list[EncryptedTable] | None = None) -> Report:
    """Re-encrypt every ``*_enc`` value not yet under the newest key.

    ``progress(n)`` is called with the number of values checked per batch;
    ``warn`` with a line per unreadable value (table, column, id: never the
    value). ``limit_batches`` stops after that many batches (``finished`` is
    then False): running again continues, since current values are skipped.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = Report()
    tables = encrypted_tables(conn) if tables is None else tables
    for t in tables:
        for column in t.columns:
            report.tally(t.table, column)
    for t in tables:
        key = sql.Identifier(t.key)
        parts = dict(key=key, table=sql.Identifier(t.table),
                     cols=sql.SQL(", ").join(sql.Identifier(c) for c in t.columns),
                     any_set=sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c))
                                                  for c in t.columns))
        first = sql.SQL("SELECT {key}::text AS id, {key} AS key, {cols} FROM {table} "
                        "WHERE ({any_set}) ORDER BY {key} LIMIT %(limit)s").format(**parts)
        following = sql.SQL("SELECT {key}::text AS id, {key} AS key, {cols} FROM {table} "
                            "WHERE ({any_set}) AND {key} > %(after)s ORDER BY {key} LIMIT %(limit)s").format(**parts)
        after = None
        while True:
            if limit_batches is not None and report.batches >= limit_batches:
                report.finished = False
                return report
            with conn.transaction():
                rows = conn.execute(first if after is None else following,
                                    {"after": after, "limit": batch_size}).fetchall()
                if not rows:
                    break
                checked = 0
                for row in rows:
                    for column in t.columns:
                        if row[column] is not None:
                            checked += 1
                            _rotate_value(conn, vault, t, column, row, report, warn)
                after = rows[-1]["key"]
            report.batches += 1
            progress(checked)
            if len(rows) < batch_size:
                break
    return report


def _rotate_value(conn: psycopg.Connection, vault: Vault, t: EncryptedTable, column: str, row: dict,
                  report: Report, warn: Callable[[str], None]) -> None:
    tally = report.tally(t.table, column)
    tally.checked += 1
    update = sql.SQL("UPDATE {table} SET {col} = %(new)s WHERE {key} = %(id)s AND {col} = %(old)s").format(
        table=sql.Identifier(t.table), col=sql.Identifier(column), key=sql.Identifier(t.key))
    reread = sql.SQL("SELECT {col} AS value FROM {table} WHERE {key} = %(id)s").format(
        table=sql.Identifier(t.table), col=sql.Identifier(column), key=sql.Identifier(t.key))
    token = row[column]
    for _ in range(MAX_RACES):
        if token is None or _is_current(vault, token):
            tally.current += 1
            return
        try:
            fresh = vault.rotate(token)
        except VaultError:
            tally.undecryptable += 1
            report.unreadable.append(Unreadable(t.table, column, row["id"]))
            warn(f"cannot decrypt {t.table}.{column} of {t.key} {row['id']}: no key in FERNET_KEYS "
                 "opens it (or it is damaged); left unchanged")
            return
        if conn.execute(update, {"new": fresh, "id": row["key"], "old": token}).rowcount == 1:
            tally.rotated += 1
            return
        # Changed (or deleted) since it was read: look again rather than overwrite.
        again = conn.execute(reread, {"id": row["key"]}).fetchone()
        token = again["value"] if again else None
    tally.raced += 1
    warn(f"{t.table}.{column} of {t.key} {row['id']} kept changing while being rotated; run again")
