"""The wire to drains: HTTP sessions, TLS sockets, retry classes, and the SSRF guard."""
