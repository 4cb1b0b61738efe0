"""Hypothesis stateful test of the hypervisor core: ports, grants, domains, teardown.

A random sequence of guest and toolstack operations (create, alloc_unbound,
bind_interdomain, send, close, mask/unmask, grant, map, unmap,
end_foreign_access, copy, vCPU up/down, destroy) runs against one :class:`Hypervisor`
while a small model remembers which grants were made and which mappings are
live. After every step:

* every port is in exactly one state and ``status`` agrees with the table;
* interdomain links are symmetric;
* each domain's online vCPUs are those the model expects (``getdomaininfo``
  counts them; downing the last one powers the domain off instead);
* pin counts equal the live mappings of each grant, and the GTF bits in the
  granter's entry match them;
* :meth:`Hypervisor.check_invariants` passes;

and tearing everything down returns :meth:`Hypervisor.resource_counts` to
the boot baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from domu.gnttab import GrantTableClient
from hypervisor.domain import DomainConfig
from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import ECS_FREE, ECS_INTERDOMAIN, ECS_UNBOUND, MASK_WORD
from hypervisor.grant_table import (
    GntCopy,
    GNTCOPY_source_gref,
    GntCopyPtr,
    GNTST_bad_domain,
    GNTST_bad_gntref,
    GNTST_bad_handle,
    GNTST_general_error,
    GNTST_okay,
    GTF_reading,
    GTF_writing,
)
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor
from hypervisor.sched import RunState

MAX_PORT = 12  # small, so ENOSPC happens
NR_PAGES = 4


@dataclass(frozen=True)
class Grant:
    granter: int
    ref: int
    grantee: int
    gfn: int
    readonly: bool


@dataclass(frozen=True)
class Mapping:
    mapper: int
    handle: int
    grant: Grant
    readonly: bool


class HypervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.hv = Hypervisor(memory_bytes=16 << 20, dom0_pages=8)
        self.dom0 = self.hv.interface(0)
        self.baseline = self.hv.resource_counts()
        self.hcs: dict[int, HypercallInterface] = {0: self.dom0}
        self.clients: dict[int, GrantTableClient] = {}
        self.grants: list[Grant] = []
        self.maps: list[Mapping] = []
        self.online: dict[int, set[int]] = {0: {0}}

    # -- helpers -----------------------------------------------------------------------------

    def alive(self) -> list[int]:
        return [d for d in self.hcs if self.hv.domains.get(d) is not None
                and not self.hv.domains.get(d).dying]  # type: ignore[union-attr]

    def guests(self) -> list[int]:
        return [d for d in self.alive() if d != 0]

    def any_port(self, data: st.DataObject, d: int) -> int:
        """Mostly a port in use in ``d``; sometimes any number at all."""
        used = sorted(self.hv.domains.get(d).evtchn.chans)  # type: ignore[union-attr]
        junk = st.one_of(st.integers(0, MAX_PORT + 1), st.sampled_from([-1, 2**32]))
        return data.draw(st.one_of(st.sampled_from(used), junk) if used else junk)

    # -- domains -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.guests()) < 4)
    @rule(vcpus=st.integers(1, 2))
    def create_domain(self, vcpus: int) -> None:
        domid = self.dom0.domctl_createdomain(DomainConfig(
            nr_pages=NR_PAGES, max_pages=NR_PAGES, max_vcpus=vcpus, max_evtchn_port=MAX_PORT,
            max_maptrack_frames=1))
        self.dom0.domctl_unpausedomain(domid)
        hc = self.hv.interface(domid)
        self.hcs[domid] = hc
        self.clients[domid] = GrantTableClient(hc)
        self.online[domid] = set(range(vcpus))

    @precondition(lambda self: self.guests())
    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self.guests()))
        self.dom0.domctl_destroydomain(d)
        # its own mappings are gone; mappings of its pages by others stay (zombie)
        self.maps = [m for m in self.maps if m.mapper != d]
        self.clients.pop(d, None)
        self.grants = [g for g in self.grants if g.granter != d]

    # -- vCPU hot-plug ------------------------------------------------------------------------

    @precondition(lambda self: self.guests())
    @rule(data=st.data(), up=st.booleans(), vcpu=st.one_of(st.integers(0, 2), st.just(-1)))
    def vcpu_up_down(self, data: st.DataObject, up: bool, vcpu: int) -> None:
        d = data.draw(st.sampled_from(self.guests()))
        hc = self.hcs[d]
        dom = self.hv.domains.get(d)
        assert dom is not None
        if not 0 <= vcpu < len(dom.vcpus):
            try:
                (hc.vcpu_up if up else hc.vcpu_down)(vcpu)
            except XenError as e:
                assert e.errno == Errno.ENOENT
            else:
                raise AssertionError("a vCPU the domain lacks was accepted")
            return
        online = self.online[d]
        if up:
            hc.vcpu_up(vcpu)
            online.add(vcpu)
        else:
            was_shut = dom.is_shut_down
            hc.vcpu_down(vcpu)
            if online - {vcpu}:
                online.discard(vcpu)
            else:  # the last one: powered off instead, the vCPU stays up
                assert dom.is_shut_down and (was_shut or dom.shutdown_code == 0)
        assert hc.vcpu_is_up(vcpu) == (vcpu in online)

    # -- event channels -----------------------------------------------------------------------

    @precondition(lambda self: self.alive())
    @rule(data=st.data())
    def alloc_unbound(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self.alive()))
        remote = data.draw(st.sampled_from(self.alive()))
        try:
            port = self.hcs[d].evtchn_alloc_unbound(remote)
        except XenError as e:
            assert e.errno == Errno.ENOSPC
            assert self.hv.domains.get(d).evtchn.in_use() == MAX_PORT or d == 0  # type: ignore[union-attr]
            return
        assert port > 0 and self.hcs[d].evtchn_status(port).status == ECS_UNBOUND

    @rule(data=st.data())
    def bind_interdomain(self, data: st.DataObject) -> None:
        unbound = [(d.domid, p, c.remote_dom) for d in self.hv.domains if not d.dying
                   for p, c in d.evtchn.chans.items() if c.state == ECS_UNBOUND
                   and c.remote_dom in self.alive()]
        if not unbound:
            return
        rdom, rport, binder = data.draw(st.sampled_from(unbound))
        try:
            lport = self.hcs[binder].evtchn_bind_interdomain(rdom, rport)
        except XenError as e:
            assert e.errno in (Errno.ENOSPC, Errno.EINVAL)  # EINVAL: loopback onto itself
            return
        st_ = self.hcs[binder].evtchn_status(lport)
        assert (st_.status, st_.remote_dom, st_.remote_port) == (ECS_INTERDOMAIN, rdom, rport)
        assert self.hv.domains.get(binder).evtchn.is_pending(lport)  # type: ignore[union-attr]

    @precondition(lambda self: self.alive())
    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self.alive()))
        port = self.any_port(data, d)
        chan = self.hv.domains.get(d).evtchn.get(port)  # type: ignore[union-attr]
        try:
            self.hcs[d].evtchn_send(port)
        except XenError as e:
            assert e.errno == Errno.EINVAL
            assert chan is None or chan.state not in (ECS_UNBOUND, ECS_INTERDOMAIN)
            return
        assert chan is not None
        if chan.state == ECS_INTERDOMAIN:
            assert chan.peer is not None and chan.peer.evtchn.is_pending(chan.peer_port)

    @precondition(lambda self: self.alive())
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self.alive()))
        port = self.any_port(data, d)
        dom = self.hv.domains.get(d)
        chan = dom.evtchn.get(port)  # type: ignore[union-attr]
        peer = (chan.peer, chan.peer_port) if chan is not None and chan.peer else None
        try:
            self.hcs[d].evtchn_close(port)
        except XenError as e:
            assert e.errno == Errno.EINVAL and chan is None
            return
        assert self.hcs[d].evtchn_status(port).status == ECS_FREE
        if peer is not None:
            pchan = peer[0].evtchn.get(peer[1])
            assert pchan is not None and pchan.state == ECS_UNBOUND and pchan.remote_dom == d

    @precondition(lambda self: self.alive())
    @rule(data=st.data(), masked=st.booleans())
    def mask_unmask(self, data: st.DataObject, masked: bool) -> None:
        d = data.draw(st.sampled_from(self.alive()))
        port = data.draw(st.integers(1, MAX_PORT))
        words = self.hcs[d].shared_info.cast("Q")  # the guest's own view
        if masked:
            words[MASK_WORD + port // 64] |= 1 << (port % 64)
        else:
            self.hcs[d].evtchn_unmask(port)
            assert not words[MASK_WORD + port // 64] >> (port % 64) & 1

    # -- grants ------------------------------------------------------------------------------

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), gfn=st.integers(0, NR_PAGES - 1), readonly=st.booleans())
    def grant(self, data: st.DataObject, gfn: int, readonly: bool) -> None:
        g = data.draw(st.sampled_from(sorted(self.clients)))
        grantee = data.draw(st.sampled_from(self.alive()))
        ref = self.clients[g].grant_access(grantee, gfn, readonly)
        self.grants.append(Grant(g, ref, grantee, gfn, readonly))

    @precondition(lambda self: self.grants)
    @rule(data=st.data(), readonly=st.booleans())
    def map(self, data: st.DataObject, readonly: bool) -> None:
        gr = data.draw(st.sampled_from(self.grants))
        alive = self.alive()
        likely = [gr.grantee] * 3 if gr.grantee in alive else []
        mapper = data.draw(st.sampled_from(likely + alive))
        res = self.hcs[mapper].grant_map_one(gr.granter, gr.ref, readonly)
        granter_ok = gr.granter in self.alive()
        allowed = mapper == gr.grantee and (readonly or not gr.readonly)
        if res.status == GNTST_okay:
            assert granter_ok and allowed
            self.maps.append(Mapping(mapper, res.handle, gr, readonly))
        elif not granter_ok:
            assert res.status == GNTST_bad_domain
        else:
            mt = self.hv.domains.get(mapper).maptrack  # type: ignore[union-attr]
            assert res.status == GNTST_general_error or mt.in_use == mt.limit

    @precondition(lambda self: self.maps)
    @rule(data=st.data())
    def unmap(self, data: st.DataObject) -> None:
        m = data.draw(st.sampled_from(self.maps))
        assert self.hcs[m.mapper].grant_unmap_one(m.handle) == GNTST_okay
        self.maps.remove(m)
        assert self.hcs[m.mapper].grant_unmap_one(m.handle) == GNTST_bad_handle

    @precondition(lambda self: self.grants)
    @rule(data=st.data())
    def end_foreign_access(self, data: st.DataObject) -> None:
        gr = data.draw(st.sampled_from(self.grants))
        mapped = any(m.grant == gr for m in self.maps)
        ended = self.clients[gr.granter].end_foreign_access(gr.ref)
        assert ended == (not mapped)
        if ended:
            self.grants.remove(gr)

    @precondition(lambda self: self.grants)
    @rule(data=st.data(), offset=st.integers(0, 4096), length=st.integers(0, 64))
    def copy(self, data: st.DataObject, offset: int, length: int) -> None:
        gr = data.draw(st.sampled_from(self.grants))
        alive = self.alive()
        copier = data.draw(st.sampled_from(([gr.grantee] if gr.grantee in alive else [])
                                           + alive))
        pins = self.hv.resource_counts()["grant_pins"]
        op = GntCopy(GntCopyPtr(gr.ref, gr.granter, offset), GntCopyPtr(0, offset=0), length,
                     GNTCOPY_source_gref)
        (status,) = self.hcs[copier].grant_copy([op])
        assert status <= 0
        if status == GNTST_okay:
            assert copier == gr.grantee and gr.granter in self.alive()
        assert self.hv.resource_counts()["grant_pins"] == pins  # copies leave no pins

    @rule(data=st.data())
    def hostile_map(self, data: st.DataObject) -> None:
        mapper = data.draw(st.sampled_from(self.alive()))
        ref = data.draw(st.sampled_from([-1, 0, 7, 511, 512, 2**32]))
        dom = data.draw(st.sampled_from([*self.hcs, 999]))
        res = self.hcs[mapper].grant_map_one(dom, ref)
        assert res.status in (GNTST_general_error, GNTST_bad_gntref, GNTST_bad_domain,
                              GNTST_okay, -9, -13)
        if res.status == GNTST_okay:  # only possible if dom granted mapper that ref
            assert self.hcs[mapper].grant_unmap_one(res.handle) == GNTST_okay

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def ports_consistent(self) -> None:
        for d in self.hv.domains:
            t = d.evtchn
            for port in range(0, t.max_port + 1):
                chan = t.get(port)
                status = self.hv.evtchn.status(d, d.domid, port).status
                assert status == (chan.state if chan is not None else ECS_FREE)
            assert t.get(0) is None

    @invariant()
    def pins_match_live_mappings(self) -> None:
        want: dict[tuple[int, int], list[int]] = {}
        for m in self.maps:
            key = (m.grant.granter, m.grant.ref)
            want.setdefault(key, [0, 0])[0 if m.readonly else 1] += 1
        for d in self.hv.domains:
            gt = d.grant_table
            for ref, act in gt.active.items():
                assert [act.pin_r, act.pin_w] == want.pop((d.domid, ref), [0, 0])
                flags = gt.read_entry(ref)[0]
                assert flags & GTF_reading
                assert bool(flags & GTF_writing) == bool(act.pin_w)
        assert not want
        for gr in self.grants:
            if gr.granter in self.clients and not any(m.grant == gr for m in self.maps):
                flags = self.clients[gr.granter].read_entry(gr.ref)[0]
                assert not flags & (GTF_reading | GTF_writing)

    @invariant()
    def online_vcpus_match_the_model(self) -> None:
        for d in self.alive():
            info = self.dom0.domctl_getdomaininfo(d)
            assert info.nr_online_vcpus == len(self.online[d])
            vs = self.dom0.sysctl_vcpu_list(d)
            assert {v.vcpu_id for v in vs if v.runstate != RunState.OFFLINE} <= self.online[d]

    @invariant()
    def hypervisor_invariants(self) -> None:
        self.hv.check_invariants()

    def teardown(self) -> None:
        for m in list(self.maps):
            if m.mapper == 0:
                assert self.dom0.grant_unmap_one(m.handle) == GNTST_okay
        for d in self.guests():
            self.dom0.domctl_destroydomain(d)
        self.dom0.evtchn_reset()
        self.hv.check_invariants()
        assert self.hv.resource_counts() == self.baseline


HypervisorMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=40,
                                               deadline=None)
TestHypervisorStateful = HypervisorMachine.TestCase
