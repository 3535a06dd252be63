"""Output formats: records in, bytes out (SPEC §4; research otlp-syslog-forge.md §1, §3, §6).

Pure functions: no sockets, no database, no clock reads. Everything a format
needs (the drain's token, the source's service name, whether `arguments` may
leave) is handed in.
"""
