"""xl.cfg parsing: real-world files, every disk/vif form, exact errors, properties."""

from __future__ import annotations

import contextlib
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dom0.toolstack.config import (
    Action,
    ChannelSpec,
    ConfigError,
    DiskSpec,
    GuestConfig,
    VifSpec,
)
from dom0.toolstack.xlcfg import (
    dumps_config,
    format_channel_spec,
    format_disk_spec,
    format_vif_spec,
    load_config,
    loads_config,
    parse_channel_spec,
    parse_cpulist,
    parse_disk_spec,
    parse_rate,
    parse_settings,
    parse_vif_spec,
    vdev_number,
)

CONFIGS = Path(__file__).parent / "configs"
BASE = 'name = "g"\nkernel = "examples.hello:main"\n'


def _cfg(text: str, extra: str | None = None) -> tuple[GuestConfig, list[str]]:
    return loads_config(text, "guest.cfg", extra)


def _error(text: str, extra: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        _cfg(text, extra)
    return str(info.value)


# ---------------------------------------------------------------- real files

def _disk(vdev: str, target: str, **kw: object) -> DiskSpec:
    return DiskSpec(vdev=vdev, target=target, **kw)  # type: ignore[arg-type]


EXPECTED: dict[str, GuestConfig] = {
    "pvlinux.cfg": GuestConfig(
        name="example.pvlinux", kernel="examples.hello:main", extra="root=/dev/xvda1",
        memory=128, vcpus=2, vifs=[VifSpec(devid=0)],
        disks=[_disk("xvda", "/dev/vg/guest-volume")]),
    "pvh.cfg": GuestConfig(
        name="example.pvhlinux", kernel="examples.hello:main",
        uuid="4c1d7a9e-6b2f-4a53-9d1e-0f3c2b8a7e61", extra="console=hvc0",
        cmdline="root=/dev/xvda1 ro console=hvc0", memory=512, maxmem=1024, vcpus=2,
        maxvcpus=4, cpus="0-3,^1", cpu_weight=512, cap=150, on_crash=Action.PRESERVE,
        on_watchdog=Action.COREDUMP_RESTART, max_event_channels=2047, max_grant_frames=32,
        max_maptrack_frames=1024, vifs=[VifSpec(devid=0, bridge="xenbr0")],
        disks=[_disk("xvda", "/dev/vg/pvh-root")]),
    "disks.cfg": GuestConfig(
        name="disks", kernel="examples.disks:main", disks=[
            _disk("hda", "/dev/vg/guest-volume"),
            _disk("hdb", "/dev/vg/second"),
            _disk("xvda", "/srv/images/a,b.img"),
            _disk("xvdb", "/dev/vg/third"),
            _disk("xvdc", "/dev/vg/fourth"),
            _disk("xvdd", "/srv/images/fifth.img", access="ro"),
            _disk("hdc", "/root/image.iso", access="ro", devtype="cdrom"),
            _disk("hdd", "/root/image2.iso", access="ro", devtype="cdrom"),
            _disk("xvde", "/root/image3.iso", access="ro", devtype="cdrom"),
            _disk("sda", "", access="ro", devtype="cdrom", format="empty"),
            _disk("xvdf", "/srv/f.img", discard=False, trusted=False, direct_io_safe=True,
                  backendtype="qdisk"),
            _disk("d1p2", "/srv/g.img"),
        ]),
    "vifs.cfg": GuestConfig(
        name="vifs", kernel="examples.net:main", vifs=[
            VifSpec(devid=0, mac="00:16:3e:74:3d:76", model="rtl8139", bridge="xenbr0"),
            VifSpec(devid=1, mac="00:16:3e:74:34:32"),
            VifSpec(devid=2),
            VifSpec(devid=3, bridge="xenbr1", ip="192.168.1.10", vifname="web0",
                    script="vif-route", gatewaydev="eth0"),
            VifSpec(devid=4, rate="10Mb/s"),
            VifSpec(devid=5, rate="250KB/s"),
            VifSpec(devid=6, rate="1MB/s@20ms"),
            VifSpec(devid=9, mtu=9000, trusted=False),
            VifSpec(devid=8, type="vif", gatewaydev="eth1"),
        ]),
    "channels.cfg": GuestConfig(
        name="agents", kernel="examples.hello:main", memory=64, channels=[
            ChannelSpec(name="org.qemu.guest_agent.0", connection="socket",
                        path="/run/xen/agents-qga.sock"),
            ChannelSpec(name="org.example.debug.1", connection="pty"),
            ChannelSpec(name="org.example.config.1", connection="pty", backend="Domain-0"),
        ]),
    "comments.cfg": GuestConfig(
        name="comments", kernel="examples.hello:main", memory=64, vcpus=1, maxvcpus=2,
        extra="console=hvc0 loglevel=8", on_crash=Action.RENAME_RESTART, cpus=["0", "1-2"],
        disks=[_disk("xvda", "/srv/c.img"), _disk("xvdb", "/srv/d.img", access="ro"),
               _disk("xvdc", "/srv/e.img")]),
}

EXPECTED_WARNINGS = {
    "comments.cfg": [
        "comments.cfg:21: warning: bootloader: ignored by xensim",
        "comments.cfg:22: warning: vnc: ignored by xensim",
        'comments.cfg:23: warning: unknown key "frobnicate" (ignored)',
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_world_configs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONFIGS)
    config, warnings = load_config(name)
    assert config == EXPECTED[name]
    assert warnings == EXPECTED_WARNINGS.get(name, [])


def test_every_config_file_is_covered() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.cfg")) == sorted(EXPECTED)


def test_raw_settings_carry_line_numbers() -> None:
    text = (CONFIGS / "comments.cfg").read_text()
    s = parse_settings(text, "comments.cfg")
    assert (s["name"].value, s["name"].line) == ("comments", 4)
    assert (s["memory"].value, s["memory"].line) == ("64", 4)
    assert s["disk"].value == ["vdev=xvda, target=/srv/c.img",
                               "vdev=xvdb, access=ro, target=/srv/d.img",
                               "vdev=xvdc, target=/srv/e.img"]
    assert s["disk"].item_lines == [13, 15, 17]
    assert s["disk"].line == 17  # the latest (+=) assignment
    assert s["vif"].value == []


def test_nested_lists_and_numbers_are_raw_strings() -> None:
    s = parse_settings("vnuma = [ [ 'pnode=0', 'size=512' ], [ \"pnode=1\" ] ]\nx = 0x1f\n")
    assert s["vnuma"].value == [["pnode=0", "size=512"], ["pnode=1"]]
    assert s["x"].value == "0x1f"


# ---------------------------------------------------------------- disk forms

DISK_EQUIVALENTS = [
    ["/dev/vg/guest-volume,,hda",
     "/dev/vg/guest-volume,raw,hda,rw",
     "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
     "raw:/dev/vg/guest-volume,hda,w",
     "phy:/dev/vg/guest-volume,hda,w",
     "  vdev=hda,\ttarget=/dev/vg/guest-volume",
     "vg/guest-volume,,hda"],  # /dev/ prepended
    ["/root/image.iso,,hdc,cdrom",
     "/root/image.iso,,hdc,,cdrom",
     "/root/image.iso,raw,hdc,devtype=cdrom",
     "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
     "raw:/root/image.iso,hdc:cdrom,ro",
     "/root/image.iso,,hdc,rw,cdrom"],  # a CD-ROM is always read-only
    [",hdc:cdrom,r", "vdev=hdc, cdrom", "cdrom,vdev=hdc,target="],
]


@pytest.mark.parametrize("forms", DISK_EQUIVALENTS, ids=lambda f: f[0])
def test_equivalent_disk_forms(forms: list[str]) -> None:
    parsed = [parse_disk_spec(f) for f in forms]
    assert all(p == parsed[0] for p in parsed), list(zip(forms, parsed))


@pytest.mark.parametrize(("spec", "expected"), [
    ("vdev=xvda, target=/srv/a,b,,c", _disk("xvda", "/srv/a,b,,c")),
    ("xvda,target=x", None),  # 'xvda' is the positional target: respecified
    (",,xvda,,target=/srv/t", _disk("xvda", "/srv/t")),  # empty target may be re-given
    ("target=/srv/x,", _disk("ignored", "")),  # no vdev -> error below
    ("qcow2:/srv/q.qcow2,xvda,w", _disk("xvda", "/srv/q.qcow2", format="qcow2")),
    ("tap:qcow:/srv/q.qcow,xvda,w", _disk("xvda", "/srv/q.qcow", format="qcow")),
    ("nbd:10.0.0.1 2000,xvda,r", _disk("xvda", "10.0.0.1 2000", access="ro",
                                        script="block-nbd")),
    ("script=drbd, vdev=xvda, target=r0", _disk("xvda", "r0", script="drbd")),
    ("/srv/a,,xvda,ro,backend=dd,specification=xen,trusted,discard",
     _disk("xvda", "/srv/a", access="ro", backend="dd")),
    ("/srv/a,,xvda,colo,colo-port=9000,grant_usage=1", _disk("xvda", "/srv/a")),
    ("/srv/a,vhd,51712", _disk("51712", "/srv/a", format="vhd")),
])
def test_disk_specs(spec: str, expected: DiskSpec | None) -> None:
    if expected is None or expected.vdev == "ignored":
        with pytest.raises(ConfigError):
            parse_disk_spec(spec)
    else:
        assert parse_disk_spec(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("/x,qcow3,xvda", "unknown value for format (expected raw, qcow, qcow2, vhd or qed) "
                      "near `qcow3'"),
    ("/x,raw,xvda,rw,more", "too many positional parameters"),
    ("/x,,xvda,rx", "unknown value for access (expected r, ro, w or rw) near `rx'"),
    ("vdev=xvda,vdev=xvdb,target=/x", "vdev respecified near `xvdb'"),
    ("format=raw,format=vhd,vdev=xvda,target=/x", "format respecified near `vhd'"),
    ("/x,,xvda,devtype=floppy", "unknown value for devtype"),
    ("/x,,xvda,frob=1", "unknown parameter near `frob=1'"),
    ("zz:/x,xvda", "unknown deprecated disk prefix near `zz:'"),
    ("/x,,hdc:tape", "unknown deprecated type (expected cdrom or disk) near `tape'"),
    ("/x", "no vdev specified"),
    ("vdev=xvda", "no target specified (and device not removable)"),
    ("/x,,xvd1", "vdev `xvd1': expected xvdX[N], hdX[N], sdX[N], dNpM or a decimal number"),
    ("/x,,hde", "vdev `hde'"),
    ("/x,,xvda,backendtype=nfs", "unknown value for backendtype"),
    ("/x=y,xvda", "bad disk syntax near `=y,xvda'"),
])
def test_disk_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_disk_spec(spec)
    assert str(info.value).startswith(f"disk specification `{spec}': ")
    assert message in str(info.value)


@pytest.mark.parametrize(("vdev", "number"), [
    ("xvda", 51712), ("xvda1", 51713), ("xvdq", 268439552), ("sdb", 2064), ("hdc", 5632),
    ("d0p1", 51713), ("d16", 268439552), ("768", 768),
])
def test_vdev_numbers(vdev: str, number: int) -> None:
    assert vdev_number(vdev) == number


# ---------------------------------------------------------------- vif forms

@pytest.mark.parametrize(("spec", "position", "expected"), [
    ("", 3, VifSpec(devid=3)),
    (",,  ,", 0, VifSpec(devid=0)),
    ("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0", 0,
     VifSpec(devid=0, mac="00:16:3e:74:3d:76", model="rtl8139")),
    ("mac=0:16:3e:a-b-c", 1, VifSpec(devid=1, mac="00:16:3e:0a:0b:0c")),
    ("bridge=xenbr1, ip=10.0.0.2 10.0.0.3", 0,
     VifSpec(devid=0, bridge="xenbr1", ip="10.0.0.2 10.0.0.3")),
    ("devid=7,vifname=v7,mtu=1400,untrusted", 2,
     VifSpec(devid=7, vifname="v7", mtu=1400, trusted=False)),
    ("type=ioemu,accel=x,vlan=10,forwarddev=eth0,colo_sock_mirror_id=1", 0,
     VifSpec(devid=0, type="ioemu")),
])
def test_vif_specs(spec: str, position: int, expected: VifSpec) -> None:
    assert parse_vif_spec(spec, position) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("mac=00:16:3e:74:3d", "invalid mac `00:16:3e:74:3d'"),
    ("mac=00:16:3e:74:3d:zz", "invalid mac"),
    ("mac=01:16:3e:74:3d:76", "multicast"),
    ("colour=blue", "unrecognized argument `colour=blue'"),
    ("bridged", "unrecognized argument `bridged'"),
    ("type=e1000", "invalid type `e1000'"),
    ("devid=-1", "invalid devid `-1'"),
    ("mtu=12", "mtu 12: expected 68..65535"),
    ("rate=10Mb", "invalid rate `10Mb'"),
])
def test_vif_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_vif_spec(spec)
    assert str(info.value).startswith(f"vif `{spec}': ")
    assert message in str(info.value)


@pytest.mark.parametrize(("rate", "expected"), [
    ("10Mb/s", (62500, 50000)),
    ("250KB/s", (12500, 50000)),
    ("1MB/s@20ms", (20000, 20000)),
    ("8b/s@1s", (1, 1_000_000)),
    ("1GB/s@100us", (100_000, 100)),
    ("100B/s@2", (200, 2_000_000)),  # a bare interval is seconds
    ("010B/s", (0, 50000)),  # C strtoull base 0: octal 8 bytes/s
])
def test_rates(rate: str, expected: tuple[int, int]) -> None:
    assert parse_rate(rate) == expected


@pytest.mark.parametrize("rate", ["", "@20ms", "0B/s", "10MB", "10 MB/s", "1.5MB/s",
                                  "5000000000B/s", "1MB/s@", "1MB/s@0ms", "1MB/s@5000s",
                                  "1MB/s@20ns", "08B/s"])
def test_bad_rates(rate: str) -> None:
    with pytest.raises(ConfigError):
        parse_rate(rate)


# ---------------------------------------------------------------- CPULIST

@pytest.mark.parametrize(("cpulist", "nr_cpus", "expected"), [
    ("0-3,5,^1", None, {0, 2, 3, 5}),
    ("0-3,5,^1", 8, {0, 2, 3, 5}),
    ("all", None, None),
    ("all", 4, {0, 1, 2, 3}),
    ("all,^1", 4, {0, 2, 3}),
    ("^1,all", 4, {0, 1, 2, 3}),
    ("nodes:0,^2", 4, {0, 1, 3}),
    ("node:0", None, None),
    ("0-3,^nodes:0,2", 4, {2}),
    ("0, 2", None, {0, 2}),  # strtoul skips leading blanks
    ("3,,1", None, {1, 3}),
    ("", None, set()),
])
def test_cpulists(cpulist: str, nr_cpus: int | None, expected: set[int] | None) -> None:
    assert parse_cpulist(cpulist, nr_cpus) == expected


@pytest.mark.parametrize(("cpulist", "message"), [
    ("^all", "can't combine"),
    ("3-1", "invalid pcpu range `3-1'"),
    ("1-", "invalid pcpu range"),
    ("x", "invalid pcpu range"),
    ("0 ", "invalid pcpu range"),
    ("nodes:1", "NUMA node 1 does not exist"),
    ("0-4", "cpu 4 does not exist (the host has 4: 0-3)"),
])
def test_cpulist_errors(cpulist: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cpulist(cpulist, 4)
    assert message in str(info.value)


# ---------------------------------------------------------------- file errors

ERRORS = [
    # (text, exact message)
    (BASE + 'extra = "unterminated\n',
     "guest.cfg:3: config parsing error near `\"unterminated': unterminated string "
     "(a quoted string must end on the line it starts)"),
    (BASE + "memory 512\n",
     "guest.cfg:3: config parsing error near `512': syntax error, unexpected NUMBER `512', "
     "expecting '=' or '+='"),
    (BASE + "disk = [ 'a' 'b' ]\n",
     "guest.cfg:3: config parsing error near `'b'': syntax error, unexpected STRING `'b'', "
     "expecting ',' or ']'"),
    (BASE + "disk = [ , ]\n",
     "guest.cfg:3: config parsing error near `,': syntax error, unexpected ',', expecting a "
     "value: \"string\", 'string', number or [ list ]"),
    (BASE + "disk = [ 'a'\n",
     "guest.cfg:4: config parsing error: syntax error, unexpected end of input, "
     "expecting ',' or ']'"),
    (BASE + "memory =\nvcpus = 1\n",
     "guest.cfg:3: config parsing error near `<newline>': syntax error, unexpected end of "
     "line, expecting a value: \"string\", 'string', number or [ list ]"),
    (BASE + "memory = 1 vcpus = 2\n",
     "guest.cfg:3: config parsing error near `vcpus': syntax error, unexpected IDENT "
     "`vcpus', expecting end of line or ';' after the value"),
    (BASE + "Memory = 5\n",
     "guest.cfg:3: config parsing error near `Memory': lexical error (keys are lower-case "
     "letters, digits, '_' and '.')"),
    (BASE + "memory = 1.5\n",
     "guest.cfg:3: config parsing error near `.5': lexical error (this looks like Python, "
     "which xl.cfg is not: values are \"strings\", integers or [ lists ])"),
    (BASE + "memory = 512\r\n",
     "guest.cfg:3: config parsing error near `\\r': lexical error (carriage return: DOS "
     "line endings are not accepted)"),
    (BASE + 'extra = "a\\qb"\n',
     "guest.cfg:3: config parsing error near `\"a\\qb\"': invalid character 'q' after "
     "backslash in quoted string"),
    (BASE + "\n\n\n\nmemory = \"lots\"\n",
     'guest.cfg:7: memory: expected an integer number of MiB, got "lots"'),
    (BASE + "memory = 08\n", 'guest.cfg:3: memory: expected an integer number of MiB, got "08"'),
    (BASE + "memory = 1e5\n",
     'guest.cfg:3: memory: expected an integer number of MiB, got "1e5"'),
    (BASE + "memory = [ 1 ]\n",
     "guest.cfg:3: memory: expected an integer number of MiB, got a [ list ]"),
    (BASE + "memory = 5\nmemory += 12\n", "guest.cfg:4: memory: can't use += with numbers"),
    (BASE + "extra = 'a'\nextra += [ 'b' ]\n",
     "guest.cfg:4: extra: can't add [list] to \"string\" or vice versa"),
    (BASE + "disk = [\n 'xvda,,/x',\n '/x,,xvdz9999',\n]\n",
     "guest.cfg:4: disk: disk specification `xvda,,/x': vdev `/x': expected xvdX[N], hdX[N], "
     "sdX[N], dNpM or a decimal number (xen-vbd-interface)"),
    (BASE + "disk = [\n '/y,,xvda',\n '/x,,xvdz99999',\n]\n",
     "guest.cfg:5: disk: disk specification `/x,,xvdz99999': vdev `xvdz99999': expected "
     "xvdX[N], hdX[N], sdX[N], dNpM or a decimal number (xen-vbd-interface)"),
    (BASE + "disk = '/x,,xvda'\n",
     "guest.cfg:3: disk: expected a [ list ] of DISKSPEC strings, got a string "
     "(write disk = [ '...' ])"),
    (BASE + "vif = [ 'mac=00:16:3e:gg:00:00' ]\n",
     "guest.cfg:3: vif: vif `mac=00:16:3e:gg:00:00': invalid mac `00:16:3e:gg:00:00' "
     "(expected XX:XX:XX:XX:XX:XX, hex)"),
    (BASE + "on_crash = 'explode'\n",
     'guest.cfg:3: on_crash: unknown action "explode" (expected one of destroy, restart, '
     "rename-restart, preserve, coredump-destroy, coredump-restart, soft-reset)"),
    (BASE + 'type = "hvm"\n',
     'guest.cfg:3: type: "hvm" guests are not supported: xensim simulates PV guests only '
     '(use type = "pv" or "pvh")'),
    (BASE + 'builder = "hvm"\n',
     'guest.cfg:3: builder: "hvm" guests are not supported: xensim simulates PV guests only '
     '(use type = "pv" or "pvh")'),
    (BASE + 'type = "pvm"\n', 'guest.cfg:3: type: expected pv, pvh or hvm, got "pvm"'),
    ('name = "g"\nkernel = "/boot/vmlinuz"\n',
     'guest.cfg:2: kernel: xensim runs a Python guest program: expected "module:function", '
     'got "/boot/vmlinuz"'),
    (BASE + 'uuid = "not-a-uuid"\n',
     'guest.cfg:3: uuid: expected XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX (hex), '
     'got "not-a-uuid"'),
    (BASE + 'cpus = "0-2,^x"\n',
     "guest.cfg:3: cpus: CPULIST `0-2,^x': invalid pcpu range `^x' (expected N, N-M, all, "
     "nodes:..., each optionally with ^)"),
    (BASE + "cpus = [ '0', 'nodes:3' ]\n",
     "guest.cfg:3: cpus: CPULIST `nodes:3': NUMA node 3 does not exist (a xensim host has "
     "one node, node 0)"),
    (BASE + "memory = 64\n\nmaxmem = 32\n",
     "guest.cfg:5: maxmem 32: must be >= memory (64)"),
    (BASE + "vcpus = 0\n", "guest.cfg:3: vcpus 0: expected 1..128"),
    (BASE + "disk = [ '/a,,xvda', '/b,,xvda' ]\n",
     "guest.cfg:3: disk vdev 'xvda' given twice"),
    (BASE + "vif = [ 'devid=1', '' ]\n", "guest.cfg:3: vif devid 1 given twice"),
    ('kernel = "examples.hello:main"\n',
     "guest.cfg: name: mandatory, but not given (Domain name must be specified)"),
    ('name = "bad name!"\nkernel = "a:b"\n',
     "guest.cfg:1: name 'bad name!': expected 1-64 characters of letters, digits, '_.-'"),
    ('name = "g"\n', "guest.cfg: kernel: expected \"module:function\" naming the guest program"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS, ids=lambda v: v.splitlines()[-1]
                         if isinstance(v, str) and "\n" in v else None)
def test_errors_name_file_and_line(text: str, message: str) -> None:
    assert _error(text) == message


def test_extra_settings_errors_name_the_command_line() -> None:
    assert _error(BASE, "memory=512; vcpus=two") == (
        "command line:1: config parsing error near `two': syntax error, unexpected IDENT "
        "`two', expecting a value: \"string\", 'string', number or [ list ]")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"^/nonexistent/g.cfg: unable to open "
                                          r"configuration file: No such file"):
        load_config("/nonexistent/g.cfg")


# ---------------------------------------------------------------- semantics

def test_extra_settings_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "guest.cfg"
    path.write_text(BASE + "memory = 128\nvcpus = 1\nextra = 'a'\n# trailing comment")
    config, warnings = load_config(path, "memory=512; vcpus=2\nextra += ' b'")
    assert (config.memory, config.vcpus, config.extra) == (512, 2, "a b")
    assert warnings == []


def test_last_assignment_wins() -> None:
    config, _ = _cfg(BASE + "memory = 64\nmemory = 96\n")
    assert config.memory == 96


@pytest.mark.parametrize(("value", "expected"), [
    ("512", 512), ('"512"', 512), ("0x200", 512), ("0", None), ("010", 8), ("' 77'", 77),
])
def test_integers_follow_c_strtol_base_0(value: str, expected: int | None) -> None:
    if expected is None:
        assert "memory 0: expected" in _error(BASE + f"memory = {value}\n")
    else:
        config, _ = _cfg(BASE + f"memory = {value}\n")
        assert config.memory == expected


@pytest.mark.parametrize(("settings", "cmdline", "extra", "warning"), [
    ("extra = 'quiet'", None, "quiet", None),
    ("root = '/dev/xvda1'", "root=/dev/xvda1", "", None),
    ("root = '/dev/xvda1'\nextra = 'quiet'", "root=/dev/xvda1 quiet", "quiet", None),
    ("cmdline = 'init=/bin/sh'\nroot = '/dev/xvda1'\nextra = 'quiet'", "init=/bin/sh",
     "quiet", "guest.cfg:4: warning: ignoring root= and extra= in favour of cmdline="),
])
def test_cmdline_root_extra(settings: str, cmdline: str | None, extra: str,
                            warning: str | None) -> None:
    config, warnings = _cfg(BASE + settings + "\n")
    assert (config.cmdline, config.extra) == (cmdline, extra)
    assert warnings == ([warning] if warning else [])


def test_string_escapes_and_quotes() -> None:
    s = parse_settings("a = 'it\\'s'\nb = \"tab\\there\\n\"\nc = \"\\x41\\101\\\\\"\n"
                       "d = 'say \"hi\"'\n")
    assert [s[k].value for k in "abcd"] == ["it's", "tab\there\n", "AA\\", 'say "hi"']


def test_ignored_and_unknown_keys_warn() -> None:
    _, warnings = _cfg(BASE + "ramdisk = '/boot/initrd'\npool = 'Pool-0'\n"
                       "cpus_soft = 'all'\nserial = 'pty'\nflavour = 'x'\n"
                       "builder = 'generic'\n")
    assert warnings == [
        "guest.cfg:3: warning: ramdisk: ignored by xensim",
        "guest.cfg:4: warning: pool: ignored by xensim",
        "guest.cfg:5: warning: cpus_soft: ignored by xensim",
        "guest.cfg:6: warning: serial: ignored by xensim",
        'guest.cfg:7: warning: unknown key "flavour" (ignored)',
        'guest.cfg:8: warning: builder is deprecated, use type = "pv"',
    ]


def test_non_raw_disks_warn() -> None:
    config, warnings = _cfg(BASE + "disk = [ '/a.qcow2,qcow2,xvda' ]\n")
    assert config.disks[0].format == "qcow2"
    assert warnings == ["guest.cfg:3: warning: disk xvda: format qcow2 is not served by "
                        "xensim's blkback (raw only)"]


def test_deeply_nested_lists_are_refused_not_crashed() -> None:
    with pytest.raises(ConfigError, match="nested more than"):
        parse_settings("x = " + "[" * 5000 + "]" * 5000)


# ---------------------------------------------------------------- channels

CHANNEL_GOOD = [
    ("name=org.x.1,connection=pty", ChannelSpec("org.x.1", "pty")),
    ("connection=socket,path=/run/a.sock,name=org.x.1",
     ChannelSpec("org.x.1", "socket", "/run/a.sock")),
    # whitespace around KEY and VALUE goes; empty items are skipped (strtok)
    (" name = org.x.1 ,, connection = socket ,\tpath=/run/a b.sock ,",
     ChannelSpec("org.x.1", "socket", "/run/a b.sock")),
    # a key given twice: the last one wins (xl's replace_string)
    ("name=a,name=b,connection=socket,connection=pty", ChannelSpec("b", "pty")),
    ("name=a,connection=pty,backend=0", ChannelSpec("a", "pty")),
    ("backend=Domain-0,name=a,connection=pty", ChannelSpec("a", "pty", backend="Domain-0")),
]


@pytest.mark.parametrize(("spec", "expected"), CHANNEL_GOOD)
def test_channel_specs(spec: str, expected: ChannelSpec) -> None:
    assert parse_channel_spec(spec) == expected
    assert parse_channel_spec(format_channel_spec(expected)) == expected


CHANNEL_BAD = [
    # xl's own messages
    ("name=a", "channel `name=a': channel has unknown 'connection' (expected connection=pty "
     "or connection=socket)"),
    ("", "channel `': channel has unknown 'connection' (expected connection=pty or "
     "connection=socket)"),
    ("name=a,connection=tcp", "channel `name=a,connection=tcp': unknown channel connection "
     "'tcp' (expected pty or socket)"),
    ("name=a,connection=PTY", "channel `name=a,connection=PTY': unknown channel connection "
     "'PTY' (expected pty or socket)"),
    ("name=a,connection=socket", "channel `name=a,connection=socket': channel connection "
     "'socket' requires path=.."),
    ("name=a,pty", "channel `name=a,pty': failed to parse channel configuration: `pty' "
     "(expected KEY=VALUE)"),
    ("name=,connection=pty", "channel `name=,connection=pty': failed to parse channel "
     "configuration: `name=' (expected KEY=VALUE)"),
    ("name=a, ,connection=pty", "channel `name=a, ,connection=pty': failed to parse channel "
     "configuration: ` ' (expected KEY=VALUE)"),
    # libxl's (at create time in Xen; at parse time here), numbered as the console
    ("connection=pty", "channel `connection=pty': channel 3 has no name (name= is "
     "mandatory)"),
    # stricter than xl (module docstring)
    ("name=a,connection=pty,speed=9600", "channel `name=a,connection=pty,speed=9600': "
     "unknown channel parameter 'speed' (expected backend, name, connection or path)"),
    ("name=a=b,connection=pty", "channel `name=a=b,connection=pty': `name=a=b': neither KEY "
     "nor VALUE may contain ',', '=' or '\"'"),
    ('name=a"b,connection=pty', "channel `name=a\"b,connection=pty': `name=a\"b': neither "
     "KEY nor VALUE may contain ',', '=' or '\"'"),
    ("name=a,connection=pty,path=/run/a.sock", "channel `name=a,connection=pty,"
     "path=/run/a.sock': channel a: path= is only used with connection=socket"),
    ("name=a,connection=socket,path=a.sock", "channel `name=a,connection=socket,"
     "path=a.sock': channel a: path 'a.sock' must be absolute (dom0 creates the socket; its "
     "cwd is not yours)"),
    ("name=a,connection=socket,path=/" + "s" * 107, "is longer than a Unix socket path may "
     "be (107 bytes)"),
    ("name=" + "n" * 65 + ",connection=pty", "must be 1..64 ASCII characters"),
    ("name=a\x01,connection=pty", "must be printable"),
    ("name=a,connection=pty,backend=driverdom", "backend 'driverdom': xensim serves channels "
     "from dom0 only (0 or Domain-0)"),
]


@pytest.mark.parametrize(("spec", "message"), CHANNEL_BAD)
def test_bad_channel_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_channel_spec(spec, 2)
    assert message in str(info.value)
    if message.startswith("channel `"):
        assert str(info.value) == message


def test_channel_errors_name_file_and_line() -> None:
    assert _error(BASE + "channel = [ 'name=a,connection=pty',\n"
                  "            'name=b,connection=tcp' ]\n") == (
        "guest.cfg:4: channel: channel `name=b,connection=tcp': unknown channel connection "
        "'tcp' (expected pty or socket)")
    assert _error(BASE + "channel = 'name=a,connection=pty'\n") == (
        "guest.cfg:3: channel: expected a [ list ] of CHANNEL_SPEC strings, got a string "
        "(write channel = [ '...' ])")
    assert _error(BASE + "\nchannel = [ 'name=a,connection=socket,path=/run/s',\n"
                  "  'name=b,connection=socket,path=/run/s' ]\n") == (
        "guest.cfg:4: channel path '/run/s' given twice (one socket serves one channel)")


def test_channels_are_no_longer_ignored() -> None:
    config, warnings = _cfg(BASE + "channel = [ 'name=a,connection=pty' ]\n")
    assert config.channels == [ChannelSpec("a", "pty")] and warnings == []


# ---------------------------------------------------------------- properties

_names = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=64)
_words = st.text(string.ascii_letters + string.digits + "_-./", min_size=1, max_size=12)
_free_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)
_vdev_names = st.sampled_from(["xvda", "xvdb", "xvdc1", "xvdaa", "sda", "sdb3", "hda",
                               "hdd", "d2p3", "51712"])


@st.composite
def _disks(draw: st.DrawFn) -> list[DiskSpec]:
    vdevs = draw(st.lists(_vdev_names, unique=True, max_size=4))
    out = []
    for vdev in vdevs:
        cdrom = draw(st.booleans())
        target = "/" + draw(st.text(string.ascii_letters + string.digits + ",/._ -",
                                    max_size=20))
        if cdrom and draw(st.booleans()):
            target = ""
        out.append(DiskSpec(
            vdev=vdev, target=target,
            format="empty" if cdrom and not target else draw(st.sampled_from(["raw", "qcow2"])),
            access="ro" if cdrom else draw(st.sampled_from(["rw", "ro"])),
            devtype="cdrom" if cdrom else "disk",
            backend=draw(st.sampled_from(["0", "dd"])),
            backendtype=draw(st.sampled_from(["phy", "qdisk"])),
            script=draw(st.sampled_from(["block", "block-iscsi"])),
            discard=draw(st.booleans()), direct_io_safe=draw(st.booleans()),
            trusted=draw(st.booleans())))
    return out


@st.composite
def _vifs(draw: st.DrawFn) -> list[VifSpec]:
    n = draw(st.integers(0, 3))
    out = []
    for i in range(n):
        mac = draw(st.none() | st.binary(min_size=5, max_size=5).map(
            lambda b: ":".join(f"{x:02x}" for x in b"\x00" + b)))
        out.append(VifSpec(
            devid=i, mac=mac, bridge=draw(_words), ip=draw(st.none() | _words),
            vifname=draw(st.none() | _words), mtu=draw(st.integers(68, 65535)),
            rate=draw(st.none() | st.sampled_from(["10Mb/s", "1MB/s@20ms"])),
            trusted=draw(st.booleans())))
    return out


_channel_text = st.text(st.characters(codec="utf-8", exclude_characters=',="'),
                        min_size=1, max_size=20).filter(
    lambda t: t.isprintable() and t == t.strip())


@st.composite
def _channels(draw: st.DrawFn) -> list[ChannelSpec]:
    out = []
    for i in range(draw(st.integers(0, 3))):
        name = draw(st.text(string.ascii_letters + string.digits + "._-", min_size=1,
                            max_size=64))
        if draw(st.booleans()):
            out.append(ChannelSpec(name, "pty", backend=draw(st.sampled_from(["0", "Domain-0"]))))
        else:
            out.append(ChannelSpec(name, "socket", f"/run/{i}/" + draw(_channel_text)))
    return out


@st.composite
def _guests(draw: st.DrawFn) -> GuestConfig:
    memory = draw(st.integers(1, 4096))
    vcpus = draw(st.integers(1, 8))
    maxvcpus = draw(st.none() | st.integers(vcpus, 16))
    return GuestConfig(
        name=draw(_names),
        kernel=draw(st.sampled_from(["examples.hello:main", "a.b_c:run"])),
        memory=memory, maxmem=draw(st.none() | st.integers(memory, 8192)),
        vcpus=vcpus, maxvcpus=maxvcpus,
        cpus=draw(st.none() | st.sampled_from(["all", "0-3,^1", "nodes:0"])
                  | st.lists(st.sampled_from(["0", "1-2", "all"]), max_size=3)),
        cpu_weight=draw(st.integers(1, 65535)),
        cap=draw(st.integers(0, 100 * (maxvcpus or vcpus))),
        extra=draw(_free_text), cmdline=draw(st.none() | _free_text),
        on_poweroff=draw(st.sampled_from(list(Action))),
        on_reboot=draw(st.sampled_from(list(Action))),
        on_crash=draw(st.sampled_from(list(Action))),
        on_watchdog=draw(st.sampled_from(list(Action))),
        uuid=draw(st.none() | st.uuids().map(str)),
        max_event_channels=draw(st.integers(1, 2**20)),
        max_grant_frames=draw(st.integers(1, 256)),
        max_maptrack_frames=draw(st.integers(1, 4096)),
        disks=draw(_disks()), vifs=draw(_vifs()), channels=draw(_channels()))


@settings(max_examples=200, deadline=None)
@given(_guests())
def test_round_trip(config: GuestConfig) -> None:
    config.validate()
    text = dumps_config(config)
    parsed, warnings = loads_config(text, "rt.cfg")
    assert parsed == config, text
    assert all("warning: disk" in w or "in favour of cmdline=" in w for w in warnings)


@given(_disks())
def test_disk_spec_round_trip(disks: list[DiskSpec]) -> None:
    for d in disks:
        assert parse_disk_spec(format_disk_spec(d)) == d


@given(_vifs())
def test_vif_spec_round_trip(vifs: list[VifSpec]) -> None:
    for i, v in enumerate(vifs):
        assert parse_vif_spec(format_vif_spec(v), i) == v


@given(_channels())
def test_channel_spec_round_trip(channels: list[ChannelSpec]) -> None:
    for i, c in enumerate(channels):
        assert parse_channel_spec(format_channel_spec(c), i) == c


_config_alphabet = st.sampled_from([*"abcdemnoxyz019_.=+[],;#'\"\\ \t\n-:^@/",
                                    "memory", "disk", "vif", "cpus", "name", "kernel",
                                    "xvda", "target=", "rate=", "mac=", "\r", "é", "\x00"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_config_alphabet, max_size=60).map("".join) | st.text(max_size=80))
def test_fuzz_only_config_errors(text: str) -> None:
    for extra in (None, text):
        with contextlib.suppress(ConfigError):
            loads_config(text, "fuzz.cfg", extra)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60) | st.lists(_config_alphabet, max_size=30).map("".join))
def test_fuzz_device_parsers_only_config_errors(text: str) -> None:
    for parse in (parse_disk_spec, parse_vif_spec, parse_cpulist, parse_rate,
                  parse_channel_spec):
        with contextlib.suppress(ConfigError):
            parse(text)
