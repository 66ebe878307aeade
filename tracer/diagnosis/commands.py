"""Fix commands worded so they can be pasted as they are, in the namespace they must run in."""
from __future__ import annotations

import shlex
from typing import Any, Optional, Union

# iproute2 tools that take `-n NAME` themselves; everything else goes through `ip netns exec`.
_NETNS_AWARE = ("ip", "bridge", "tc")


def in_ns(netns: Union[str, Any, None], *argv: str) -> str:
    """`argv` as a shell line run in `netns` (a name, or anything with .name; None/"root" = the root namespace)."""
    name = _name(netns)
    if name in ("", "root"):
        return shlex.join(argv)
    if name.startswith("pid:"):
        # unnamed namespaces have no name for `ip -n`: enter them through a process living there
        return shlex.join(["nsenter", "-t", name[4:], "-n", *argv])
    if argv and argv[0] in _NETNS_AWARE:
        return shlex.join([argv[0], "-n", name, *argv[1:]])
    return shlex.join(["ip", "netns", "exec", name, *argv])


def _name(netns: Union[str, Any, None]) -> str:
    if netns is None:
        return ""
    if isinstance(netns, str):
        return netns
    return str(getattr(netns, "name", "") or "")


def ns_phrase(netns: Optional[str]) -> str:
    """' (namespace X)' for a named or unnamed namespace, '' for the root namespace."""
    return "" if netns in (None, "", "root") else f" (namespace {netns})"
