"""``xensim block-list`` and ``xensim network-list`` against one ``xensim host``."""

from __future__ import annotations

from dom0.toolstack.formats import (
    BLOCK_LIST_HEADER,
    NETWORK_LIST_HEADER,
    format_block_list,
    format_block_row,
    format_network_list,
    format_network_row,
)
from ring.blkif import vdev_encode
from tests.cli.conftest import Daemon
from tests.cli.test_e2e import wait_for_console

# -- formats (pure) -----------------------------------------------------------------------------


def test_block_list_format_is_xls() -> None:
    # xl: printf("%-5s %-3s %-6s %-5s %-6s %-8s %-30s\n", "Vdev", "BE", "handle", ...)
    assert BLOCK_LIST_HEADER == "Vdev  BE  handle state evt-ch ring-ref BE-path" + " " * 23
    row = {"devid": 51712, "backend_id": 0, "frontend_id": 3, "state": 4, "evtch": 5,
           "rref": 8, "backend": "/local/domain/0/backend/vbd/3/51712"}
    # "%-5d %-3d %-6d %-5d %-6d %-8d %-30s": the frontend's domid under "handle"
    assert format_block_row(row) == \
        "51712 0   3      4     5      8        /local/domain/0/backend/vbd/3/51712"
    short = {**row, "devid": 768, "state": 1, "evtch": -1, "rref": -1,
             "backend": "/local/domain/0/backend/vbd/3/768"}
    assert format_block_row(short) == \
        "768   0   3      1     -1     -1       /local/domain/0/backend/vbd/3/768"
    assert format_block_list([]) == BLOCK_LIST_HEADER


def test_network_list_format_is_xls() -> None:
    # xl: printf("%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s\n", "Idx", "BE",
    # "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path")
    assert NETWORK_LIST_HEADER == ("Idx BE Mac Addr.         handle state evt-ch   "
                                   "tx-/rx-ring-ref BE-path" + " " * 23)
    # "%-3d %-2d " + MAC (no blank after it) + "%6d %5d %6d %5d/%-11d %-30s"
    row = {"devid": 0, "backend_id": 0, "mac": "00:16:3e:6b:ab:ee", "state": 4, "evtch": 10,
           "rref_tx": 768, "rref_rx": 769, "backend": "/local/domain/0/backend/vif/1/0"}
    assert format_network_row(row) == ("0   0  00:16:3e:6b:ab:ee     0     4     10   768/769"
                                       "         /local/domain/0/backend/vif/1/0")
    assert format_network_list([]) == NETWORK_LIST_HEADER


# -- end to end ---------------------------------------------------------------------------------


def test_block_and_network_list(daemon: Daemon) -> None:
    img = daemon.dir / "dl.img"
    img.write_bytes(bytes(1 << 20))
    text = ('name = "{name}"\nkernel = "tests.cli.guests:devices_up"\nmemory = 8\n'
            f'disk = ["format=raw,vdev=xvda,access=rw,target={img}"]\n'
            'vif = ["mac=00:16:3E:00:00:44,bridge=xenbr0"]\n')
    r = daemon.xensim("create", "-q", str(daemon.cfg("dl1", text.format(name="dl1"))))
    assert r.returncode == 0, r.stderr
    wait_for_console(daemon, "dl1", b"dl1: devices up")  # its frontends are connected
    r = daemon.xensim("block-list", "dl1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.rstrip("\n").split("\n")
    assert lines[0] == BLOCK_LIST_HEADER and len(lines) == 2
    vdev, be, handle, state, evtch, rref, path = lines[1].split()
    assert (int(vdev), be, state) == (vdev_encode("xvda"), "0", "4")
    assert path == f"/local/domain/0/backend/vbd/{handle}/{vdev}"
    # xensim's blkfront takes blkback's multi-page ring offer, so it writes
    # ring-page-order and ring-ref0..N; libxl reads ring-ref only: -1, as xl shows
    assert int(evtch) > 0 and rref == "-1"
    assert lines[1] == format_block_row({
        "devid": int(vdev), "backend_id": 0, "frontend_id": int(handle), "state": 4,
        "evtch": int(evtch), "rref": int(rref), "backend": path})

    r = daemon.xensim("network-list", "dl1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.rstrip("\n").split("\n")
    assert lines[0] == NETWORK_LIST_HEADER and len(lines) == 2
    idx, be, mac, handle, state, evtch, rings, path = lines[1].split()
    tx, rx = rings.split("/")
    assert (idx, be, mac, handle, state) == ("0", "0", "00:16:3e:00:00:44", "0", "4")
    assert path.startswith("/local/domain/0/backend/vif/") and path.endswith("/0")
    assert int(evtch) > 0 and int(tx) > 0 and int(rx) > 0
    assert lines[1] == format_network_row({
        "devid": 0, "backend_id": 0, "mac": mac, "state": 4, "evtch": int(evtch),
        "rref_tx": int(tx), "rref_rx": int(rx), "backend": path})

    # hot-plug shows up; Domain-0 has no devices; an unknown domain is an error
    assert daemon.xensim("block-attach", "dl1",
                         f"format=raw,vdev=xvdb,access=ro,target={img}").returncode == 0
    r = daemon.xensim("block-list", "dl1")
    assert [line.split()[0] for line in r.stdout.splitlines()[1:]] == [
        str(vdev_encode("xvda")), str(vdev_encode("xvdb"))]
    assert daemon.xensim("network-detach", "dl1", "0").returncode == 0
    assert daemon.xensim("network-list", "dl1").stdout == NETWORK_LIST_HEADER + "\n"
    assert daemon.xensim("block-list", "Domain-0").stdout == BLOCK_LIST_HEADER + "\n"
    for verb in ("block-list", "network-list"):
        r = daemon.xensim(verb, "nosuch")
        assert (r.returncode, r.stderr) == (1, "xensim: domain 'nosuch' does not exist\n")
        assert daemon.xensim(verb).returncode == 2
    assert daemon.xensim("destroy", "dl1").returncode == 0
