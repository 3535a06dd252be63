"""Operator commands: ``python -m broker <command>``.

    python -m broker migrate
    python -m broker partners list
    python -m broker partners create <id> --name "Acme Cloud"   # prints the first password once
    python -m broker partners add-password <id>                  # for a rotation; prints it once
    python -m broker partners remove-password <id>               # reads the password from stdin

Passwords are printed once and never stored in clear; the one to remove is
read from standard input so it stays out of the shell history and `ps`.
"""

from __future__ import annotations

import argparse
import sys

from broker import config, db, logs, migrate, partners


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)

    if args.command == "migrate":
        return migrate.main()

    settings = config.load_or_exit()
    logs.configure(settings.log_level)
    with db.connect(settings.database_url, "forgedrain-cli") as conn:
        try:
            if args.action == "list":
                for row in partners.list_all(conn):
                    print(f"{row['id']}\t{row['name']}\tpasswords={row['passwords']}\t"
                          f"created={row['created_at']:%Y-%m-%d}")
            elif args.action == "create":
                password = partners.create(conn, settings, args.id, args.name)
                print(f"partner {args.id} created; its password (shown once):\n{password}")
            elif args.action == "add-password":
                password = partners.add_password(conn, args.id)
                print(f"new password for {args.id} (shown once; the old ones still work):\n{password}")
            elif args.action == "remove-password":
                password = sys.stdin.readline().strip()
                partners.remove_password(conn, args.id, password)
                print(f"password removed from {args.id}")
        except partners.PartnerError as exc:
            print(f"forgedrain: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
