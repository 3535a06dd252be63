import time
from tests.support.live import live_web

def test_probe(env, tmp_path):
    env = dict(env, PUBLIC_URL="https://forgedrain.example.com")
    t = time.monotonic()
    with live_web(env, tmp_path) as web:
        t1 = time.monotonic()
        s = web.session()
        r = s.get(web.url("/healthz"))
        print("up", t1 - t, r.status_code)
        s.close()
    print("total", time.monotonic() - t)
    print(web.output())
