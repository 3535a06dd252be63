import socket

from broker import config
from web import create_app


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthz_answers_while_the_process_is_up(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_is_ok_when_postgres_and_redis_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["checks"] == {"postgres": "ok", "redis": "ok"}


def test_readyz_names_postgres_when_it_is_unreachable(env):
    env["DATABASE_URL"] = f"postgresql://postgres:hunter2@127.0.0.1:{closed_port()}/forgedrain"
    app = create_app(config.load(env, testing=True))
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert set(response.json["failed"]) == {"postgres"}
        assert "hunter2" not in response.get_data(as_text=True)
        # healthz does not depend on the database
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        app.extensions["forgedrain"].db.close()


def test_readyz_names_redis_when_it_is_unreachable(env):
    env["REDIS_URL"] = f"redis://127.0.0.1:{closed_port()}/0"
    app = create_app(config.load(env, testing=True))
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert set(response.json["failed"]) == {"redis"}
    finally:
        app.extensions["forgedrain"].db.close()


def test_unknown_paths_get_a_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json["error"] == "not_found"


def test_it_echoes_the_router_request_id(client):
    response = client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    assert client.get("/healthz").headers["X-Request-Id"]


def test_a_pooled_connection_killed_while_idle_is_replaced_not_served(client, database_url, monkeypatch):
    from broker import db

    assert client.get("/readyz").status_code == 200  # the pool now holds a connection
    with db.connect(database_url) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()["n"]
    assert killed >= 1
    monkeypatch.setattr(db, "IDLE_CHECK_SECONDS", 0.0)  # as if it had sat idle
    assert client.get("/readyz").status_code == 200


def test_partner_calls_get_503_when_postgres_is_down(env):
    from tests.support.partner import heroku_headers, provision_body
    import json

    env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{closed_port()}/forgedrain"
    app = create_app(config.load(env, testing=True))
    try:
        response = app.test_client().post("/heroku/resources", data=json.dumps(provision_body()),
                                          headers=heroku_headers())
        assert response.status_code == 503
        assert "retry" in response.get_json(force=True)["message"]
    finally:
        app.extensions["forgedrain"].db.close()
