import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from broker import db, migrate
from broker.migrate import MigrationError

ROOT = Path(__file__).resolve().parent.parent


def tables(conn) -> set[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    ).fetchall()
    return {r["tablename"] for r in rows}


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, target)
    return target


def test_it_applies_every_migration_to_an_empty_database(empty_database_url):
    with db.connect(empty_database_url) as conn:
        applied = migrate.migrate(conn)
        assert applied == [m.version for m in migrate.discover()]
        assert {"schema_migrations", "resources", "audit_log", "heartbeats"} <= tables(conn)
        rows = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall()
        assert [(r["version"], r["checksum"]) for r in rows] == [
            (m.version, m.checksum) for m in migrate.discover()
        ]


def test_a_second_run_is_a_no_op(empty_database_url):
    with db.connect(empty_database_url) as conn:
        migrate.migrate(conn)
        before = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
        assert migrate.migrate(conn) == []
        assert conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall() == before


def test_two_runners_at_once_both_succeed_and_apply_each_file_once(empty_database_url, migrations_dir):
    # A slow migration widens the window in which the two runners overlap.
    (migrations_dir / "9000_slow.sql").write_text(
        "SELECT pg_sleep(0.5);\nCREATE TABLE slow_marker (id int);\n"
    )
    results: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            with db.connect(empty_database_url) as conn:
                barrier.wait()
                results[i] = migrate.migrate(conn, migrations_dir)
        except Exception as exc:  # the assertion below reports it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(isinstance(r, Exception) for r in results.values()), results
    every = [m.version for m in migrate.discover(migrations_dir)]
    assert sorted(results[0] + results[1]) == sorted(every)
    with db.connect(empty_database_url) as conn:
        count = conn.execute("SELECT count(*) AS n FROM schema_migrations").fetchone()["n"]
        assert count == len(every)


def test_a_changed_applied_file_is_refused(empty_database_url, migrations_dir):
    with db.connect(empty_database_url) as conn:
        migrate.migrate(conn, migrations_dir)
        first = sorted(migrations_dir.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
        (migrations_dir / "9001_new.sql").write_text("CREATE TABLE should_not_exist (id int);")
        with pytest.raises(MigrationError, match=f"{first.name} was changed after it was applied"):
            migrate.migrate(conn, migrations_dir)
        # refused before anything else was applied
        assert "should_not_exist" not in tables(conn)


def test_a_failing_migration_is_rolled_back_whole_and_named(empty_database_url, migrations_dir):
    (migrations_dir / "9002_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )
    with db.connect(empty_database_url) as conn:
        with pytest.raises(MigrationError, match="9002_broken.sql failed"):
            migrate.migrate(conn, migrations_dir)
        assert "half_done" not in tables(conn)
        versions = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
        assert "9002" not in versions
        assert "0001" in versions


def test_badly_named_and_duplicate_files_are_refused(migrations_dir):
    (migrations_dir / "12_short.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lowercase_name.sql"):
        migrate.discover(migrations_dir)
    (migrations_dir / "12_short.sql").unlink()
    (migrations_dir / "0001_again.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="version 0001 is also used"):
        migrate.discover(migrations_dir)


def test_the_command_exits_non_zero_on_a_changed_file(env, empty_database_url, migrations_dir):
    env = dict(env, DATABASE_URL=empty_database_url, PATH="/usr/bin:/bin")
    command = [sys.executable, "-m", "broker.migrate"]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "migrations applied=" in first.stderr
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0
    assert "applied=0" in again.stderr
    with db.connect(empty_database_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = '0001'")
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "0001_resources.sql was changed after it was applied" in refused.stderr


def test_a_bad_environment_stops_the_command_with_status_2(env):
    env = dict(env, FERNET_KEYS="nope", PATH="/usr/bin:/bin")
    result = subprocess.run([sys.executable, "-m", "broker.migrate"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "FERNET_KEYS is invalid" in result.stderr
