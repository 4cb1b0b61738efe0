"""The guest network helper's sans-IO codecs and protocol core (no device)."""

from __future__ import annotations

import struct

import trio
from hypothesis import given
from hypothesis import strategies as st

from domu.net.arp import ARP_REPLY, ARP_REQUEST, ArpCache, ArpPacket, decode_arp, encode_arp
from domu.net.ether import (
    BROADCAST,
    ETH_P_ARP,
    ETH_P_IP,
    decode_frame,
    encode_frame,
    format_mac,
    parse_mac,
)
from domu.net.icmp import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, decode_echo, encode_echo
from domu.net.ipv4 import (
    IPPROTO_ICMP,
    decode_ipv4,
    encode_ipv4,
    internet_checksum,
    ip_from_str,
    ip_to_str,
)
from domu.net.stack import NetStack, PingStats
from domu.netdev import NetDevice

macs = st.binary(min_size=6, max_size=6)
addrs = st.binary(min_size=4, max_size=4)


@given(macs, macs, st.integers(0, 0xFFFF), st.binary(max_size=2000))
def test_ethernet_round_trip(dst: bytes, src: bytes, et: int, payload: bytes) -> None:
    raw = encode_frame(dst, src, et, payload)
    assert len(raw) >= 60
    f = decode_frame(raw)
    assert f is not None and (f.dst, f.src, f.ethertype) == (dst, src, et)
    assert f.payload[:len(payload)] == payload and not any(f.payload[len(payload):])


@given(macs)
def test_mac_text_round_trip(mac: bytes) -> None:
    assert parse_mac(format_mac(mac)) == mac


@given(st.sampled_from([ARP_REQUEST, ARP_REPLY]), macs, addrs, macs, addrs,
       st.binary(max_size=18))
def test_arp_round_trip(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes,
                        pad: bytes) -> None:
    pkt = ArpPacket(op, sha, spa, tha, tpa)
    assert decode_arp(encode_arp(pkt) + pad) == pkt


@given(addrs, addrs, st.binary(max_size=1480), st.integers(1, 255), st.integers(0, 0xFFFF),
       st.binary(max_size=20))
def test_ipv4_round_trip(src: bytes, dst: bytes, payload: bytes, ttl: int, ident: int,
                         pad: bytes) -> None:
    raw = encode_ipv4(IPPROTO_ICMP, src, dst, payload, ttl=ttl, ident=ident)
    assert internet_checksum(raw[:20]) == 0
    p = decode_ipv4(raw + pad)  # Ethernet padding is cut off by total_length
    assert p is not None
    assert (p.src, p.dst, p.proto, p.ttl, p.ident, p.payload) == (
        src, dst, IPPROTO_ICMP, ttl, ident, payload)


@given(addrs)
def test_ip_text_round_trip(a: bytes) -> None:
    assert ip_from_str(ip_to_str(a)) == a


@given(st.sampled_from([ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY]), st.integers(0, 0xFFFF),
       st.integers(0, 0xFFFF), st.binary(max_size=1000))
def test_icmp_echo_round_trip(t: int, ident: int, seq: int, data: bytes) -> None:
    raw = encode_echo(t, ident, seq, data)
    assert internet_checksum(raw) == 0
    e = decode_echo(raw)
    assert e is not None and (e.type, e.ident, e.seq, e.data) == (t, ident, seq, data)


@given(st.binary(max_size=100))
def test_decoders_never_raise(raw: bytes) -> None:
    decode_frame(raw)
    decode_arp(raw)
    decode_ipv4(raw)
    decode_echo(raw)


def test_checksum_worked_example() -> None:
    # RFC 1071 section 3 example words: 0x0001 0xf203 0xf4f5 0xf6f7 -> sum 0xddf2
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2 & 0xFFFF)
    assert internet_checksum(b"\x01") == (~0x0100 & 0xFFFF)  # odd length pads a zero


def test_corrupted_checksums_and_bad_headers_are_rejected() -> None:
    raw = bytearray(encode_ipv4(IPPROTO_ICMP, b"\x0a\0\0\1", b"\x0a\0\0\2", b"x"))
    raw[8] ^= 1  # ttl changed, checksum not
    assert decode_ipv4(bytes(raw)) is None
    assert decode_ipv4(b"\x65" + bytes(19)) is None  # version 6
    short = encode_ipv4(IPPROTO_ICMP, b"\0" * 4, b"\0" * 4, b"abcd")
    assert decode_ipv4(short[:-1]) is None  # total_length beyond the data
    echo = bytearray(encode_echo(ICMP_ECHO_REQUEST, 1, 1, b"data"))
    echo[-1] ^= 0xFF
    assert decode_echo(bytes(echo)) is None
    assert decode_echo(encode_echo(3, 0, 0, b"")) is None  # not an echo
    assert decode_arp(struct.pack("!HHBBH", 6, 0x800, 6, 4, 1) + bytes(20)) is None


def test_arp_cache_is_bounded_and_expires() -> None:
    cache = ArpCache(max_entries=3, ttl=10)
    for i in range(5):
        cache.update(bytes([10, 0, 0, i]), bytes([2, 0, 0, 0, 0, i]), now=float(i))
    assert len(cache) == 3
    assert cache.lookup(bytes([10, 0, 0, 0]), now=5) is None  # evicted (oldest)
    assert cache.lookup(bytes([10, 0, 0, 4]), now=5) == bytes([2, 0, 0, 0, 0, 4])
    assert cache.lookup(bytes([10, 0, 0, 4]), now=14) is None  # expired
    assert len(cache) == 2


# -- the protocol core, without a device -------------------------------------------------------

MY_MAC = bytes.fromhex("00163e000001")
PEER_MAC = bytes.fromhex("00163e000002")
MY_IP = bytes([10, 0, 0, 1])
PEER_IP = bytes([10, 0, 0, 2])


def stack() -> NetStack:
    async def xmit(_: bytes) -> None:
        raise AssertionError("the sans-IO core does not send")

    nic = NetDevice("eth0", xmit)
    nic.mac = MY_MAC
    return NetStack(nic, "10.0.0.1", arp_cache_size=4, clock=lambda: 0.0)


def test_answers_arp_for_own_ip_only() -> None:
    s = stack()
    req = ArpPacket(ARP_REQUEST, PEER_MAC, PEER_IP, bytes(6), MY_IP)
    (out,) = s.handle_frame(encode_frame(BROADCAST, PEER_MAC, ETH_P_ARP, encode_arp(req)))
    f = decode_frame(out)
    assert f is not None and f.dst == PEER_MAC and f.ethertype == ETH_P_ARP
    assert decode_arp(f.payload) == ArpPacket(ARP_REPLY, MY_MAC, MY_IP, PEER_MAC, PEER_IP)
    assert s.arp.lookup(PEER_IP, 0.0) == PEER_MAC
    other = ArpPacket(ARP_REQUEST, PEER_MAC, PEER_IP, bytes(6), bytes([10, 0, 0, 3]))
    assert s.handle_frame(encode_frame(BROADCAST, PEER_MAC, ETH_P_ARP,
                                       encode_arp(other))) == []


def test_strangers_do_not_fill_the_arp_cache() -> None:
    s = stack()
    for i in range(50):
        spa = bytes([10, 1, 0, i])
        pkt = ArpPacket(ARP_REQUEST, bytes([2, 0, 0, 0, 0, i]), spa, bytes(6), bytes([10, 9, 9, 9]))
        s.handle_frame(encode_frame(BROADCAST, PEER_MAC, ETH_P_ARP, encode_arp(pkt)))
    assert len(s.arp) == 0


def test_answers_echo_request() -> None:
    s = stack()
    body = encode_echo(ICMP_ECHO_REQUEST, 7, 3, b"payload")
    raw = encode_frame(MY_MAC, PEER_MAC, ETH_P_IP, encode_ipv4(IPPROTO_ICMP, PEER_IP, MY_IP, body))
    (out,) = s.handle_frame(raw)
    f = decode_frame(out)
    assert f is not None and f.dst == PEER_MAC
    ipp = decode_ipv4(f.payload)
    assert ipp is not None and (ipp.src, ipp.dst) == (MY_IP, PEER_IP)
    e = decode_echo(ipp.payload)
    assert e is not None and (e.type, e.ident, e.seq, e.data) == (ICMP_ECHO_REPLY, 7, 3, b"payload")
    # not for us: ignored
    raw2 = encode_frame(MY_MAC, PEER_MAC, ETH_P_IP,
                        encode_ipv4(IPPROTO_ICMP, PEER_IP, bytes([10, 0, 0, 9]), body))
    assert s.handle_frame(raw2) == [] and s.stats["ignored"] == 1


def test_unsolicited_echo_reply_is_ignored() -> None:
    s = stack()
    body = encode_echo(ICMP_ECHO_REPLY, 7, 3, b"x")
    raw = encode_frame(MY_MAC, PEER_MAC, ETH_P_IP, encode_ipv4(IPPROTO_ICMP, PEER_IP, MY_IP, body))
    assert s.handle_frame(raw) == [] and s.stats["ignored"] == 1


def test_ping_stats_summary() -> None:
    stats = PingStats("10.0.0.2", transmitted=4)
    assert stats.summary() == "4 packets transmitted, 0 received, 100% packet loss"
    assert trio  # the module is used by the async tests in test_ping.py
