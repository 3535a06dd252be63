"""gunicorn settings for the web process, after heroku/python-getting-started.

Reads only gunicorn's own variables (PORT, WEB_CONCURRENCY, WEB_THREADS);
the app reads its settings in ``create_app()``.
"""

import os

bind = [f"0.0.0.0:{os.environ.get('PORT', '5000')}"]
# Heroku's Python buildpack sets WEB_CONCURRENCY from the dyno's memory.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "5"))
# Below Heroku's 30 s router timeout and 30 s shutdown window.
timeout = 20
graceful_timeout = 20
# Longer than the Heroku router's 90 s idle keep-alive, so the router closes first.
keepalive = 95
# Load the app once in the master: a configuration error stops start-up once,
# with one message, instead of once per worker. Nothing connects at load time;
# the database pool opens in post_fork below.
preload_app = True
forwarded_allow_ips = "*"
# gunicorn 27's control socket is not used; leaving it on would make every
# instance on a host share one path under $HOME.
control_socket_disable = True
accesslog = "-"
access_log_format = (
    'at=info method=%(m)s path="%(U)s" status=%(s)s bytes=%(B)s '
    'duration_ms=%(M)s request_id=%({x-request-id}i)s'
)

# gunicorn's own messages in the same logfmt shape as the app's; access lines
# above are already logfmt and are left as they are.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"logfmt": {"()": "broker.logs.LogfmtFormatter"}},
    "handlers": {
        "error": {"class": "logging.StreamHandler", "formatter": "logfmt", "stream": "ext://sys.stderr"},
        "access": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
    },
    "root": {"handlers": ["error"], "level": "INFO"},
    "loggers": {
        "gunicorn.error": {"handlers": ["error"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}


def post_fork(server, worker):
    app = worker.app.wsgi()
    app.extensions["forgedrain"].db.open()


def worker_exit(server, worker):
    app = worker.app.wsgi()
    app.extensions["forgedrain"].db.close()
