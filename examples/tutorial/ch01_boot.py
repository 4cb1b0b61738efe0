"""Tutorial chapter 1: boot a host and a guest from Python (docs/tutorials/01-boot.md).

Boots a simulated host, creates one guest whose program prints two lines
and waits for a line typed on its console, reads the console log, and
lists what dom0 wrote about the guest in XenStore, with each node's
permissions. Then it types the line the guest waits for and watches the
domain power off.
"""

from __future__ import annotations

import trio

from dom0.host import open_host
from dom0.toolstack.config import GuestConfig
from domu.guest import Guest
from domu.xenstore import XenStoreClient

UUID = "5eed0000-0000-4000-8000-000000000001"  # fixed so the output is the same every run


async def greeter(guest: Guest) -> None:
    """The guest program: runs inside domain ``guest.domid``, sees only its own domain."""
    await guest.console.print(f"hello from {guest.name}, domain {guest.domid}")
    home = await guest.xenstore.read("vm")  # relative paths are under /local/domain/<domid>
    await guest.console.print(f"my vm path is {home.decode()}")
    line = await guest.console.readline()  # waits for dom0 to type something
    await guest.console.print(f"got {line!r}, powering off")


async def show_tree(xs: XenStoreClient, path: str, depth: int = 0) -> None:
    """Print ``path`` and its children: name, value and permissions (owner first)."""
    name = path if depth == 0 else path.rsplit("/", 1)[1]
    value = (await xs.read(path)).decode()
    perms = " ".join(await xs.get_perms(path))
    shown = f" = {value!r}" if value and not path.endswith("start_time") else ""
    print(f"{'  ' * depth}{name}{shown}  [{perms}]")
    for child in await xs.directory(path):
        await show_tree(xs, f"{path}/{child}", depth + 1)


async def main() -> None:
    async with open_host() as host:
        dom = await host.create(GuestConfig(name="hello", kernel=greeter, memory=4, uuid=UUID))
        await dom.console.wait_for("vm path")
        print(f"{'Name':<40} {'ID':>5} {'Mem':>5} {'VCPUs':>5}")  # xl list, less the timings
        for row in host.list():
            print(f"{row.name:<40} {row.domid:5d} {row.mem_mib:5d} {row.vcpus:5d}")

        print("\nconsole log so far:")
        print(dom.console.log().decode(), end="")

        xs = host.kernel.xs  # dom0's own, privileged xenstore client
        print("\nwhat dom0 wrote for the guest:")
        await show_tree(xs, f"/local/domain/{dom.domid}")
        await show_tree(xs, f"/vm/{UUID}")
        await show_tree(xs, f"/local/domain/0/backend/console/{dom.domid}")

        await dom.console.send("bye\n")  # type a line on the guest's console
        reason = await dom.wait()  # the program returns: the guest powers off
        print(f"\nthe guest's last line: {dom.console.log().decode().splitlines()[-1]}")
        print(f"it shut down ({reason.name}) and is {dom.state}")
        print(f"still in xenstore: {await xs.exists(f'/local/domain/{dom.domid}')}")
    print("host shut down; nothing leaked")


if __name__ == "__main__":
    trio.run(main)
