"""Poll-side CPU per million records (issue 12 target: ≤ 18 CPU s for decode + fingerprints + encode).

Builds realistic Forge pages in memory (500 records a page by default, records
shaped like Atlassian's sample: ten string attributes, `arguments` JSON text,
80–400-byte bodies, some multi-line or non-ASCII) and times, with
``time.process_time``, each step the poller spends CPU on per page:

  (a) ``broker.forge.decode_page`` on the page's bytes (no HTTP),
  (b) ``broker.polling.fingerprint`` of every record,
  (c) ``broker.outbox.forge_payload`` of the page's records,

plus ``orjson.loads`` of the same bytes (the floor for (a)), the tolerant path
(every page holding one record orjson refuses), and alternatives for (b) and (c)
written here, not in the broker, to show what changing them would save.

    python bench/poll_cpu.py [--records 300000] [--page-size 500] [--passes 3]

Each figure is the best of ``--passes`` passes over all pages. Needs no servers.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from broker import forge, outbox, polling  # noqa: E402

FUNCTIONS = (("issue-panel-resolver", "jira:issuePanel"), ("webtrigger-sync", "webtrigger"),
             ("scheduled-cleanup", "scheduledTrigger"), ("admin-page", "jira:adminPage"))
MESSAGES = (
    "Fetched {n} issues for project PROJ in {ms} ms",
    "User {hex} opened the panel; rendering {n} items",
    "Sync finished: {n} created, {ms} updated, 0 failed (cursor {hex})",
    "Slow request to /rest/api/3/search took {ms} ms (limit 1000 ms), retrying with a smaller page of {n}",
    "Ünïcødé ✓ 日本語 — Grüße aus Zürich 🚀 (user {n})",
)
TRACE = ("TypeError: Cannot read properties of undefined (reading 'fields')\n"
         "    at resolveIssue (webpack://app/src/resolvers/index.js:42:17)\n"
         "    at async Promise.all (index 0)\n    at async handler (webpack://app/src/index.js:12:3)")
LEVELS = (("INFO", 30, 60), ("DEBUG", 20, 15), ("WARN", 40, 12), ("ERROR", 50, 10), ("TRACE", 10, 3))


def make_record(rng: random.Random, ts_ms: int, app: str, env: str) -> dict:
    text, number, _ = rng.choices(LEVELS, [w for *_, w in LEVELS])[0]
    fn, module = rng.choice(FUNCTIONS)
    if text == "ERROR" and rng.random() < 0.3:
        body = TRACE
    else:
        body = rng.choice(MESSAGES).format(n=rng.randrange(1, 100_000), ms=rng.randrange(1, 5000),
                                           hex=f"{rng.getrandbits(64):016x}")
    arguments = orjson.dumps([{"payload": {"issue": {"key": f"PROJ-{rng.randrange(1, 999)}"}},
                               "context": {"cloudId": f"{rng.getrandbits(128):032x}"}}]).decode()
    attributes = [("appId", app), ("environmentId", env), ("invocationId", f"{rng.getrandbits(128):032x}"),
                  ("installationContext", f"ari:cloud:jira::site/{rng.getrandbits(128):032x}"),
                  ("appVersion", "1.206.0"), ("functionKey", fn), ("moduleType", module),
                  ("arguments", arguments), ("licenseState", "ACTIVE"), ("edition", "standard")]
    return {
        "timeUnixNano": str(ts_ms * 1_000_000), "severityNumber": number, "severityText": text,
        "body": {"stringValue": body}, "traceId": f"{rng.getrandbits(128):032x}",
        "spanId": f"{rng.getrandbits(64):016x}",
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes],
    }


def make_pages(records: int, page_size: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    app, env = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f", "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2"
    ts = 1_763_719_200_000
    pages = []
    for start in range(0, records, page_size):
        page = []
        for _ in range(min(page_size, records - start)):
            ts += rng.choice((0, 1, 3, 25, 180))
            page.append(make_record(rng, ts, app, env))
        pages.append(orjson.dumps({"appLogs": page, "cursor": f"c{start}"}))
    return pages


def with_one_bad_record(page: bytes) -> bytes:
    """The same page with its first body holding a lone surrogate (orjson refuses the page)."""
    return page.replace(b'"body":{"stringValue":"', b'"body":{"stringValue":"\\ud800', 1)


def best(passes: int, step, items) -> float:
    """Least CPU time of ``passes`` runs of ``step`` over ``items``, results dropped as the poller drops
    them after each page (keeping 200,000 decoded records alive would make the collector's full passes,
    not the code, the cost)."""
    times = []
    for _ in range(passes):
        start = time.process_time()
        for item in items:
            step(item)
        times.append(time.process_time() - start)
    return min(times)


# --- alternatives, measured only here ---------------------------------------------------

def fingerprint_fast(record: dict) -> bytes:
    """polling.fingerprint's identity, equal digests, skipping orjson.dumps for a plain stringValue body.

    For {"stringValue": s} the sorted-keys dump is exactly '{"stringValue":' + json(s) + '}', so
    only the string needs encoding; invocationId is found the same way."""
    invocation = ""
    for attribute in record.get("attributes") or ():
        if type(attribute) is dict and attribute.get("key") == "invocationId":
            value = attribute.get("value")
            invocation = value.get("stringValue", "") if type(value) is dict else ""
            break
    body = record.get("body")
    if type(body) is dict and len(body) == 1 and type(body.get("stringValue")) is str:
        dumped = '{"stringValue":' + orjson.dumps(body["stringValue"]).decode() + "}"
    else:
        dumped = orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode() if body is not None else ""
    parts = (str(record.get("timeUnixNano", "")), str(invocation), str(record.get("severityText", "")),
             str(record.get("traceId", "")), str(record.get("spanId", "")), dumped)
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def encode_level(level: int):
    return lambda records: zlib.compress(orjson.dumps(records), level)


def encode_raw_slice(page: bytes) -> bytes:
    """If the page decoded on the fast path with no repair, its appLogs bytes could be stored as they
    came (no orjson.dumps); shown here as a lower bound: zlib of the page bytes at level 1."""
    return zlib.compress(page, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args(argv)
    if args.records < 200_000:
        parser.error("--records must be at least 200,000")

    pages = make_pages(args.records, args.page_size)
    total = args.records
    per_million = 1_000_000 / total
    decoded = [forge.decode_page(p).records for p in pages]
    assert sum(map(len, decoded)) == total
    bad_pages = [with_one_bad_record(p) for p in pages]
    assert forge.decode_page(bad_pages[0]).repaired == 0 and len(forge.decode_page(bad_pages[0]).records) == \
        len(decoded[0])
    records = [r for page in decoded for r in page]
    assert all(fingerprint_fast(r) == polling.fingerprint(r) for r in records[:5000])

    # The fixtures stay alive for the whole run; move them out of the collector's sight, as a poller
    # holding one page at a time has no such heap.
    gc.collect()
    gc.freeze()

    mb = sum(map(len, pages)) / 1e6
    print(f"{total:,} records in {len(pages):,} pages of {args.page_size}; {mb:.1f} MB of page JSON "
          f"({sum(map(len, pages)) / total:.0f} bytes a record); best of {args.passes} passes; "
          f"CPU s per million records\n")

    def row(name: str, seconds: float, note: str = "") -> float:
        print(f"  {name:<48} {seconds * per_million:6.2f}  {note}")
        return seconds * per_million

    n = args.passes
    baseline = row("orjson.loads of the page (floor for decode)", best(n, orjson.loads, pages))
    decode = row("(a) forge.decode_page", best(n, forge.decode_page, pages))
    fingerprint = row("(b) polling.fingerprint", best(n, polling.fingerprint, records))
    encode = row("(c) outbox.forge_payload", best(n, outbox.forge_payload, decoded))
    print(f"  {'total (a) + (b) + (c)':<48} {decode + fingerprint + encode:6.2f}  target <= 18")
    print(f"  decode_page / orjson.loads = {decode / baseline:.2f}")

    print("\nFor comparison (not the poller's code):")
    row("decode_page, every page with one bad record", best(n, forge.decode_page, bad_pages),
        "(the tolerant path each time)")
    row("fingerprint, no orjson.dumps of a string body", best(n, fingerprint_fast, records),
               "(same digests)")
    alternatives = {}
    for level in (3, 1):
        step = encode_level(level)
        size = sum(len(step(p)) for p in decoded[:20]) / sum(len(outbox.forge_payload(p)) for p in decoded[:20])
        alternatives[level] = row(f"forge_payload at zlib level {level}", best(n, step, decoded),
                                  f"({size:.2f}x the bytes of level {outbox.COMPRESSION_LEVEL})")
    row("  of which orjson.dumps", best(n, orjson.dumps, decoded))
    row("zlib level 1 of the page bytes as received", best(n, encode_raw_slice, pages))
    print(f"  {'total with zlib level 3':<48} {decode + fingerprint + alternatives[3]:6.2f}")


if __name__ == "__main__":
    main()
