"""The sans-IO XenStore daemon: (connection, message) in, queued output out.

:class:`XenStore` owns the tree, the domains, the connections and their
watches. A transport hands it each decoded request with
:meth:`XenStore.handle`; the reply - and any watch events the request caused,
for this or any other connection - are appended synchronously to the
affected connections' output queues (:class:`~.connection.Connection`). The
transport then writes those bytes to its socket or ring. Because nothing here
awaits, each request is atomic with respect to every other client.

Dispatch is one table (:data:`XenStore._TABLE` built in ``__init__``): type
number -> handler, flags. ``PRIV`` handlers are refused with ``EACCES`` for
unprivileged connections in exactly one place, ``handle``; unknown types get
``ENOSYS``; a request naming an unknown transaction gets ``ENOENT``.

Hooks for the rest of the system:

* :attr:`XenStore.attach_ring` is called when INTRODUCE creates a domain
  connection, so a ring transport can map the page and bind the port.
* :meth:`XenStore.check_domains` is what ``VIRQ_DOM_EXC`` should trigger;
  it asks the :class:`~.domain.DomainInfo` provider about every known domain.
* :meth:`XenStore.input_delay` tells a transport to hold a connection's next
  request for a while (conflict credit, :mod:`.conflict`); the core itself
  never waits.
* :meth:`XenStore.event_expiry_delay` / :meth:`XenStore.expire_events` drop
  watch events that stayed unsent too long (``--timeout watch-event``); a
  transport runs them on a timer.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from ring.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    XsMessage,
    XsType,
    encode_message,
    split_strings,
)

from .conflict import ConflictCredit
from .connection import Connection, Watch
from .control import run_control
from .domain import Domain, DomainInfo, DomainState, StaticDomainInfo
from .errors import XsErr, error_payload
from .paths import SPECIAL_PATHS, canonicalize, decode_path, domain_path, relative_to
from .perms import (
    PERM_OWNER,
    PERM_READ,
    PERM_WRITE,
    Perm,
    PermList,
    Principal,
    format_perms,
    parse_perms,
    perm_for_conn,
)
from .quota import Quotas
from .store import DirectView, Event, Store, TreeOps, View
from .transaction import Transaction

_log = logging.getLogger("xensim.xenstored")

__all__ = ["XenStore"]

OK = b"OK\0"
FLAG_PRIV = 1  # privileged connections only
FLAG_NOTID = 2  # the header's tx_id is ignored

Handler = Callable[[Connection, XsMessage, Transaction | None], bytes]


def _one_arg(payload: bytes) -> bytes:
    """The single NUL-terminated argument (xenstored ``onearg``): else EINVAL."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise XsErr("EINVAL")
    return payload[:-1]


def _strings(payload: bytes) -> list[bytes]:
    items = split_strings(payload)
    if items is None:
        raise XsErr("EINVAL")
    return items


def _domid(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 5:
        raise XsErr("EINVAL")
    return int(raw)


def _uint(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 20:
        raise XsErr("EINVAL")
    return int(raw)


class XenStore:
    """The daemon core.

    Args:
        domain_info: the hypervisor's view of domains (default: every domid
            exists and runs - for a standalone daemon and tests).
        quotas: limit settings (default: Xen 4.17's).
        clock: seconds, monotonic; transports pass ``trio.current_time``.
        priv_domid: the privileged domain (0).
        conflicts: conflict-credit policy (default: oxenstored's burst 5,
            one point per 0.05 s; ``ConflictCredit(burst=0)`` disables it).
    """

    def __init__(
        self,
        *,
        domain_info: DomainInfo | None = None,
        quotas: Quotas | None = None,
        clock: Callable[[], float] = time.monotonic,
        priv_domid: int = 0,
        conflicts: ConflictCredit | None = None,
    ) -> None:
        self.domain_info: DomainInfo = domain_info or StaticDomainInfo()
        self.quotas = quotas or Quotas()
        self.clock = clock
        self.priv_domid = priv_domid
        self.conflicts = conflicts if conflicts is not None else ConflictCredit()
        self.store = Store(priv_domid)
        self.direct = DirectView(self.store)
        self.ops = TreeOps(self.quotas, self._valid, priv_domid)
        self.domains: dict[int, Domain] = {priv_domid: Domain(priv_domid, generation=0)}
        self.connections: dict[int, Connection] = {}
        self.watch_index: dict[str, list[Watch]] = {}
        self.special_perms: dict[str, tuple[PermList, int]] = {
            p: ((Perm(priv_domid, 0),), 0) for p in SPECIAL_PATHS
        }
        self.attach_ring: Callable[[Connection, int, int], None] | None = None
        self.logging = False
        self.events_sent = 0
        self.events_too_big = 0
        self.internal_errors = 0
        self._open_tx_generations: collections.Counter[int] = collections.Counter()
        self._conn_ids = itertools.count(1)
        self._post: list[Callable[[], None]] = []
        self._table: dict[int, tuple[Handler, int]] = {
            XsType.CONTROL: (self._do_control, FLAG_PRIV),
            XsType.DIRECTORY: (self._do_directory, 0),
            XsType.READ: (self._do_read, 0),
            XsType.GET_PERMS: (self._do_get_perms, 0),
            XsType.WATCH: (self._do_watch, FLAG_NOTID),
            XsType.UNWATCH: (self._do_unwatch, FLAG_NOTID),
            XsType.TRANSACTION_START: (self._do_transaction_start, 0),
            XsType.TRANSACTION_END: (self._do_transaction_end, 0),
            XsType.INTRODUCE: (self._do_introduce, FLAG_PRIV),
            XsType.RELEASE: (self._do_release, FLAG_PRIV),
            XsType.GET_DOMAIN_PATH: (self._do_get_domain_path, 0),
            XsType.WRITE: (self._do_write, 0),
            XsType.MKDIR: (self._do_mkdir, 0),
            XsType.RM: (self._do_rm, 0),
            XsType.SET_PERMS: (self._do_set_perms, 0),
            XsType.IS_DOMAIN_INTRODUCED: (self._do_is_domain_introduced, FLAG_PRIV),
            XsType.RESUME: (self._do_resume, FLAG_PRIV),
            XsType.SET_TARGET: (self._do_set_target, FLAG_PRIV),
            XsType.RESET_WATCHES: (self._do_reset_watches, FLAG_NOTID),
            XsType.DIRECTORY_PART: (self._do_directory_part, 0),
        }

    # ------------------------------------------------------------------
    # Connections
    # ------------------------------------------------------------------

    def connect_socket(self) -> Connection:
        """A new dom0 tool connection (Unix socket): privileged, home dom0's."""
        conn = Connection(
            next(self._conn_ids), self.priv_domid, privileged=True, is_socket=True,
            home=domain_path(self.priv_domid),
        )
        self.connections[conn.conn_id] = conn
        return conn

    def _new_domain_conn(self, domid: int) -> Connection:
        priv = domid == self.priv_domid
        conn = Connection(
            next(self._conn_ids), domid, privileged=priv, is_socket=False,
            home=domain_path(domid),
        )
        if not priv:
            conn.event_bytes_max = self.quotas.memory
            conn.event_timeout = self.quotas.watch_event_timeout
        self.connections[conn.conn_id] = conn
        return conn

    def outstanding_limit(self, conn: Connection) -> int:
        """Replies a transport may leave queued before it stops reading."""
        return 1024 if conn.privileged else self.quotas.outstanding

    def disconnect(self, conn: Connection) -> None:
        """Forget a connection (its transport closed or broke).

        Its watches and transactions go away; a domain's record stays until
        RELEASE or :meth:`check_domains` finds the domain gone.
        """
        if conn.closed:
            return
        conn.closed = True
        self._drop_watches(conn)
        self._forget_transactions(conn)
        conn.clear()
        self._trim_history()
        self.connections.pop(conn.conn_id, None)
        dom = self.domains.get(conn.domid)
        if dom is not None and dom.conn is conn:
            dom.conn = None
        if conn.on_close is not None:
            conn.on_close()

    def mark_broken(self, conn: Connection, ring_error: int) -> None:
        """A transport saw a fatal protocol error: stop serving ``conn``.

        Args:
            conn: the offending connection.
            ring_error: ``XENSTORE_ERROR_*`` code (published on a ring page).
        """
        conn.broken = ring_error
        self._drop_watches(conn)
        self._forget_transactions(conn)
        conn.clear()
        self._trim_history()

    # ------------------------------------------------------------------
    # Domains
    # ------------------------------------------------------------------

    def _valid(self, domid: int, generation: int) -> bool:
        if domid == self.priv_domid:
            return True
        dom = self.domains.get(domid)
        return dom is not None and dom.generation <= generation

    def _domain_record(self, domid: int) -> Domain | None:
        """find_or_alloc_existing_domain: a record if the domain exists."""
        dom = self.domains.get(domid)
        if dom is None:
            state = self.domain_info.state(domid)
            if state is None or state is DomainState.DYING:
                return None
            dom = Domain(domid, generation=self.store.next_generation())
            self.domains[domid] = dom
        return dom

    def introduce(self, domid: int, mfn: int = 0, port: int = 0) -> Connection:
        """INTRODUCE a domain: create its connection and fire @introduceDomain.

        Args:
            domid: the domain (toolstack-controlled).
            mfn: its xenstore ring frame.
            port: the unbound event channel port in the guest.

        Returns:
            The domain's connection (an existing one if already introduced:
            only its port is updated).

        Raises:
            XsErr: ``EINVAL`` if the domain does not exist.
        """
        dom = self._domain_record(domid)
        if dom is None:
            raise XsErr("EINVAL")
        dom.mfn = mfn
        dom.port = port
        if dom.introduced and dom.conn is not None:
            return dom.conn
        conn = self._new_domain_conn(domid)
        dom.conn = conn
        dom.introduced = True
        dom.shutdown_reported = False
        self._fire([Event("@introduceDomain", False, ())])
        return conn

    def release(self, domid: int) -> None:
        """RELEASE / destruction: drop the domain, its nodes, fire @releaseDomain.

        Raises:
            XsErr: ``ENOENT`` unknown domain, ``EINVAL`` not introduced or dom0.
        """
        dom = self.domains.get(domid)
        if dom is None:
            raise XsErr("ENOENT")
        if not dom.introduced or domid == self.priv_domid:
            raise XsErr("EINVAL")
        self._destroy_domain(dom)
        self._fire([Event("@releaseDomain", False, ())])

    def _destroy_domain(self, dom: Domain) -> None:
        if dom.conn is not None:
            self.disconnect(dom.conn)
        # Nodes owned by the dead domain are deleted (4.17 default, no
        # --keep-orphans). Parents first, so each rm takes its subtree.
        root = Principal(self.priv_domid, True)
        owned = sorted(
            (p for p, n in self.store.nodes.items() if n.owner == dom.domid),
            key=lambda p: p.count("/"),
        )
        events: list[Event] = []
        for path in owned:
            if path != "/" and path in self.store.nodes:
                events += self.ops.rm(root, self.direct, path)
        self.store.owners.pop(dom.domid, None)
        del self.domains[dom.domid]
        self._remove_domid_from_special_perms(dom.domid)
        self.conflicts.forget(dom.domid)
        self._fire(events)

    def _remove_domid_from_special_perms(self, domid: int) -> None:
        """remove_domid_from_perm for ``@introduceDomain`` / ``@releaseDomain``.

        As in Xen 4.17 the dead domain's entries are deleted from the special
        nodes' lists (an owner entry becomes the privileged domain), so GET_PERMS
        no longer shows them and a new domain with the domid gets nothing.
        """
        for path, (perms, gen) in list(self.special_perms.items()):
            owner = perms[0]
            if owner.domid == domid:
                owner = Perm(self.priv_domid, owner.bits)
            rest = tuple(p for p in perms[1:] if p.domid != domid)
            self.special_perms[path] = ((owner, *rest), gen)

    def check_domains(self) -> None:
        """What VIRQ_DOM_EXC triggers: find shut-down and dead domains.

        A newly shut-down introduced domain, or any domain that is dying or
        gone, fires one ``@releaseDomain``; dead domains are destroyed.
        """
        notify = False
        for dom in list(self.domains.values()):
            if dom.domid == self.priv_domid:
                continue
            state = self.domain_info.state(dom.domid)
            if state is DomainState.RUNNING:
                continue
            if state is DomainState.SHUTDOWN:
                if dom.introduced and not dom.shutdown_reported:
                    dom.shutdown_reported = True
                    notify = True
                continue
            notify = notify or dom.introduced
            self._destroy_domain(dom)
        if notify:
            self._fire([Event("@releaseDomain", False, ())])

    # ------------------------------------------------------------------
    # Request dispatch
    # ------------------------------------------------------------------

    def handle(self, conn: Connection, msg: XsMessage) -> None:
        """Process one request; queue its reply (and any events).

        Args:
            conn: the connection it arrived on (transport-controlled).
            msg: the decoded request (peer-controlled; never trusted).
        """
        if conn.closed or conn.broken:
            return
        conn.requests += 1
        entry = self._table.get(msg.type)
        journal: list[str] | None = None
        if not conn.privileged:
            journal = self.direct.journal = []
        try:
            if entry is None:
                raise XsErr("ENOSYS")
            handler, flags = entry
            if flags & FLAG_PRIV and not conn.privileged:
                raise XsErr("EACCES")
            tx = None
            if msg.tx_id and not flags & FLAG_NOTID:
                tx = conn.transactions.get(msg.tx_id)
                if tx is None:
                    raise XsErr("ENOENT")
            try:
                payload = handler(conn, msg, tx)
            finally:
                self.direct.journal = None
            if journal and self._any_open_transaction():
                self.conflicts.record(conn.domid, journal, self.store.generation)
            if len(payload) > XENSTORE_PAYLOAD_MAX:
                raise XsErr("E2BIG")
            conn.queue_reply(encode_message(msg.type, msg.req_id, msg.tx_id, payload))
        except XsErr as exc:
            self._post.clear()
            conn.errors += 1
            conn.queue_reply(
                encode_message(XsType.ERROR, msg.req_id, msg.tx_id, error_payload(exc))
            )
        except Exception:
            # A bug of ours, not the client's: the daemon must keep serving
            # everyone else. Log it, count it, and fail this one request.
            self._post.clear()
            conn.errors += 1
            self.internal_errors += 1
            _log.exception("xenstored: internal error handling %r from %s", msg.type,
                           conn.principal)
            conn.queue_reply(
                encode_message(XsType.ERROR, msg.req_id, msg.tx_id, error_payload(XsErr("EIO")))
            )
        if self._post:
            post, self._post = self._post, []
            for fn in post:
                fn()

    # -- helpers -------------------------------------------------------

    def _path(self, conn: Connection, raw: bytes, special: bool = False) -> str:
        return canonicalize(
            decode_path(raw), conn.home, unprivileged=not conn.privileged,
            path_max=self.quotas.path_max, allow_special=special,
        )

    def _view(self, conn: Connection, tx: Transaction | None) -> View:
        return tx if tx is not None else self.direct

    def _changed(self, tx: Transaction | None, events: list[Event]) -> None:
        if tx is not None:
            tx.events.extend(events)
        else:
            self._fire(events)

    # -- read-only -----------------------------------------------------

    def _do_read(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        path = self._path(conn, _one_arg(msg.payload))
        return self.ops.read(conn.principal, self._view(conn, tx), path).value

    def _do_directory(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        path = self._path(conn, _one_arg(msg.payload))
        return self.ops.read(conn.principal, self._view(conn, tx), path).children_payload()

    def _do_directory_part(
        self, conn: Connection, msg: XsMessage, tx: Transaction | None
    ) -> bytes:
        args = _strings(msg.payload)
        if len(args) != 2:
            raise XsErr("EINVAL")
        path = self._path(conn, args[0])
        node = self.ops.read(conn.principal, self._view(conn, tx), path)
        off = int(args[1]) if args[1].isdigit() and len(args[1]) < 11 else 0
        gen = str(node.generation).encode() + b"\0"
        children = node.children_payload()
        if off >= len(children):
            return gen + b"\0"
        maxlen = XENSTORE_PAYLOAD_MAX - len(gen) - 1
        length = 0
        while True:
            nul = children.index(b"\0", off + length)
            name_len = nul - (off + length)
            if length + name_len >= maxlen:
                break
            length += name_len + 1
            if off + length == len(children):
                break
        data = gen + children[off:off + length]
        if off + length == len(children):
            data += b"\0"
        return data

    def _do_get_perms(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        path = self._path(conn, _one_arg(msg.payload), special=True)
        if path.startswith("@"):
            perms = self._special(conn, path, PERM_READ)
            return format_perms(perms)
        node = self.ops.read(conn.principal, self._view(conn, tx), path)
        return format_perms(self.ops.carry(node).perms)

    def _do_get_domain_path(
        self, conn: Connection, msg: XsMessage, tx: Transaction | None
    ) -> bytes:
        return domain_path(_domid(_one_arg(msg.payload))).encode() + b"\0"

    # -- modifications -------------------------------------------------

    def _do_write(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        nul = msg.payload.find(b"\0")
        if nul < 0:
            raise XsErr("EINVAL")
        path = self._path(conn, msg.payload[:nul])
        value = msg.payload[nul + 1:]
        self._changed(tx, self.ops.write(conn.principal, self._view(conn, tx), path, value))
        return OK

    def _do_mkdir(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        path = self._path(conn, _one_arg(msg.payload))
        self._changed(tx, self.ops.mkdir(conn.principal, self._view(conn, tx), path))
        return OK

    def _do_rm(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        path = self._path(conn, _one_arg(msg.payload))
        self._changed(tx, self.ops.rm(conn.principal, self._view(conn, tx), path))
        return OK

    def _do_set_perms(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        args = _strings(msg.payload)
        if len(args) < 2:
            raise XsErr("EINVAL")
        if not conn.privileged and len(args) - 1 > self.quotas.permissions:
            raise XsErr("ENOSPC")
        path = self._path(conn, args[0], special=True)
        perms = self._alloc_permrefs(parse_perms(args[1:]))
        if path.startswith("@"):
            old = self._special(conn, path, PERM_WRITE | PERM_OWNER)
            if not conn.privileged and perms[0].domid != old[0].domid:
                raise XsErr("EPERM")
            self.special_perms[path] = (perms, self.store.next_generation())
            return OK
        self._changed(tx, self.ops.set_perms(conn.principal, self._view(conn, tx), path, perms))
        return OK

    def _alloc_permrefs(self, perms: PermList) -> PermList:
        """domain_alloc_permrefs: make sure every named domain has a record.

        An entry (after the owner) naming a domain that does not exist is
        flagged ``XS_PERM_IGNORE`` at once, so that a domain created later
        with that domid gets nothing from it.
        """
        out = [perms[0]]
        self._domain_record(perms[0].domid)
        for p in perms[1:]:
            if p.domid != self.priv_domid and self._domain_record(p.domid) is None:
                p = p.as_ignored()
            out.append(p)
        return tuple(out)

    def _special(self, conn: Connection, path: str, want: int) -> PermList:
        entry = self.special_perms.get(path)
        if entry is None:
            raise XsErr("ENOENT")
        perms, gen = entry
        if perm_for_conn(conn.principal, perms, gen, self._valid, self.priv_domid) & want != want:
            raise XsErr("EACCES")
        return perms

    # -- transactions --------------------------------------------------

    def _do_transaction_start(
        self, conn: Connection, msg: XsMessage, tx: Transaction | None
    ) -> bytes:
        if tx is not None:
            raise XsErr("EBUSY")
        if not conn.privileged and len(conn.transactions) > self.quotas.transactions:
            raise XsErr("ENOSPC")
        tx_id = conn.next_tx_id
        while tx_id == 0 or tx_id in conn.transactions:
            tx_id = (tx_id + 1) & 0xFFFFFFFF
        conn.next_tx_id = (tx_id + 1) & 0xFFFFFFFF
        limit = None if conn.privileged else self.quotas.transaction_nodes
        tx = Transaction(self.store, tx_id, node_limit=limit)
        conn.transactions[tx_id] = tx
        self._open_tx_generations[tx.generation] += 1
        return str(tx_id).encode() + b"\0"

    def _do_transaction_end(
        self, conn: Connection, msg: XsMessage, tx: Transaction | None
    ) -> bytes:
        arg = _one_arg(msg.payload)
        if arg not in (b"T", b"F"):
            raise XsErr("EINVAL")
        if tx is None:
            raise XsErr("ENOENT")
        del conn.transactions[tx.tx_id]
        self._tx_closed(tx)
        try:
            if arg == b"T":
                self._commit(conn, tx)
        finally:
            self._trim_history()
        return OK

    def _commit(self, conn: Connection, tx: Transaction) -> None:
        exempt = frozenset({self.priv_domid})
        try:
            events = tx.commit(self.quotas.nodes, exempt)
        except XsErr as e:
            if e.name == "EAGAIN":
                victim = None if conn.privileged else conn.domid
                self.conflicts.blame(victim, tx.generation, tx.conflicts(), self.clock())
            raise
        if not conn.privileged and self._any_open_transaction():
            self.conflicts.record(conn.domid, tx.modified_paths(), self.store.generation)
        self._fire(events)

    # -- conflict credit -------------------------------------------------

    def _any_open_transaction(self) -> bool:
        return bool(self._open_tx_generations)

    def _tx_closed(self, tx: Transaction) -> None:
        gens = self._open_tx_generations
        gens[tx.generation] -= 1
        if gens[tx.generation] <= 0:
            del gens[tx.generation]

    def _forget_transactions(self, conn: Connection) -> None:
        for tx in conn.transactions.values():
            self._tx_closed(tx)
        conn.transactions.clear()

    def _trim_history(self) -> None:
        # O(open transactions), not O(connections): the start generations of
        # every open transaction are counted as they open and close.
        gens = self._open_tx_generations
        self.conflicts.trim(min(gens) if gens else None)

    def event_expiry_delay(self, conn: Connection) -> float | None:
        """Seconds until ``conn``'s oldest queued watch event expires (None: none will)."""
        deadline = conn.next_event_expiry()
        return None if deadline is None else max(0.0, deadline - self.clock())

    def expire_events(self, conn: Connection) -> int:
        """Drop ``conn``'s watch events that stayed unsent too long; return how many."""
        return conn.expire_events(self.clock())

    def input_delay(self, conn: Connection) -> float | None:
        """How long a transport must wait before handing ``conn``'s next request in.

        A domain whose writes made others' transactions fail too often has
        run out of conflict credit (:mod:`.conflict`); its requests are held,
        not refused. Privileged connections are never held.

        Returns:
            None to go ahead now; else seconds to wait before asking again.
        """
        if conn.privileged:
            return None
        return self.conflicts.delay(conn.domid, self.clock())

    # -- watches -------------------------------------------------------

    def _do_watch(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        args = _strings(msg.payload)
        if len(args) not in (2, 3):  # a third (depth) argument is ignored, as in 4.17
            raise XsErr("EINVAL")
        raw, token = args[0], args[1]
        relative = not raw.startswith((b"/", b"@"))
        path = self._path(conn, raw, special=True)
        key = (path, token)
        if key in conn.watches:
            raise XsErr("EEXIST")
        if not conn.privileged and len(conn.watches) > self.quotas.watches:
            raise XsErr("E2BIG")
        watch = Watch(path, token, relative, conn)
        conn.watches[key] = watch
        self.watch_index.setdefault(path, []).append(watch)
        # We fire once up front (after the OK).
        self._post.append(lambda: self._send_event(watch, path, self.clock()))
        return OK

    def _do_unwatch(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        args = _strings(msg.payload)
        if len(args) != 2:
            raise XsErr("EINVAL")
        path = self._path(conn, args[0], special=True)
        watch = conn.watches.pop((path, args[1]), None)
        if watch is None:
            raise XsErr("ENOENT")
        self._unindex(watch)
        return OK

    def _do_reset_watches(
        self, conn: Connection, msg: XsMessage, tx: Transaction | None
    ) -> bytes:
        self._drop_watches(conn)
        self._forget_transactions(conn)
        self._trim_history()
        return OK

    def _unindex(self, watch: Watch) -> None:
        lst = self.watch_index.get(watch.path)
        if lst is not None:
            lst.remove(watch)
            if not lst:
                del self.watch_index[watch.path]

    def _drop_watches(self, conn: Connection) -> None:
        for watch in conn.watches.values():
            self._unindex(watch)
        conn.watches.clear()

    def _send_event(self, watch: Watch, path: str, now: float) -> None:
        conn = watch.conn
        epath = relative_to(path, conn.home) if watch.relative else path
        payload = epath.encode() + b"\0" + watch.token + b"\0"
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            self.events_too_big += 1  # dropped, never sent (XSA-353 style)
            return
        if conn.queue_event(encode_message(XsType.WATCH_EVENT, 0, 0, payload), now):
            self.events_sent += 1

    def _permitted(self, conn: Connection, ev: Event) -> bool:
        if conn.privileged:
            return True
        who = conn.principal
        valid = self._valid
        if ev.path.startswith("@"):
            perms, gen = self.special_perms[ev.path]
            return bool(perm_for_conn(who, perms, gen, valid, self.priv_domid) & PERM_READ)
        for perms, gen in ev.perms:
            if perm_for_conn(who, perms, gen, valid, self.priv_domid) & PERM_READ:
                return True
        i = ev.path.rfind("/")
        parent = self.store.nodes.get(ev.path[:i] if i > 0 else "/")
        return parent is not None and bool(self.ops.perm(who, parent) & PERM_READ)

    def _fire(self, events: list[Event]) -> None:
        index = self.watch_index
        if not index or not events:
            return
        now = self.clock()
        sent: set[tuple[int, str, bytes]] = set()
        for ev in events:
            path = ev.path
            if ev.exact or path.startswith("@"):
                candidates = list(index.get(path, ()))
            else:
                candidates = []
                p = path
                while True:
                    found = index.get(p)
                    if found:
                        candidates.extend(found)
                    if p == "/":
                        break
                    i = p.rfind("/")
                    p = p[:i] if i > 0 else "/"
            for watch in candidates:
                conn = watch.conn
                key = (conn.conn_id, path, watch.token)
                if key in sent or not self._permitted(conn, ev):
                    continue
                sent.add(key)
                self._send_event(watch, path, now)

    # -- domains (wire) ------------------------------------------------

    def _do_introduce(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        args = _strings(msg.payload)
        if len(args) < 3:
            raise XsErr("EINVAL")
        domid, mfn, port = _domid(args[0]), _uint(args[1]), _uint(args[2])
        dom = self.domains.get(domid)
        fresh = dom is None or not dom.introduced
        new_conn = self.introduce(domid, mfn, port)
        if fresh and self.attach_ring is not None:
            self.attach_ring(new_conn, mfn, port)
        return OK

    def _do_release(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        self.release(_domid(_one_arg(msg.payload)))
        return OK

    def _connected_domain(self, raw: bytes) -> Domain:
        dom = self.domains.get(_domid(raw))
        if dom is None:
            raise XsErr("ENOENT")
        if not dom.introduced:
            raise XsErr("EINVAL")
        return dom

    def _do_resume(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        dom = self._connected_domain(_one_arg(msg.payload))
        dom.shutdown_reported = False
        return OK

    def _do_is_domain_introduced(
        self, conn: Connection, msg: XsMessage, tx: Transaction | None
    ) -> bytes:
        domid = _domid(_one_arg(msg.payload))
        dom = self.domains.get(domid)
        if domid == self.priv_domid:
            return b"T\0"
        return b"T\0" if dom is not None and dom.introduced else b"F\0"

    def _do_set_target(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        args = _strings(msg.payload)
        if len(args) != 2:
            raise XsErr("EINVAL")
        dom = self._connected_domain(args[0])
        target = _domid(args[1])
        if self._domain_record(target) is None:
            raise XsErr("ENOENT")
        if dom.conn is not None:
            dom.conn.target = target
            dom.conn.refresh_principal()
        return OK

    def _do_control(self, conn: Connection, msg: XsMessage, tx: Transaction | None) -> bytes:
        return run_control(self, _strings(msg.payload))

    # ------------------------------------------------------------------
    # Introspection (tests, CONTROL)
    # ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for leak checks and ``memreport``."""
        return {
            "nodes": len(self.store.nodes),
            "connections": len(self.connections),
            "watches": sum(len(v) for v in self.watch_index.values()),
            "transactions": sum(len(c.transactions) for c in self.connections.values()),
            "domains": len(self.domains),
            "events_sent": self.events_sent,
            "events_too_big": self.events_too_big,
            "internal_errors": self.internal_errors,
            "events_dropped": sum(c.events_dropped for c in self.connections.values()),
        }
