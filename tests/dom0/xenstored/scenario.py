"""A tiny table-driven harness for the sans-IO xenstored core.

Each step is ``(connection, transaction, request, expected)``:

* connection: a name from :class:`Harness` (``"dom0"`` is a Unix-socket
  tool; ``"d5"`` is domain 5's ring connection, introduced on first use);
* transaction: 0, or a name; a TRANSACTION_START step with a name records
  the id the daemon handed out under that name;
* request: ``(XsType, payload)`` with payload as bytes, or a tuple of strings
  each sent NUL-terminated;
* expected: ``"OK"`` / other text (reply of the same type with that text +
  NUL), raw ``bytes`` (exact reply payload), an error name such as
  ``"!ENOENT"``, or ``None`` (any success).

A step ``("events", conn, [(path, token), ...])`` asserts the watch events
delivered to ``conn`` since the last check (and clears them). A step
``("forget", conn)`` drops the harness's handle on a connection the daemon
closed (e.g. after RELEASE), so the next use introduces a fresh one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dom0.xenstored import StaticDomainInfo, XenStore
from dom0.xenstored.connection import Connection
from ring.xs_wire import XsMessage, XsType, encode_strings


class Harness:
    def __init__(self, xs: XenStore | None = None) -> None:
        self.info = StaticDomainInfo()
        self.xs = xs or XenStore(domain_info=self.info, clock=lambda: 0.0)
        self.conns: dict[str, Connection] = {}
        self.txs: dict[str, int] = {}
        self.events: dict[str, list[tuple[str, str]]] = {}
        self.req_id = 100

    def conn(self, name: str) -> Connection:
        if name not in self.conns:
            if name.startswith("dom"):
                self.conns[name] = self.xs.connect_socket()
            else:
                self.conns[name] = self.xs.introduce(int(name[1:]))
            self.events[name] = []
        return self.conns[name]

    def request(self, name: str, tx: int | str, req: tuple[int, Any]) -> tuple[int, bytes]:
        conn = self.conn(name)
        type_, payload = req
        if not isinstance(payload, bytes):
            payload = encode_strings(*payload)
        tx_id = self.txs.get(tx, 0) if isinstance(tx, str) else 0
        if isinstance(tx, int):
            tx_id = tx
        self.req_id += 1
        self.xs.handle(conn, XsMessage(type_, self.req_id, tx_id, payload))
        reply = None
        self.collect()
        for t, r, x, p in self._pending.pop(name, []):
            assert reply is None, "more than one reply"
            assert (r, x) == (self.req_id, tx_id), "ids not echoed"
            reply = (t, p)
        assert reply is not None, "no reply"
        if type_ == XsType.TRANSACTION_START and isinstance(tx, str) and reply[0] == type_:
            self.txs[tx] = int(reply[1][:-1])
        return reply

    _pending: dict[str, list[tuple[int, int, int, bytes]]]

    def collect(self) -> None:
        self._pending = {}
        for name, conn in self.conns.items():
            for t, r, x, p in conn.take_messages(self.xs.clock()):
                if t == XsType.WATCH_EVENT:
                    assert (r, x) == (0, 0)
                    path, token, rest = p.split(b"\0")
                    assert rest == b""
                    self.events[name].append((path.decode(), token.decode()))
                else:
                    self._pending.setdefault(name, []).append((t, r, x, p))

    def run(self, steps: Iterable[tuple[Any, ...]]) -> None:
        for i, step in enumerate(steps):
            if step[0] == "forget":
                self.conns.pop(step[1], None)
                self.events.pop(step[1], None)
                continue
            if step[0] == "events":
                _, name, expected = step
                self.conn(name)
                self.collect()
                got = self.events[name]
                self.events[name] = []
                assert got == list(expected), f"step {i}: events {got} != {expected}"
                continue
            name, tx, req, expected = step
            t, p = self.request(name, tx, req)
            where = f"step {i} {step!r}: got {(t, p)!r}"
            if expected is None:
                assert t == req[0], where
            elif isinstance(expected, str) and expected.startswith("!"):
                assert (t, p) == (XsType.ERROR, expected[1:].encode() + b"\0"), where
            elif isinstance(expected, str):
                assert (t, p) == (req[0], expected.encode() + b"\0"), where
            else:
                assert (t, p) == (req[0], expected), where


R, W, D, MK, RM = XsType.READ, XsType.WRITE, XsType.DIRECTORY, XsType.MKDIR, XsType.RM
GP, SP, WA, UW = XsType.GET_PERMS, XsType.SET_PERMS, XsType.WATCH, XsType.UNWATCH
TS, TE = XsType.TRANSACTION_START, XsType.TRANSACTION_END


def w(path: str, value: str | bytes) -> tuple[int, bytes]:
    """A WRITE request (value without NUL)."""
    v = value.encode() if isinstance(value, str) else value
    return (W, path.encode() + b"\0" + v)
