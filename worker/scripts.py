"""The Lua scripts (`worker/lua/*.lua`), called by name with named arguments.

Each script opens with a comment block that names its KEYS and its ARGV, in order, one per line
(`--   name   what it is`); a last name ending in `...` takes the rest, as a list. That block is the
contract: `Scripts(conn)` registers every script (EVALSHA through redis-py's `register_script`, which
loads a script again when Redis has forgotten it, in pipelines too), and `scripts.commit(results=...,
batch=..., ...)` puts the arguments in the documented order and refuses a name that is missing or
unknown, so no call site counts positions.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

Arg = str | bytes | int | float
Value = Arg | Sequence[Arg]  # a list only for a name that takes the rest
_SECTION = re.compile(r"^-- (KEYS|ARGV):(.*)$")
_ENTRY = re.compile(r"^--\s{3,}([a-z_][a-z0-9_]*)(\.\.\.)?(\s|$)")


@dataclass(frozen=True)
class Contract:
    """A script's text and the names of its KEYS and ARGV, as its opening comment documents them."""

    name: str
    text: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    rest: frozenset[str]  # names that take the rest of their list

    def order(self, named: Mapping[str, Value]) -> tuple[list[str], list[Arg]]:
        """KEYS and ARGV in the documented order; a TypeError names what is missing or unknown."""
        missing = [n for n in (*self.keys, *self.argv) if n not in named]
        unknown = [n for n in named if n not in self.keys and n not in self.argv]
        if missing or unknown:
            raise TypeError(f"script {self.name}: missing {missing}, unknown {unknown}")
        keys = self._flat(self.keys, named)
        if not all(isinstance(key, str) for key in keys):
            raise TypeError(f"script {self.name}: key names are strings, got {keys}")
        return [str(key) for key in keys], self._flat(self.argv, named)

    def _flat(self, names: tuple[str, ...], named: Mapping[str, Value]) -> list[Arg]:
        out: list[Arg] = []
        for name in names:
            value = named[name]
            if isinstance(value, (str, bytes, int, float)):
                out.append(value)
            elif name in self.rest:
                out.extend(value)
            else:
                raise TypeError(f"script {self.name}: {name} takes one value, not a list")
        return out


def parse(name: str, text: str) -> Contract:
    """Read the contract from the script's opening comment block."""
    sections: dict[str, list[str]] = {"KEYS": [], "ARGV": []}
    rest: set[str] = set()
    current: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("--"):
            break  # the header ends at the first line of code
        if section := _SECTION.match(line):
            current = sections[section.group(1)]
        elif entry := _ENTRY.match(line):
            if current is not None:
                current.append(entry.group(1))
                if entry.group(2):
                    rest.add(entry.group(1))
        elif not line.startswith("--  "):
            current = None  # another paragraph ("-- Returns: ...", "--")
    for names in sections.values():
        if any(n in rest for n in names[:-1]):
            raise ValueError(f"script {name}: only the last KEYS or ARGV name may take the rest")
    return Contract(name, text, tuple(sections["KEYS"]), tuple(sections["ARGV"]), frozenset(rest))


@functools.cache
def contracts() -> dict[str, Contract]:
    """Every script in worker/lua, by file name (read once per process)."""
    folder = resources.files("worker").joinpath("lua")
    return {p.name.removesuffix(".lua"): parse(p.name, p.read_text())
            for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".lua")}


class Script:
    """One registered script: call it with its documented names (and `client=` a pipeline to queue it)."""

    def __init__(self, contract: Contract, conn: redis.Redis) -> None:
        self.contract = contract
        self._script = conn.register_script(contract.text)

    def __call__(self, *, client: redis.Redis | None = None, **named: Value) -> Any:
        keys, args = self.contract.order(named)
        return self._script(keys=keys, args=args, client=client)


class Scripts:
    """Every script, registered on one connection."""

    commit: Script
    uncommit: Script
    reopen: Script
    reserve: Script
    release: Script
    count_parked: Script
    same_life: Script
    close: Script
    claim: Script
    lease_refresh: Script
    lease_release: Script
    bucket_take: Script
    bucket_adjust: Script
    cool_down: Script
    take_due: Script

    def __init__(self, conn: redis.Redis) -> None:
        registered = _registered.get(conn)
        if registered is None:  # once per client: registering hashes every script (a Store, a claim make these)
            found, declared = contracts(), set(Scripts.__annotations__)
            if set(found) != declared:
                raise RuntimeError(f"worker/lua has {sorted(found)}, Scripts declares {sorted(declared)}")
            registered = _registered[conn] = {name: Script(contract, conn) for name, contract in found.items()}
        for name, script in registered.items():
            setattr(self, name, script)


_registered: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = weakref.WeakKeyDictionary()
