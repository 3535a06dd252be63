import base64
import json
import subprocess
import sys
from pathlib import Path

from tests.support.partner import provision_body

ROOT = Path(__file__).resolve().parent.parent


def cli(env, *args, stdin: str = ""):
    return subprocess.run([sys.executable, "-m", "broker", *args], cwd=ROOT, input=stdin,
                          env=dict(env, PATH="/usr/bin:/bin"), capture_output=True, text=True, timeout=60)


def test_an_operator_creates_rotates_and_lists_partners(env, client):
    created = cli(env, "partners", "create", "acme-cloud", "--name", "Acme Cloud")
    assert created.returncode == 0, created.stderr
    first = created.stdout.strip().splitlines()[-1]
    added = cli(env, "partners", "add-password", "acme-cloud")
    second = added.stdout.strip().splitlines()[-1]
    listed = cli(env, "partners", "list")
    assert "acme-cloud\tAcme Cloud\tpasswords=2" in listed.stdout

    def provision(password):
        token = base64.b64encode(f"acme-cloud:{password}".encode()).decode()
        return client.post("/heroku/resources", data=json.dumps(provision_body()),
                           headers={"Authorization": f"Basic {token}"}).status_code

    assert provision(first) == 200 and provision(second) == 200
    removed = cli(env, "partners", "remove-password", "acme-cloud", stdin=first + "\n")
    assert removed.returncode == 0
    assert first not in removed.stdout + removed.stderr
    assert provision(first) == 401 and provision(second) == 200


def test_partner_mistakes_are_reported_without_a_traceback(env):
    cli(env, "partners", "create", "acme-cloud", "--name", "Acme")
    again = cli(env, "partners", "create", "acme-cloud", "--name", "Acme")
    assert again.returncode == 1
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
    missing = cli(env, "partners", "add-password", "nobody")
    assert missing.returncode == 1 and "no partner 'nobody'" in missing.stderr
    wrong = cli(env, "partners", "remove-password", "acme-cloud", stdin="not-it\n")
    assert wrong.returncode == 1
