"""Every verb end to end: real ``xensim`` subprocesses against one ``xensim host``."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dom0.toolstack.control import FRAME_HEADER, FrameDecoder, decode_body, encode_frame
from dom0.toolstack.formats import LIST_HEADER, SCHED_CREDIT_HEADER, VCPU_LIST_HEADER
from ring.xs_wire import HEADER, XsType, encode_message
from tests.cli.conftest import CLI, REPO, Daemon, start_daemon

ROW = re.compile(r"^(?P<name>\S.{39}) (?P<id>[ \d]{5}) (?P<mem>[ \d]{5}) (?P<vcpus>[ \d]{5})"
                 r"     (?P<state>[-rbpscwSd]{6})  (?P<time>[ \d.]{8})$")

TICKER = 'name = "{name}"\nkernel = "examples.ticker:main"\nmemory = 8\n'


def rows(out: str) -> dict[str, dict[str, str]]:
    lines = out.rstrip("\n").split("\n")
    assert lines[0] == LIST_HEADER
    parsed = {}
    for line in lines[1:]:
        m = ROW.match(line)
        assert m, f"not an xl list row: {line!r}"
        parsed[m["name"].rstrip()] = m.groupdict()
    return parsed


def create(daemon: Daemon, name: str, text: str = TICKER) -> None:
    r = daemon.xensim("create", str(daemon.cfg(name, text.format(name=name))))
    assert r.returncode == 0, r.stderr


# -- errors a script relies on ------------------------------------------------------------------


def test_host_not_running_is_a_clear_error(short_dir: Path) -> None:
    env = {**os.environ, "XENSIM_CONTROL": str(short_dir / "nothing")}
    r = subprocess.run([*CLI, "list"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "no xensim host is running" in r.stderr and "xensim host" in r.stderr


def test_missing_config(daemon: Daemon) -> None:
    r = daemon.xensim("create", "/nonexistent/guest.cfg")
    assert r.returncode == 1
    assert "/nonexistent/guest.cfg: unable to open configuration file" in r.stderr


def test_bad_config_line_names_file_and_line(daemon: Daemon) -> None:
    path = daemon.cfg("bad", 'name = "bad"\nkernel = "examples.hello:main"\nmemory = "lots"\n')
    r = daemon.xensim("create", str(path))
    assert r.returncode == 1
    assert f"{path}:3:" in r.stderr and "memory" in r.stderr


def test_unknown_domain(daemon: Daemon) -> None:
    for verb in (["destroy", "nosuch"], ["list", "nosuch"], ["pause", "nosuch"],
                 ["console", "nosuch"], ["sched-credit", "-d", "nosuch"]):
        r = daemon.xensim(*verb)
        assert r.returncode == 1, verb
        assert r.stderr.strip() == "xensim: domain 'nosuch' does not exist", verb


def test_usage_errors_exit_2(daemon: Daemon) -> None:
    assert daemon.xensim("create").returncode == 2
    assert daemon.xensim("shutdown").returncode == 2
    assert daemon.xensim("sched-credit", "-w", "5").returncode == 2
    assert daemon.xensim("mem-set", "x", "lots").returncode == 2
    assert daemon.xensim("list", "--bogus").returncode == 2


def test_every_verb_has_help() -> None:
    from dom0.toolstack import verbs  # noqa: F401
    from dom0.toolstack.cli import VERBS

    assert {"host", "create", "list", "destroy", "shutdown", "reboot", "pause", "unpause",
            "console", "mem-set", "info", "block-attach", "block-detach", "network-attach",
            "network-detach", "sched-credit", "vcpu-list", "vcpu-pin", "vcpu-set", "top", "run",
            "demo", "xenstored", "channel-list", "block-list", "network-list"} <= set(VERBS)
    r = subprocess.run([*CLI, "list", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "exit status" in r.stdout


# -- lifecycle ----------------------------------------------------------------------------------


def test_create_list_destroy(daemon: Daemon) -> None:
    create(daemon, "lc1")
    r = daemon.xensim("list")
    assert r.returncode == 0
    table = rows(r.stdout)
    assert next(iter(table)) == "Domain-0" and table["Domain-0"]["id"].strip() == "0"
    assert table["lc1"]["mem"].strip() == "8" and table["lc1"]["vcpus"].strip() == "1"
    only = rows(daemon.xensim("list", "lc1").stdout)
    assert list(only) == ["lc1"]
    assert daemon.xensim("destroy", "lc1").returncode == 0
    assert "lc1" not in rows(daemon.xensim("list").stdout)


def test_create_extra_settings_override_the_file(daemon: Daemon) -> None:
    path = daemon.cfg("ex1", TICKER.format(name="ex1"))
    r = daemon.xensim("create", str(path), "memory=12", 'name="ex2"')
    assert r.returncode == 0, r.stderr
    assert rows(daemon.xensim("list", "ex2").stdout)["ex2"]["mem"].strip() == "12"
    assert daemon.xensim("destroy", "ex2").returncode == 0


def test_pause_unpause(daemon: Daemon) -> None:
    create(daemon, "pz1")
    assert daemon.xensim("pause", "pz1").returncode == 0
    assert rows(daemon.xensim("list", "pz1").stdout)["pz1"]["state"][2] == "p"
    assert daemon.xensim("unpause", "pz1").returncode == 0
    assert rows(daemon.xensim("list", "pz1").stdout)["pz1"]["state"][2] == "-"
    r = daemon.xensim("unpause", "pz1")  # below zero: Xen says EINVAL
    assert r.returncode == 1 and "EINVAL" in r.stderr
    daemon.xensim("destroy", "pz1")


def test_shutdown_wait_and_all(daemon: Daemon) -> None:
    create(daemon, "sd1")
    assert daemon.xensim("shutdown", "-w", "sd1").returncode == 0
    assert "sd1" not in rows(daemon.xensim("list").stdout)
    create(daemon, "sd2")
    create(daemon, "sd3")
    assert daemon.xensim("shutdown", "-a", "-w").returncode == 0
    assert list(rows(daemon.xensim("list").stdout)) == ["Domain-0"]


def test_reboot_gives_a_new_domid(daemon: Daemon) -> None:
    create(daemon, "rb1")
    before = rows(daemon.xensim("list", "rb1").stdout)["rb1"]["id"]
    r = daemon.xensim("reboot", "-w", "rb1")
    assert r.returncode == 0, r.stderr
    after = rows(daemon.xensim("list", "rb1").stdout)["rb1"]["id"]
    assert int(after) > int(before)
    daemon.xensim("destroy", "rb1")


def test_dom0_cannot_be_destroyed(daemon: Daemon) -> None:
    r = daemon.xensim("destroy", "Domain-0")
    assert r.returncode == 1 and "Domain-0" in r.stderr


# -- console ------------------------------------------------------------------------------------


def _read_until(stream: object, needle: bytes, timeout: float = 15) -> bytes:
    fd = stream.fileno()  # type: ignore[attr-defined]
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"EOF before {needle!r}; got {seen!r}"
            seen += chunk
    return seen


def wait_for_console(daemon: Daemon, name: str, line: bytes) -> None:
    """Attach to ``name``'s console until it has printed ``line``, then detach
    (how the CLI tests wait for a guest to reach a point of its program)."""
    p = subprocess.Popen([*CLI, "console", name], cwd=REPO, env=daemon.env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None
    try:
        _read_until(p.stdout, line)
        p.stdin.write(b"\x1d")  # Ctrl-] detaches
        p.stdin.flush()
        assert p.wait(timeout=15) == 0
    finally:
        p.kill()
        p.wait()


def test_console_attach_send_detach_through_pipes(daemon: Daemon) -> None:
    create(daemon, "ec1", 'name = "{name}"\nkernel = "examples.echo:main"\nmemory = 8\n')
    p = subprocess.Popen([*CLI, "console", "ec1"], cwd=REPO, env=daemon.env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None
    try:
        _read_until(p.stdout, b"ec1: ready")  # replayed history
        p.stdin.write(b"hello there\n")
        p.stdin.flush()
        _read_until(p.stdout, b"echo: hello there")
        p.stdin.write(b"\x1d")  # Ctrl-] detaches
        p.stdin.flush()
        assert p.wait(timeout=15) == 0
    finally:
        p.kill()
        p.wait()
    # detaching left the guest running; a second session sees the history
    r = daemon.xensim("console", "ec1", input=b"quit\n")
    assert r.returncode == 0  # ends when the guest powers off and is destroyed
    assert "echo: hello there" in r.stdout and "bye" in r.stdout
    assert "ec1" not in rows(daemon.xensim("list").stdout)


def test_create_c_attaches_the_console(daemon: Daemon) -> None:
    path = daemon.cfg("hc1", 'name = "hc1"\nkernel = "examples.hello:main"\nmemory = 8\n')
    r = daemon.xensim("create", "-c", str(path), input=b"")
    assert r.returncode == 0, r.stderr
    assert "Hello from hc1" in r.stdout


# -- scheduler ----------------------------------------------------------------------------------


def test_sched_credit_set_and_get(daemon: Daemon) -> None:
    create(daemon, "sc1", TICKER + "cpu_weight = 300\n")
    r = daemon.xensim("sched-credit", "-d", "sc1")
    lines = r.stdout.rstrip("\n").split("\n")
    assert lines[0] == SCHED_CREDIT_HEADER
    assert re.fullmatch(r"sc1 {31}\s*\d+    300    0", lines[1]), lines[1]
    assert daemon.xensim("sched-credit", "-d", "sc1", "-w", "512", "-c", "50").returncode == 0
    line = daemon.xensim("sched-credit", "-d", "sc1").stdout.split("\n")[1]
    assert line.endswith("   512   50") and line.startswith("sc1" + " " * 30)
    full = daemon.xensim("sched-credit").stdout.split("\n")
    assert full[0] == "Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us"
    assert full[1] == SCHED_CREDIT_HEADER and full[2].startswith("Domain-0")
    r = daemon.xensim("sched-credit", "-d", "sc1", "-w", "0")
    assert r.returncode == 1 and "EINVAL" in r.stderr
    daemon.xensim("destroy", "sc1")


def test_vcpu_list_format(daemon: Daemon) -> None:
    create(daemon, "vl1", TICKER + 'vcpus = 2\ncpus = "1"\n')
    out = daemon.xensim("vcpu-list", "vl1").stdout.rstrip("\n").split("\n")
    assert out[0] == VCPU_LIST_HEADER
    assert len(out) == 3
    for i, line in enumerate(out[1:]):
        assert re.fullmatch(rf"vl1 {{29}} +\d+ +{i} +1 +[-r][-b]- +\d+\.\d  1 / all", line), line
    daemon.xensim("destroy", "vl1")


def test_cpu_time_shows_in_list(daemon: Daemon) -> None:
    path = daemon.cfg("cr1", 'name = "cr1"\nkernel = "examples.cruncher:main"\nmemory = 8\n'
                      'extra = "0.3"\non_poweroff = "preserve"\n')
    assert daemon.xensim("create", str(path)).returncode == 0
    deadline = time.monotonic() + 15
    while True:
        row = rows(daemon.xensim("list", "cr1").stdout)["cr1"]
        if row["state"][3] == "s" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert row["state"] == "---s--"  # shut down, reason poweroff, preserved
    assert float(row["time"]) == pytest.approx(0.3, abs=0.05)
    daemon.xensim("destroy", "cr1")


# -- info, memory, top --------------------------------------------------------------------------


def test_info(daemon: Daemon) -> None:
    r = daemon.xensim("info")
    assert r.returncode == 0
    fields = dict(line.split(" : ", 1) for line in r.stdout.rstrip("\n").split("\n"))
    keys = [k.rstrip() for k in fields]
    assert keys[:5] == ["host", "release", "version", "machine", "nr_cpus"]
    assert all(len(k) == 22 for k in fields)  # 23 columns including the space
    clean = {k.rstrip(): v for k, v in fields.items()}
    assert clean["nr_cpus"] == "2" and clean["xen_major"] == "4" and clean["xen_minor"] == "17"
    assert clean["xen_scheduler"] == "credit" and int(clean["total_memory"]) == 4096
    assert keys[-1] == "xend_config_format"


def test_mem_set(daemon: Daemon) -> None:
    create(daemon, "ms1", TICKER + "maxmem = 16\n")
    assert rows(daemon.xensim("list", "ms1").stdout)["ms1"]["mem"].strip() == "8"
    for target, mib in (("12m", "12"), ("4096", "4")):  # KiB without a suffix
        assert daemon.xensim("mem-set", "ms1", target).returncode == 0
        # the guest's balloon follows on its own: xl list shows it once it has
        for _ in range(50):
            if rows(daemon.xensim("list", "ms1").stdout)["ms1"]["mem"].strip() == mib:
                break
        else:
            raise AssertionError(f"Mem never reached {mib} MiB")
    r = daemon.xensim("mem-set", "ms1", "1g")
    assert r.returncode == 1 and "static-max" in r.stderr
    daemon.xensim("destroy", "ms1")


def test_top_batch(daemon: Daemon) -> None:
    create(daemon, "tp1")
    r = daemon.xensim("top", "--iterations", "2", "--delay", "0.2")
    assert r.returncode == 0, r.stderr
    frames = r.stdout.split("\n\n")
    assert len(frames) == 2
    for frame in frames:
        lines = frame.split("\n")
        assert lines[0].startswith("xentop - ") and "Xen 4.17" in lines[0]
        assert re.fullmatch(r"\d+ domains: \d+ running, \d+ blocked, \d+ paused, \d+ crashed, "
                            r"\d+ dying, \d+ shutdown", lines[1])
        assert lines[3].split()[:4] == ["NAME", "STATE", "CPU(sec)", "CPU(%)"]
        assert any(line.split()[0] == "tp1" for line in lines[4:])
    daemon.xensim("destroy", "tp1")


# -- devices ------------------------------------------------------------------------------------


def test_block_attach_detach(daemon: Daemon) -> None:
    img = daemon.dir / "b.img"
    img.write_bytes(b"\0" * 65536)
    create(daemon, "bk1")
    r = daemon.xensim("block-attach", "bk1", f"format=raw,vdev=xvdb,access=rw,target={img}")
    assert r.returncode == 0, r.stderr
    snap = daemon.xensim("top", "-i", "1").stdout
    assert re.search(r"bk1 .* 1 +\d+ +\d+ +\d+ +\d+ +\d+ +0$", snap, re.M), snap
    assert daemon.xensim("block-detach", "bk1", "xvdb").returncode == 0
    r = daemon.xensim("block-detach", "bk1", "xvdc")
    assert r.returncode == 1 and "no disk" in r.stderr
    r = daemon.xensim("block-attach", "bk1", "vdev=xvdq,format=raw,bogus=1")
    assert r.returncode == 1
    daemon.xensim("destroy", "bk1")


def test_network_attach_detach(daemon: Daemon) -> None:
    create(daemon, "nt1")
    r = daemon.xensim("network-attach", "nt1", "mac=00:16:3e:00:00:33", "bridge=xenbr0")
    assert r.returncode == 0, r.stderr
    assert daemon.xensim("network-detach", "nt1", "00:16:3e:00:00:33").returncode == 0
    r = daemon.xensim("network-detach", "nt1", "7")
    assert r.returncode == 1 and "no network device" in r.stderr
    daemon.xensim("destroy", "nt1")


# -- the sockets --------------------------------------------------------------------------------


def _xs_read(path: Path, node: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(encode_message(XsType.READ, 1, 0, node.encode() + b"\0"))
        head = b""
        while len(head) < HEADER.size:
            head += s.recv(HEADER.size - len(head))
        kind, _req, _tx, length = HEADER.unpack(head)
        body = b""
        while len(body) < length:
            body += s.recv(length - len(body))
        assert kind == XsType.READ, body
        return body


def test_xenstore_socket_serves_the_hosts_store(daemon: Daemon) -> None:
    create(daemon, "xs1")
    domid = rows(daemon.xensim("list", "xs1").stdout)["xs1"]["id"].strip()
    assert _xs_read(daemon.xenstore, f"/local/domain/{domid}/name") == b"xs1"
    daemon.xensim("destroy", "xs1")


def _raw(daemon: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(daemon.control))
    return s


def _response(s: socket.socket) -> dict:
    dec = FrameDecoder()
    while True:
        data = s.recv(65536)
        assert data, "connection closed without a response"
        bodies = dec.feed(data)
        if bodies:
            return decode_body(bodies[0])


def test_bad_clients_do_not_hurt_the_daemon(daemon: Daemon) -> None:
    # a well-framed message that is not msgpack: an error, the connection carries on
    with _raw(daemon) as s:
        s.sendall(FRAME_HEADER.pack(3) + b"\xc1\xc1\xc1")
        assert _response(s)["error"]["code"] == "EPROTO"
        s.sendall(encode_frame({"op": "no-such-op", "args": {}, "id": 5}))
        resp = _response(s)
        assert resp["id"] == 5 and resp["error"]["code"] == "EUNKNOWNOP"
        s.sendall(encode_frame(["not", "a", "map"]))
        assert _response(s)["error"]["code"] == "EPROTO"
        s.sendall(encode_frame({"op": "list", "args": {"domains": "x"}, "id": 6}))
        assert _response(s)["error"]["code"] == "EINVAL"
        s.sendall(encode_frame({"op": "ping", "id": 7}))
        assert _response(s)["ok"] is True
    # an oversized frame: E2BIG, then the daemon closes that connection
    with _raw(daemon) as s:
        s.sendall(FRAME_HEADER.pack(0xFFFFFFFF) + b"x" * 100)
        assert _response(s)["error"]["code"] == "E2BIG"
        assert s.recv(100) == b""
    # garbage bytes, half a frame, and a client vanishing in the middle of a stream
    with _raw(daemon) as s:
        s.sendall(os.urandom(3))
    with _raw(daemon) as s:
        s.sendall(encode_frame({"op": "top", "args": {"delay": 0.05}, "id": 1}))
        assert "event" in _response(s)
    create(daemon, "bc1", 'name = "{name}"\nkernel = "examples.echo:main"\nmemory = 8\n')
    with _raw(daemon) as s:
        s.sendall(encode_frame({"op": "console", "args": {"domain": "bc1"}, "id": 1}))
        assert "event" in _response(s)
    # everyone else is still served
    assert rows(daemon.xensim("list").stdout)["bc1"]
    r = daemon.xensim("console", "bc1", input=b"still alive\n\x1d")
    assert r.returncode == 0
    daemon.xensim("destroy", "bc1")


def test_a_second_host_on_a_live_socket_is_refused(daemon: Daemon) -> None:
    r = subprocess.run([*CLI, "host", "--control", str(daemon.control), "--no-xenstore"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "already running" in r.stderr


def test_sigint_destroys_guests_and_removes_sockets(short_dir: Path) -> None:
    (short_dir / "c").touch()  # not a socket: refused, left alone
    r = subprocess.run([*CLI, "host", "--control", str(short_dir / "c"), "--no-xenstore"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not a socket" in r.stderr
    (short_dir / "c").unlink()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_dir / "x"))  # a stale socket (nobody listens): replaced
    stale.close()
    d = start_daemon(short_dir)
    create(d, "sg1")
    assert d.proc.send_signal(signal.SIGINT) is None
    assert d.proc.wait(timeout=30) == 0
    log = d.log.read_text()
    assert "SIGINT: destroying 1 guest(s)" in log and "stopped" in log
    assert not d.control.exists() and not d.xenstore.exists()


# -- one-shot mode ------------------------------------------------------------------------------


def test_run_streams_consoles_and_exits(short_dir: Path) -> None:
    a = short_dir / "a.cfg"
    a.write_text('name = "web"\nkernel = "examples.hello:main"\nmemory = 8\n')
    b = short_dir / "b.cfg"
    b.write_text('name = "db"\nkernel = "examples.cruncher:main"\nmemory = 8\nextra="0.1"\n')
    r = subprocess.run([*CLI, "run", str(a), str(b)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "[web] Hello from web (domain 1)!" in r.stdout
    assert re.search(r"^\[db\] db: used 0\.10 s of CPU", r.stdout, re.M)


def test_run_exit_status_when_a_guest_crashes(short_dir: Path) -> None:
    c = short_dir / "c.cfg"
    c.write_text('name = "boom"\nkernel = "tests.cli.guests:crash"\nmemory = 8\n')
    r = subprocess.run([*CLI, "run", str(c)], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert "[boom] boom: about to crash" in r.stdout
    assert "boom: crashed" in r.stderr


def test_demo_exits_0() -> None:
    r = subprocess.run([*CLI, "demo"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "xensim demo: report" in r.stdout and LIST_HEADER in r.stdout
