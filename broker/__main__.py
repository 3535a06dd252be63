"""Operator commands: ``python -m broker <command>``.

    python -m broker migrate
    python -m broker partners list
    python -m broker partners create <id> --name "Acme Cloud"   # prints the first password and SSO salt once
    python -m broker partners add-password <id>                  # for a rotation; prints it once
    python -m broker partners remove-password <id>               # reads the password from stdin
    python -m broker partners rotate-sso-salt <id> [--overlap-minutes N]  # prints the new salt once
    python -m broker partners end-sso-salt-overlap <id>          # the previous salt stops working now
    python -m broker rotate-keys [--batch-size N] [--limit-batches N]
    python -m broker backfill SOURCE_ID --since 2026-11-20T08:00:00Z [--wait]
    python -m broker replay DRAIN_ID --since 2026-11-20T08:00:00Z [--wait]
    python -m broker status [RESOURCE_ID]

Passwords are printed once and never stored in clear; the one to remove is
read from standard input so it stays out of the shell history and `ps`.
No command prints a stored secret. Exit status: 0 done, 1 something failed
(said on stderr), 2 bad input (nothing changed), 3 rotate-keys stopped by
--limit-batches before the end (run it again to continue).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import uuid
from datetime import datetime, timezone

from broker import config, db, logs, migrate, partners
from broker.validation import InputError

ACTOR = "operator-cli"
WAIT_POLL_SECONDS = 1.0
EXIT_FAILED, EXIT_USAGE, EXIT_UNFINISHED = 1, 2, 3


def _uuid(noun: str):
    def parse(value: str) -> uuid.UUID:
        try:
            return uuid.UUID(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {noun} id (a UUID)") from None
    parse.__name__ = f"{noun} id"
    return parse


def _since(value: str) -> datetime:
    from broker import sources

    try:
        return sources.parse_time(value, "--since")
    except InputError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _positive(limit: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if not 1 <= number <= limit:
            raise argparse.ArgumentTypeError(f"{number} is out of range: 1 to {limit}")
        return number
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m broker", description="Forge Drain operator commands")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply pending database migrations")
    partner = commands.add_parser("partners", help="integrator partners of the Partner API")
    actions = partner.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list integrator partners")
    create = actions.add_parser("create", help="create a partner and print its first password")
    create.add_argument("id")
    create.add_argument("--name", required=True)
    add = actions.add_parser("add-password", help="add a password (rotation) and print it")
    add.add_argument("id")
    remove = actions.add_parser("remove-password", help="remove a password read from stdin")
    remove.add_argument("id")
    salt = actions.add_parser(
        "rotate-sso-salt", help="give the partner a new SSO salt and print it",
        description="Issue a new SSO salt for an integrator (its resources open only with its own salt) and "
                    "print it once. The previous salt keeps working for --overlap-minutes while the partner "
                    "deploys the new one; 0 ends it at once (a leaked salt).")
    salt.add_argument("id")
    salt.add_argument("--overlap-minutes", type=_minutes(partners.MAX_SSO_SALT_OVERLAP_SECONDS // 60),
                      default=partners.SSO_SALT_OVERLAP_SECONDS // 60, metavar="N",
                      help=f"how long the previous salt still works (default "
                           f"{partners.SSO_SALT_OVERLAP_SECONDS // 60}, at most "
                           f"{partners.MAX_SSO_SALT_OVERLAP_SECONDS // 60})")
    end = actions.add_parser("end-sso-salt-overlap", help="stop the previous SSO salt working now")
    end.add_argument("id")

    rotate = commands.add_parser(
        "rotate-keys", help="re-encrypt every secret at rest under the first key of FERNET_KEYS",
        description="Re-encrypt every *_enc column under the first (newest) key of FERNET_KEYS, in batches "
                    "by primary key, one transaction each. Values already under the newest key are skipped, "
                    "so an interrupted run can simply be started again. Exit 0 when every secret opens with "
                    "the newest key (older keys can then be removed), 1 when some value no key opens "
                    "(listed by table, column and id; left unchanged), 3 when stopped by --limit-batches.")
    rotate.add_argument("--batch-size", type=_positive(100_000), default=500, metavar="N",
                        help="rows per batch and transaction (default 500)")
    rotate.add_argument("--limit-batches", type=_positive(10**9), default=None, metavar="N",
                        help="stop after N batches (run again to continue)")

    backfill = commands.add_parser(
        "backfill", help="re-poll a Forge source from a past time (at most 14 days back)",
        description="Move the source's checkpoint back to --since; the workers re-poll from there "
                    "(the same as POST /v1/resources/<id>/sources/<source_id>/backfill).")
    backfill.add_argument("source_id", metavar="SOURCE_ID", type=_uuid("source"))
    backfill.add_argument("--since", required=True, type=_since, metavar="ISO8601",
                          help="a time with a zone within the last 14 days, such as 2026-11-20T08:00:00Z")
    backfill.add_argument("--wait", action="store_true",
                          help="show the checkpoint's progress until the backfill has caught up")

    replay = commands.add_parser(
        "replay", help="deliver again to a drain what the outbox holds since a time",
        description="Move the drain's cursor back so every outbox batch of its resource stored at or after "
                    "--since is delivered again (receivers dedupe by Frame-Id / record ids), and clear its "
                    "back-off. Only batches the outbox still holds can be replayed.")
    replay.add_argument("drain_id", metavar="DRAIN_ID", type=_uuid("drain"))
    replay.add_argument("--since", required=True, type=_since, metavar="ISO8601",
                        help="a time with a zone, such as 2026-11-20T08:00:00Z")
    replay.add_argument("--wait", action="store_true", help="show the backlog going down until it is empty")

    drains = commands.add_parser("log-drains", help="the Heroku add-ons' log drains")
    drain_actions = drains.add_subparsers(dest="action", required=True)
    sync = drain_actions.add_parser(
        "sync", help="move every add-on's log drain to the current log_drain_url",
        description="Point every Heroku add-on's log drain at the current log_drain_url (PUBLIC_URL/ingest/"
                    "logplex) through the Platform API, with the add-on's stored OAuth token (refreshed when "
                    "stale). Resources already there are skipped, so an interrupted run continues where it "
                    "stopped. Each move is audited. Exit 0 when every drain is at the URL, 1 when some could "
                    "not be moved (listed with what to do).")
    sync.add_argument("--dry-run", action="store_true",
                      help="read the drains and say what would move, without moving or recording anything")

    status = commands.add_parser("status", help="the fleet at a glance, or one resource in detail")
    status.add_argument("resource_id", metavar="RESOURCE_ID", nargs="?", type=_uuid("resource"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.command == "migrate":
        return migrate.main()

    settings = config.load_or_exit()
    logs.configure(settings.log_level)
    command = {"partners": _partners, "rotate-keys": _rotate_keys, "backfill": _backfill,
               "replay": _replay, "status": _status, "log-drains": _log_drains}[args.command]
    with db.connect(settings.database_url, "forgedrain-cli") as conn:
        try:
            return command(conn, settings, args)
        except InputError as exc:
            _err(exc.message)
            return EXIT_USAGE


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def _err(message: str) -> None:
    print(f"forgedrain: {message}", file=sys.stderr)


def _bar(**kwargs):
    from tqdm import tqdm

    # Drawn on stderr, and only on a terminal: logs and pipes get the summary alone.
    return tqdm(file=sys.stderr, disable=None, dynamic_ncols=True, **kwargs)


def _note(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


# --- partners ------------------------------------------------------------------------

def _minutes(limit: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of minutes") from None
        if not 0 <= number <= limit:
            raise argparse.ArgumentTypeError(f"{number} is out of range: 0 to {limit}")
        return number
    return parse


def _partners(conn, settings, args) -> int:
    from broker.vault import Vault

    try:
        if args.action == "list":
            for row in partners.list_all(conn):
                sso = "sso=yes" if row["has_sso_salt"] else "sso=no"
                if row["sso_salt_previous_until"] is not None:
                    sso += f"(previous until {_when(row['sso_salt_previous_until'])})"
                print(f"{row['id']}\t{row['name']}\tpasswords={row['passwords']}\t{sso}\t"
                      f"created={row['created_at']:%Y-%m-%d}")
        elif args.action == "create":
            # One transaction: a partner never exists without its SSO salt.
            with conn.transaction():
                password = partners.create(conn, settings, args.id, args.name)
                salt = partners.rotate_sso_salt(conn, Vault(settings.fernet_keys), args.id, overlap_seconds=0)
            print(f"partner {args.id} created; its SSO salt, to sign its users' sign-ins (shown once):\n"
                  f"{salt}\nits password (shown once):\n{password}")
        elif args.action == "rotate-sso-salt":
            salt = partners.rotate_sso_salt(conn, Vault(settings.fernet_keys), args.id,
                                            overlap_seconds=args.overlap_minutes * 60)
            overlap = (f"the previous one still works for {_plural(args.overlap_minutes, 'minute')}"
                       if args.overlap_minutes else "the previous one no longer works")
            print(f"new SSO salt for {args.id} (shown once; {overlap}):\n{salt}")
        elif args.action == "end-sso-salt-overlap":
            ended = partners.end_sso_salt_overlap(conn, args.id)
            print(f"the previous SSO salt of {args.id} no longer works" if ended
                  else f"{args.id} had no previous SSO salt still working")
        elif args.action == "add-password":
            password = partners.add_password(conn, args.id)
            print(f"new password for {args.id} (shown once; the old ones still work):\n{password}")
        elif args.action == "remove-password":
            password = sys.stdin.readline().strip()
            partners.remove_password(conn, args.id, password)
            print(f"password removed from {args.id}")
    except partners.PartnerError as exc:
        _err(str(exc))
        return EXIT_FAILED
    return 0


# --- rotate-keys -----------------------------------------------------------------------

def _rotate_keys(conn, settings, args) -> int:
    from broker import keys, status
    from broker.vault import Vault

    vault = Vault(settings.fernet_keys)
    try:
        tables = keys.encrypted_tables(conn)
    except keys.SchemaError as exc:
        _err(str(exc))
        return EXIT_FAILED
    total = keys.count_values(conn, tables)
    columns = ", ".join(f"{t.table}.{c}" for t in tables for c in t.columns)
    print(f"rotating {total:,} encrypted values in {columns} to key 1 of {len(settings.fernet_keys)} "
          "in FERNET_KEYS", file=sys.stderr)
    with _bar(total=total, unit="value", desc="rotate-keys") as bar:
        report = keys.rotate(conn, vault, batch_size=args.batch_size, limit_batches=args.limit_batches,
                             progress=bar.update, warn=_note, tables=tables)
    rows = [(name, t.checked, t.current, t.rotated, t.raced, t.undecryptable)
            for name, t in report.columns.items()]
    rows.append(("total", *(sum(r[i] for r in rows) for i in range(1, 6))))
    print(status.table(["column", "checked", "already current", "re-encrypted", "changed meanwhile",
                        "undecryptable"], rows, right=range(1, 6)))
    if not report.finished:
        print(f"stopped after {_plural(report.batches, 'batch', 'batches')} (--limit-batches): "
              "run rotate-keys again to continue")
        return EXIT_UNFINISHED
    if report.unreadable:
        _err(f"{_plural(len(report.unreadable), 'value')} could not be decrypted with any key in FERNET_KEYS "
             "and were left unchanged:")
        for u in report.unreadable:
            print(f"  {u.table}.{u.column} id={u.row_id}", file=sys.stderr)
        return EXIT_FAILED
    raced = sum(t.raced for t in report.columns.values())
    if raced:
        _err(f"{raced} values kept changing while being rotated: run rotate-keys again")
        return EXIT_FAILED
    print("every secret at rest opens with the first key of FERNET_KEYS"
          + ("; the other keys can be removed now" if len(settings.fernet_keys) > 1 else ""))
    return 0


# --- backfill --------------------------------------------------------------------------

def _backfill(conn, settings, args) -> int:
    from broker import sources

    updated = sources.backfill(conn, args.source_id, args.since, actor=ACTOR, field="--since")
    if updated is None:
        raise InputError("source", f"no source {args.source_id} (of a live resource)")
    print(f"backfill of source {updated['id']} (app {updated['app_id']}, environment "
          f"{updated['environment_id']}) started: the workers re-poll from {_when(updated['backfill_from'])}; "
          f"it has caught up when the checkpoint passes {_when(updated['backfill_until'])}")
    if updated["state"] != "active":
        _err(f"the source is paused ({updated['pause_reason'] or 'no reason recorded'}): nothing is polled "
             "until it is verified or its credentials are updated")
        return EXIT_FAILED if args.wait else 0
    if not args.wait:
        return 0
    _warn_if_clock_stopped(conn)
    return _wait_for_backfill(conn, updated)


def _log_drains(conn, settings, args) -> int:
    import functools

    from broker import log_drains, outbound, provisioning
    from broker.vault import Vault

    url = provisioning.log_drain_url(settings)
    if not url.startswith("https://"):
        raise InputError("PUBLIC_URL", f"the drain URL would be {url}: Heroku takes only https:// drain URLs "
                                       "; set PUBLIC_URL to the "
                                       "service's https address")
    connect = functools.partial(db.connect, settings.database_url, "forgedrain-cli")
    total = log_drains.pending(connect, settings)
    print(f"{_plural(total, 'add-on')} not known to have their drain at {url}")
    needs_a_look: dict[str, list] = {}
    counts: dict[str, int] = {}
    with outbound.session() as session, _bar(total=total, unit="add-on") as bar:
        for outcome in log_drains.sync(connect, settings, Vault(settings.fernet_keys), session, actor=ACTOR,
                                       dry_run=args.dry_run):
            bar.update(1)
            counts[outcome.result] = counts.get(outcome.result, 0) + 1
            if outcome.result == log_drains.WOULD_MOVE:
                _note(f"{outcome.resource_id}: would move from {outcome.previous_url}")
            if outcome.result in log_drains.WHAT_TO_DO:
                needs_a_look.setdefault(outcome.result, []).append(outcome)
    print(", ".join(f"{result}: {n}" for result, n in counts.items()) or "nothing to do")
    for result, outcomes in needs_a_look.items():
        print(f"\n{result} ({len(outcomes)}): {log_drains.WHAT_TO_DO[result]}")
        for outcome in outcomes:
            print(f"  {outcome.resource_id}" + (f"  {outcome.reason}" if outcome.reason else ""))
    return EXIT_FAILED if needs_a_look else 0


def _warn_if_clock_stopped(conn) -> None:
    from broker import heartbeats

    age = heartbeats.age(conn)
    if age is None or age.total_seconds() > 120:
        _err("the clock has not ticked in the last 2 minutes: without clock and workers nothing moves")


def _wait_for_backfill(conn, started: dict) -> int:
    start, until = started["backfill_from"], started["backfill_until"]
    total = max(1, math.ceil((until - start).total_seconds() / 60))
    try:
        with _bar(total=total, unit="min", desc="backfill",
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} min of logs "
                             "[{elapsed}<{remaining}{postfix}]") as bar:
            while True:
                row = conn.execute(
                    "SELECT checkpoint, backfill_from, state, pause_reason, last_error FROM sources WHERE id = %s",
                    (started["id"],)).fetchone()
                if row is None:
                    _err("the source was deleted while backfilling")
                    return EXIT_FAILED
                if row["state"] != "active":
                    _err(f"the source was paused ({row['pause_reason']}): {row['last_error'] or ''}".rstrip(": "))
                    return EXIT_FAILED
                done = row["backfill_from"] is None
                position = total if done else min(total, max(0, int((row["checkpoint"] - start).total_seconds() // 60)))
                bar.update(position - bar.n)
                bar.set_postfix_str(f"checkpoint {row['checkpoint']:%Y-%m-%d %H:%M:%S}", refresh=True)
                if done:
                    break
                time.sleep(WAIT_POLL_SECONDS)
    except KeyboardInterrupt:
        _err("stopped waiting; the backfill goes on in the workers")
        return 130
    print(f"backfill caught up: checkpoint {_when(row['checkpoint'])}")
    return 0


# --- replay ----------------------------------------------------------------------------

def _replay(conn, settings, args) -> int:
    from broker import replay

    done = replay.replay(conn, args.drain_id, args.since, actor=ACTOR, field="--since")
    print(f"drain {done.drain_id} ({done.kind}) of resource {done.resource_id}")
    since = _when(done.since)
    if done.truncated:
        if done.oldest_held is None:
            print(f"the outbox holds no batch of this resource: nothing stored at or after {since} is left "
                  "to replay (batches are pruned once every drain has them)")
        else:
            print(f"the outbox holds this resource's batches only from {_when(done.oldest_held)} on (older ones "
                  f"were pruned): the replay starts there, not at {since}")
    if done.new_cursor == done.old_cursor:
        print(f"nothing re-queued: the drain has received no batch stored at or after {since} "
              f"(cursor stays at {done.old_cursor})")
    else:
        print(f"cursor moved back from batch {done.old_cursor} to {done.new_cursor}: "
              f"{_plural(done.batches, 'batch', 'batches')} ({_plural(done.records, 'record')}) stored from "
              f"{_when(done.starts_at)} on will be delivered again")
    print(f"back-off cleared; backlog now {_plural(done.backlog_batches, 'batch', 'batches')} "
          f"({_plural(done.backlog_records, 'record')})")
    if not done.enabled:
        _err("the drain is disabled: nothing is delivered to it until it is enabled")
        return EXIT_FAILED if args.wait else 0
    if not args.wait or done.backlog_records == 0:
        return 0
    _warn_if_clock_stopped(conn)
    return _wait_for_backlog(conn, done)


def _wait_for_backlog(conn, done) -> int:
    from broker import replay

    total = done.backlog_records
    try:
        with _bar(total=total, unit="record", desc="replay") as bar:
            while True:
                drain = conn.execute(
                    "SELECT id, resource_id, kind, cursor, enabled, consecutive_failures, last_error "
                    "FROM drains WHERE id = %s", (done.drain_id,)).fetchone()
                if drain is None:
                    _err("the drain was deleted while replaying")
                    return EXIT_FAILED
                if not drain["enabled"]:
                    _err("the drain was disabled while replaying")
                    return EXIT_FAILED
                _, left = replay.count(conn, drain, drain["cursor"])
                if left > bar.total:
                    bar.total = left  # new records arrived meanwhile
                bar.update(max(0, bar.total - left) - bar.n)
                if drain["consecutive_failures"]:
                    from broker.status import clip

                    bar.set_postfix_str(f"failing: {clip(drain['last_error'], 40)}", refresh=True)
                if left == 0:
                    break
                time.sleep(WAIT_POLL_SECONDS)
    except KeyboardInterrupt:
        _err("stopped waiting; the replay goes on in the workers")
        return 130
    print("replay delivered: the drain has caught up")
    return 0


# --- status ----------------------------------------------------------------------------

def _status(conn, settings, args) -> int:
    from broker import redisconn, status
    from broker.vault import Vault

    if args.resource_id is not None:
        report = status.resource(conn, Vault(settings.fernet_keys), args.resource_id)
        if report is None:
            raise InputError("resource", f"no resource {args.resource_id}")
        print(report)
        return 0
    client = redisconn.connect(settings.redis_url)
    try:
        report, ok = status.fleet(conn, client)
    finally:
        client.close()
    print(report)
    return 0 if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
