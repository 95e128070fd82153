"""Network namespaces that stand in for machines: one per worker, joined by a bridge to the root namespace.

Each "machine" is `ip netns` namespace `otb<pid>n<i>` with a veth pair: `otb<pid>p<i>` inside it
(address 10.213.X.(10+i)/24) and `otb<pid>h<i>` in the root namespace, a port of the bridge
`otb<pid>br` (10.213.X.1/24). Redis and the emulator listen on the bridge's address, so a worker
reaches them only through its own link; nothing is routed off the machine (no forwarding, no
default route in a namespace). `cut(i)` sets `otb<pid>h<i>` down, which is a pulled cable for the
namespace (its side shows NO-CARRIER; open connections hang, they do not fail), and `restore(i)`
plugs it back in.

Names carry the pid of the process that made them, so two runs never touch each other's, and a run
removes what an earlier run whose process is gone left behind (a crash, a SIGKILL): its
namespaces, the processes still inside them (started by that run), its veths and its bridge.
Needs root and iproute2; `unavailable()` says why not, for a clear skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUBNET_BASE = "10.213"  # 10.213.X.0/24, the first X no interface uses (RFC 1918, never routed off the machine)
NAME = re.compile(r"^otb(\d+)(?:n|h|p)\d+$|^otb(\d+)br$")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; a failure raises with iproute2's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def unavailable() -> str | None:
    """Why this machine cannot run namespaces (not root, no iproute2, no netns support); None if it can."""
    if os.geteuid() != 0:
        return "needs root (ip netns add, veth pairs)"
    try:
        listed = ip("netns", "list", check=False)
    except FileNotFoundError:
        return "iproute2 (`ip`) is not installed"
    if listed.returncode != 0:
        return f"`ip netns` is unavailable: {listed.stderr.strip()}"
    probe = f"otb{os.getpid()}n99"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()  # one pid namespace: the runs that made names are visible here


def _ours(name: str) -> int | None:
    """The pid in one of our names, or None for a name that is not ours."""
    match = NAME.match(name)
    return int(match.group(1) or match.group(2)) if match else None


def _namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    return [line.split(":", 2)[1].strip().split("@")[0] for line in ip("-o", "link", "show").stdout.splitlines()]


def remove_stale() -> list[str]:
    """Remove namespaces, veths and bridges of earlier runs whose process is gone; returns their names."""
    removed = []
    for ns in _namespaces():
        pid = _ours(ns)
        if pid is None or _alive(pid):
            continue
        _kill_inside(ns)
        ip("netns", "del", ns, check=False)
        removed.append(ns)
    for link in _links():
        pid = _ours(link)
        if pid is not None and not _alive(pid) and ip("link", "del", link, check=False).returncode == 0:
            removed.append(link)
    return removed


def _kill_inside(ns: str) -> None:
    """SIGKILL what still runs in one of our namespaces (the workers of the run that made it)."""
    for pid in ip("netns", "pids", ns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _free_subnet() -> str:
    used = set(re.findall(rf"inet {re.escape(SUBNET_BASE)}\.(\d+)\.", ip("-o", "-4", "addr", "show").stdout))
    for x in range(1, 255):
        if str(x) not in used:
            return f"{SUBNET_BASE}.{x}"
    raise RuntimeError(f"no free /24 left in {SUBNET_BASE}.0.0/16")


class Fabric:
    """`count` namespaces on one bridge; a context manager that removes everything it made on exit."""

    def __init__(self, count: int) -> None:
        self.count, self.tag = count, f"otb{os.getpid()}"
        self.subnet = _free_subnet()
        self.host = f"{self.subnet}.1"  # the root namespace's address on the bridge: Redis and the emulator
        self.bridge = f"{self.tag}br"
        self.stale_removed: list[str] = []

    def ns(self, i: int) -> str:
        return f"{self.tag}n{i}"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    def link(self, i: int) -> str:
        """The root-namespace end of namespace i's veth pair: the cable `cut` pulls."""
        return f"{self.tag}h{i}"

    def exec_prefix(self, i: int) -> list[str]:
        """Prefix a command with this to run it inside namespace i (`ip netns exec` execs: same pid)."""
        return ["ip", "netns", "exec", self.ns(i)]

    def __enter__(self) -> "Fabric":
        self.stale_removed = remove_stale()
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.host}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i in range(self.count):
                ip("netns", "add", self.ns(i))
                ip("link", "add", self.link(i), "type", "veth", "peer", "name", f"{self.tag}p{i}", "netns", self.ns(i))
                ip("link", "set", self.link(i), "master", self.bridge)
                ip("link", "set", self.link(i), "up")
                ip("-n", self.ns(i), "addr", "add", f"{self.address(i)}/24", "dev", f"{self.tag}p{i}")
                ip("-n", self.ns(i), "link", "set", f"{self.tag}p{i}", "up")
                ip("-n", self.ns(i), "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def cut(self, i: int) -> None:
        ip("link", "set", self.link(i), "down")

    def restore(self, i: int) -> None:
        ip("link", "set", self.link(i), "up")

    def remove(self) -> None:
        """Everything this fabric made, whatever state it is in (processes still inside are killed)."""
        for i in range(self.count):
            _kill_inside(self.ns(i))
            ip("netns", "del", self.ns(i), check=False)
            ip("link", "del", self.link(i), check=False)  # normally gone with its peer already
        ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        """Names of this fabric still present (empty once removed)."""
        return [n for n in (*_namespaces(), *_links()) if n.startswith(self.tag) and _ours(n) is not None]


@contextlib.contextmanager
def terminated_cleanly() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP end the run with an exception, so every `finally` and ExitStack runs
    (Ctrl-C too when started in the background of a script, where SIGINT comes in ignored)."""
    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":  # `python -m bench.nsfabric`: remove what crashed runs left, and say what
    print("\n".join(remove_stale()) or "nothing stale", file=sys.stderr)
