"""Name resolution as tests need it, patched at the one boundary every lookup crosses:
``socket.getaddrinfo`` (the operating system's resolver). Nothing of the broker is patched, so the
SSRF guard, urllib3 and the syslog sink run exactly as deployed and only the answers change.

- :func:`loopback_only`: names and addresses resolve only when they are loopback, so nothing a
  fuzzed drain or test points at can leave this machine.
- :class:`ScriptedResolver`: a name whose answers change from one lookup to the next, as a DNS
  server under an attacker's control answers (DNS rebinding), and a log of every lookup of it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import deque
from typing import Iterable


def loopback_only(monkeypatch) -> None:
    """Names and addresses resolve only when they are loopback, so nothing a fuzzed drain or test
    points at (a drain test, a verify) can leave this machine; the rest fail as unresolvable."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name.lower() != "localhost":
            try:
                loopback = ipaddress.ip_address(name.strip("[]").split("%", 1)[0]).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise socket.gaierror(socket.EAI_NONAME, "tests reach loopback only")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class ScriptedResolver:
    """Answers lookups of ``name`` from a script, one answer per lookup; every other name and
    every address literal goes to the real resolver.

    An answer is an address (``"127.0.0.1"``), a list of addresses, or None (the name does not
    resolve: ``EAI_NONAME``). The last answer repeats once the script is used up. Lookups of the
    name are logged in :attr:`lookups` (the address answered, or None), so a test can say how
    often the code under test asked, and what it was told.

    Answers are addresses only: a script that answered a public address would send a connection
    off this machine if the code under test accepted it, so a public answer (which the guard must
    accept) is only ever given to a lookup that does not connect (:func:`broker.sinks.guard.resolve`
    called by the test itself).
    """

    def __init__(self, monkeypatch, name: str, answers: Iterable[str | list[str] | None]):
        self.name = name.lower()
        self._answers = deque(answers)
        if not self._answers:
            raise ValueError("a script needs at least one answer")
        self._lock = threading.Lock()
        self.lookups: list[list[str] | None] = []
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self._getaddrinfo)

    def then(self, *answers: str | list[str] | None) -> "ScriptedResolver":
        """Replace what is left of the script (the name is re-pointed)."""
        with self._lock:
            self._answers = deque(answers)
        return self

    def _next(self) -> list[str] | None:
        with self._lock:
            answer = self._answers[0] if len(self._answers) == 1 else self._answers.popleft()
            addresses = None if answer is None else [answer] if isinstance(answer, str) else list(answer)
            self.lookups.append(addresses)
            return addresses

    def _getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name is None or name.lower().rstrip(".") != self.name:
            return self._real(host, port, family, type, proto, flags)
        addresses = self._next()
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos = []
        for address in addresses:
            # Each address as the real resolver returns it: literals resolve without a lookup.
            for info in self._real(address, port, family, type, proto, flags | socket.AI_NUMERICHOST):
                if info not in infos:
                    infos.append(info)
        return infos
