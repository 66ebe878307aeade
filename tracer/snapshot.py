"""The configuration snapshot: devices, bridges, ports, FDB, br_netfilter and nftables per namespace.

Read through rtnetlink (pyroute2) and /proc inside each namespace. A Snapshot serializes to
JSON and back unchanged, so `diagnose` can be tested on recordings of real namespaces.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from pyroute2 import IPRoute

from .errors import UsageError
from .netns import Netns, entered, iproute, list_netns
from .records import Device
from .taps import TapHolder, find_tap_holders

FORMAT = 1

STP_STATES = ("disabled", "listening", "learning", "forwarding", "blocking")
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFF_TAP = 0x2

# ndm_state / ndm_flags of bridge FDB entries (include/uapi/linux/neighbour.h)
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NTF_EXT_LEARNED = 0x10
NTF_OFFLOADED = 0x20
NTF_STICKY = 0x40
NTF_EXT_LOCKED = 0x2  # in NDA_FLAGS_EXT

BRIDGE_SYSCTLS = "/proc/sys/net/bridge"
NFT_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class BridgePort:
    """A bridge port with the settings that decide whether frames may leave or enter by it."""

    ifindex: int
    name: str
    kind: str
    mac: str
    mtu: int
    admin_up: bool
    oper_state: str  # IFLA_OPERSTATE lower-cased: up, down, lowerlayerdown, unknown, ...
    carrier: bool
    is_tap: bool
    stp_state: str  # one of STP_STATES; only "forwarding" passes frames
    learning: bool
    flood: bool  # unicast flood: frames for unknown MACs are copied here
    mcast_flood: bool
    bcast_flood: bool
    isolated: bool  # isolated ports only talk to non-isolated ones
    hairpin: bool  # frames may leave by the port they came in on
    neigh_suppress: Optional[bool] = None  # None when the kernel does not report it
    locked: Optional[bool] = None  # 802.1X: frames from MACs without an FDB entry are dropped
    proxy_arp: Optional[bool] = None
    cost: int = 0
    priority: int = 0


@dataclass(frozen=True)
class Bridge:
    """A Linux bridge, its options and its ports."""

    ifindex: int
    name: str
    mac: str
    mtu: int
    admin_up: bool
    oper_state: str
    carrier: bool
    stp: bool  # spanning tree on (kernel or user space)
    stp_mode: str  # "off", "kernel", "user"
    vlan_filtering: bool
    ageing_time_s: float  # how long learned entries live (0: never learned/kept)
    forward_delay_s: float
    # per-bridge overrides: when on, br_netfilter runs here whatever the sysctls say
    nf_call_iptables: bool = False
    nf_call_ip6tables: bool = False
    nf_call_arptables: bool = False
    ports: tuple[BridgePort, ...] = ()

    def port(self, name: str) -> Optional[BridgePort]:
        """The port called `name`, if it is a port of this bridge."""
        return next((p for p in self.ports if p.name == name), None)


@dataclass(frozen=True)
class FdbEntry:
    """One forwarding-database entry as `bridge fdb show` lists it."""

    mac: str
    ifindex: int
    dev: str  # the port (or device, for self entries) the entry points to
    master: str  # the bridge whose FDB holds it; "" for entries of a device's own table
    vlan: Optional[int]
    state: str  # "local" (permanent: the bridge's own address), "static" or "dynamic" (learned)
    on_self: bool = False  # NTF_SELF: the device's own table (its addresses, a vxlan's remotes)
    sticky: bool = False  # never moves to another port, even if the MAC shows up there
    extern_learn: bool = False  # learned by a driver/controller, not by the bridge
    offloaded: bool = False
    locked: bool = False  # learned on a locked port: frames to it are not forwarded
    dst: str = ""  # remote address of a tunnel (vxlan) entry

    @property
    def permanent(self) -> bool:
        """Local/permanent: frames to this MAC go up to the bridge itself."""
        return self.state == "local"

    @property
    def learned(self) -> bool:
        """Learned from traffic (dynamic), so it ages out."""
        return self.state == "dynamic"


@dataclass(frozen=True)
class BrNetfilter:
    """The br_netfilter sysctls of one namespace: do bridged frames cross iptables/ip6tables/arptables."""

    call_iptables: bool
    call_ip6tables: bool
    call_arptables: bool
    filter_vlan_tagged: bool = False
    filter_pppoe_tagged: bool = False
    pass_vlan_input_dev: bool = False


@dataclass(frozen=True)
class Nftables:
    """The namespace's netfilter ruleset as `nft -j list ruleset` prints it (iptables-nft rules included)."""

    status: str  # "ok", "not-installed", "error"
    detail: str = ""  # why, for "error"
    ruleset: Any = None  # the parsed "nftables" list, [] when there is none

    def tables(self) -> list[dict]:
        """The table objects of the ruleset (items of another shape are not tables)."""
        return self._objects("table")

    def rules(self) -> list[dict]:
        """The rule objects of the ruleset."""
        return self._objects("rule")

    def drop_rules(self) -> list[dict]:
        """Rules whose verdict drops or rejects frames."""
        return [r for r in self.rules() if isinstance(r.get("expr"), list)
                and any(isinstance(e, dict) and ("drop" in e or "reject" in e) for e in r["expr"])]

    def _objects(self, kind: str) -> list[dict]:
        return [item[kind] for item in self.ruleset or ()
                if isinstance(item, dict) and isinstance(item.get(kind), dict)]


@dataclass(frozen=True)
class NetnsSnapshot:
    """Everything one namespace says about bridging."""

    netns: Netns
    devices: tuple[Device, ...]
    bridges: tuple[Bridge, ...]
    fdb: tuple[FdbEntry, ...]
    # None when br_netfilter isn't loaded (no net.bridge sysctls in this namespace)
    br_netfilter: Optional[BrNetfilter]
    nftables: Nftables

    @property
    def name(self) -> str:
        """The namespace's name."""
        return self.netns.name

    def bridge(self, name: str) -> Optional[Bridge]:
        """The bridge called `name`."""
        return next((b for b in self.bridges if b.name == name), None)

    def port(self, name: str) -> Optional[tuple[Bridge, BridgePort]]:
        """The bridge port called `name` and its bridge."""
        for bridge in self.bridges:
            port = bridge.port(name)
            if port is not None:
                return bridge, port
        return None

    def device(self, name_or_ifindex: Union[str, int]) -> Optional[Device]:
        """A device by name or ifindex."""
        key = "ifindex" if isinstance(name_or_ifindex, int) else "name"
        return next((d for d in self.devices if getattr(d, key) == name_or_ifindex), None)

    def fdb_of(self, bridge: str, mac: Optional[str] = None, vlan: Optional[int] = None) -> list[FdbEntry]:
        """Entries of `bridge`'s FDB, optionally only those for `mac` (and `vlan`)."""
        mac = normalize_mac(mac) if mac else None
        return [
            e
            for e in self.fdb
            if e.master == bridge and (mac is None or e.mac == mac) and (vlan is None or e.vlan == vlan)
        ]

    def br_netfilter_note(self) -> str:
        """One line on whether bridged frames cross iptables here."""
        nf = self.br_netfilter
        if nf is None:
            return "br_netfilter is not loaded: bridged frames do not cross iptables"
        on = [n for n, v in (("iptables", nf.call_iptables), ("ip6tables", nf.call_ip6tables),
                             ("arptables", nf.call_arptables)) if v]
        if not on:
            return "br_netfilter is loaded but bridged frames do not cross iptables/ip6tables/arptables"
        return "bridged frames cross " + ", ".join(on)


@dataclass(frozen=True)
class FdbHit:
    """An FDB entry found by MAC, with the namespace it lives in."""

    netns: str
    entry: FdbEntry


@dataclass(frozen=True)
class MacLocation:
    """Where a MAC address lives: FDB entries naming it and devices carrying it."""

    mac: str
    fdb: tuple[FdbHit, ...]
    devices: tuple[Device, ...]


@dataclass(frozen=True)
class PortRef:
    """A bridge port found by name, with its bridge and namespace."""

    netns: str
    bridge: Bridge
    port: BridgePort


@dataclass(frozen=True)
class Snapshot:
    """The whole configuration model `diagnose` reasons on."""

    taken_at: float  # Unix time
    kernel: str  # uname release
    namespaces: tuple[NetnsSnapshot, ...]
    taps: tuple[TapHolder, ...] = ()
    format: int = FORMAT

    def netns(self, key: Union[str, int]) -> NetnsSnapshot:
        """A namespace by name or inode."""
        for ns in self.namespaces:
            if ns.netns.name == key or ns.netns.inode == key:
                return ns
        raise UsageError(f"unknown network namespace '{key}' (see `ip netns list`)")

    def devices(self) -> list[Device]:
        """All devices of all namespaces."""
        return [d for ns in self.namespaces for d in ns.devices]

    def device(self, netns: int, ifindex: int) -> Optional[Device]:
        """The device an event names by (netns inode, ifindex)."""
        for ns in self.namespaces:
            if ns.netns.inode == netns:
                return ns.device(ifindex)
        return None

    def find_mac(self, mac: str) -> MacLocation:
        """FDB entries for `mac` in every bridge and the devices whose own address it is."""
        mac = normalize_mac(mac)
        hits = tuple(FdbHit(ns.name, e) for ns in self.namespaces for e in ns.fdb if e.mac == mac)
        devices = tuple(d for d in self.devices() if d.mac == mac)
        return MacLocation(mac, hits, devices)

    def find_port(self, name: str, netns: Optional[str] = None) -> list[PortRef]:
        """Bridge ports called `name` (names repeat across namespaces: pass `netns` to pick one)."""
        refs = []
        for ns in self.namespaces:
            if netns is not None and ns.name != netns:
                continue
            found = ns.port(name)
            if found is not None:
                refs.append(PortRef(ns.name, found[0], found[1]))
        return refs

    def bridges(self, netns: Optional[str] = None) -> list[tuple[str, Bridge]]:
        """(namespace name, bridge) pairs, of one namespace or all."""
        return [(ns.name, b) for ns in self.namespaces if netns in (None, ns.name) for b in ns.bridges]

    def holders(self, dev: Device) -> list[TapHolder]:
        """The processes holding tap `dev` open."""
        return [t for t in self.taps if t.iff == dev.name and t.tap_netns == dev.netns]

    def to_json(self) -> str:
        """JSON text that Snapshot.from_json turns back into an equal Snapshot."""
        return json.dumps(_encode(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        """Rebuild a Snapshot from Snapshot.to_json's text."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise UsageError(f"a snapshot is JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise UsageError(f"snapshot format {found!r} is not {FORMAT}")
        try:
            return _decode(cls, data)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UsageError(f"not a snapshot of format {FORMAT}: {type(err).__name__} {err}") from None


def normalize_mac(mac: str) -> str:
    """aa:bb:cc:dd:ee:ff, whatever separators or case the user typed."""
    digits = "".join(c for c in mac.lower() if c in "0123456789abcdef")
    if len(digits) != 12:
        raise UsageError(f"'{mac}' is not a MAC address")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


# ------------------------------------------------------------------ JSON round trip


def _encode(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_encode(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    return obj


def _decode(tp: Any, data: Any) -> Any:
    # driven by the dataclasses' type hints, so the model stays the single schema
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = get_type_hints(tp)
        cls: Any = tp
        return cls(**{f.name: _decode(hints[f.name], data[f.name]) for f in dataclasses.fields(tp) if f.name in data})
    origin = get_origin(tp)
    if origin is Union:
        if data is None:
            return None
        return _decode(next(a for a in get_args(tp) if a is not type(None)), data)
    if origin is tuple:
        return tuple(_decode(get_args(tp)[0], x) for x in data)
    if origin is list:
        return [_decode(get_args(tp)[0], x) for x in data]
    return data


# ------------------------------------------------------------------ netlink reading


def _nested(msg: Any, *names: str) -> Any:
    for name in names:
        # None: absent; a string: an attribute pyroute2 could not decode (a link kind it doesn't
        # know, data before its kind) and hands back as hex. Either way, nothing nested to read.
        if msg is None or not hasattr(msg, "get_attr"):
            return None
        msg = msg.get_attr(name)
    return msg


def _oper_up(msg: Any) -> bool:
    state = msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"
    # like the kernel's netif_oper_up: "unknown" counts when the link is running (tun, lo)
    return state == "UP" or (state == "UNKNOWN" and bool(msg["flags"] & IFF_LOWER_UP))


def _is_tap(msg: Any) -> bool:
    return _nested(msg, "IFLA_LINKINFO", "IFLA_INFO_KIND") == "tun" and (
        _nested(msg, "IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_TUN_TYPE") == IFF_TAP
    )


def _device(ns: Netns, msg: Any, names: dict[int, str]) -> Device:
    master = msg.get_attr("IFLA_MASTER")
    return Device(
        netns=ns.inode,
        netns_name=ns.name,
        ifindex=msg["index"],
        name=msg.get_attr("IFLA_IFNAME") or "",
        kind=_nested(msg, "IFLA_LINKINFO", "IFLA_INFO_KIND") or "",
        mac=msg.get_attr("IFLA_ADDRESS") or "",
        mtu=msg.get_attr("IFLA_MTU") or 0,
        master=master,
        master_name=names.get(master, "") if master else "",
        is_tap=_is_tap(msg),
        oper_up=_oper_up(msg),
    )


def _devices(ns: Netns, links: Iterable[Any]) -> list[Device]:
    links = list(links)
    names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in links}
    return [_device(ns, m, names) for m in links]


def collect_devices(namespaces: Iterable[Netns]) -> list[Device]:
    """Every device of the given namespaces (one link dump each)."""
    devices: list[Device] = []
    for ns in namespaces:
        try:
            with iproute(ns) as ipr:
                devices.extend(_devices(ns, ipr.get_links()))
        except OSError as err:
            # The namespace went away since it was listed: its name is gone (ENOENT), or `ip netns
            # del` unmounted it between our open and setns, leaving the plain file under the
            # mount point (EINVAL; the soak's VM churn hit it: follow died at start, docs/soak.md).
            if err.errno in (errno.ENOENT, errno.EINVAL):
                continue
            raise
    return devices


def machine_devices(include_unnamed: bool = True) -> tuple[dict[int, str], list[Device]]:
    """({netns inode: name}, devices) of every namespace on the machine: a DeviceTable loader."""
    spaces = list_netns(include_unnamed)
    return {ns.inode: ns.name for ns in spaces}, collect_devices(spaces)


def lookup_device(ns: Netns, ifindex: int) -> Optional[Device]:
    """One device by ifindex: cheaper than collect_devices when an event names a new one."""
    if not os.path.exists(ns.path):
        return None  # the namespace (or the process holding it) is gone
    with iproute(ns) as ipr:
        try:
            (msg,) = ipr.link("get", index=ifindex)
        except Exception as err:  # pyroute2's NetlinkError: ENODEV when it is gone already
            if getattr(err, "code", None) == 19:
                return None
            raise
        master = msg.get_attr("IFLA_MASTER")
        names = {}
        if master:
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.link("get", index=master)}
        return _device(ns, msg, names)


def _port(msg: Any) -> BridgePort:
    data = _nested(msg, "IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA")

    def flag(name: str, default: Optional[bool] = False) -> Optional[bool]:
        value = _nested(data, name)
        return default if value is None else bool(value)

    state = _nested(data, "IFLA_BRPORT_STATE")
    return BridgePort(
        ifindex=msg["index"],
        name=msg.get_attr("IFLA_IFNAME") or "",
        kind=_nested(msg, "IFLA_LINKINFO", "IFLA_INFO_KIND") or "",
        mac=msg.get_attr("IFLA_ADDRESS") or "",
        mtu=msg.get_attr("IFLA_MTU") or 0,
        admin_up=bool(msg["flags"] & IFF_UP),
        oper_state=(msg.get_attr("IFLA_OPERSTATE") or "unknown").lower(),
        carrier=bool(msg.get_attr("IFLA_CARRIER")),
        is_tap=_is_tap(msg),
        stp_state=STP_STATES[state] if state is not None and state < len(STP_STATES) else f"state-{state}",
        learning=bool(flag("IFLA_BRPORT_LEARNING", True)),
        flood=bool(flag("IFLA_BRPORT_UNICAST_FLOOD", True)),
        mcast_flood=bool(flag("IFLA_BRPORT_MCAST_FLOOD", True)),
        bcast_flood=bool(flag("IFLA_BRPORT_BCAST_FLOOD", True)),
        isolated=bool(flag("IFLA_BRPORT_ISOLATED")),
        hairpin=bool(flag("IFLA_BRPORT_MODE")),
        neigh_suppress=flag("IFLA_BRPORT_NEIGH_SUPPRESS", None),
        locked=flag("IFLA_BRPORT_LOCKED", None),
        proxy_arp=flag("IFLA_BRPORT_PROXYARP", None),
        cost=_nested(data, "IFLA_BRPORT_COST") or 0,
        priority=_nested(data, "IFLA_BRPORT_PRIORITY") or 0,
    )


def _bridge(msg: Any, ports: list[BridgePort]) -> Bridge:
    data = _nested(msg, "IFLA_LINKINFO", "IFLA_INFO_DATA")

    def attr(name: str) -> int:
        return _nested(data, name) or 0

    stp = attr("IFLA_BR_STP_STATE")
    return Bridge(
        ifindex=msg["index"],
        name=msg.get_attr("IFLA_IFNAME") or "",
        mac=msg.get_attr("IFLA_ADDRESS") or "",
        mtu=msg.get_attr("IFLA_MTU") or 0,
        admin_up=bool(msg["flags"] & IFF_UP),
        oper_state=(msg.get_attr("IFLA_OPERSTATE") or "unknown").lower(),
        carrier=bool(msg.get_attr("IFLA_CARRIER")),
        stp=stp != 0,
        stp_mode={0: "off", 1: "kernel", 2: "user"}.get(stp, f"mode-{stp}"),
        vlan_filtering=bool(attr("IFLA_BR_VLAN_FILTERING")),
        # the kernel reports these in centiseconds (clock_t at USER_HZ=100)
        ageing_time_s=attr("IFLA_BR_AGEING_TIME") / 100.0,
        forward_delay_s=attr("IFLA_BR_FORWARD_DELAY") / 100.0,
        nf_call_iptables=bool(attr("IFLA_BR_NF_CALL_IPTABLES")),
        nf_call_ip6tables=bool(attr("IFLA_BR_NF_CALL_IP6TABLES")),
        nf_call_arptables=bool(attr("IFLA_BR_NF_CALL_ARPTABLES")),
        ports=tuple(sorted(ports, key=lambda p: p.ifindex)),
    )


def _bridges(links: list[Any]) -> list[Bridge]:
    ports: dict[int, list[BridgePort]] = {}
    for msg in links:
        if _nested(msg, "IFLA_LINKINFO", "IFLA_INFO_SLAVE_KIND") == "bridge":
            ports.setdefault(msg.get_attr("IFLA_MASTER"), []).append(_port(msg))
    return [
        _bridge(msg, ports.get(msg["index"], []))
        for msg in links
        if _nested(msg, "IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge"
    ]


def _fdb_entry(msg: Any, names: dict[int, str]) -> FdbEntry:
    state, flags = msg["state"], msg["flags"]
    master = msg.get_attr("NDA_MASTER")
    ext = msg.get_attr("NDA_FLAGS_EXT") or 0
    if state & NUD_PERMANENT:
        kind = "local"
    elif state & NUD_NOARP:
        kind = "static"
    else:
        kind = "dynamic"
    return FdbEntry(
        mac=(msg.get_attr("NDA_LLADDR") or "").lower(),
        ifindex=msg["ifindex"],
        dev=names.get(msg["ifindex"], ""),
        master=names.get(master, "") if master else "",
        vlan=msg.get_attr("NDA_VLAN"),
        state=kind,
        on_self=bool(flags & NTF_SELF),
        sticky=bool(flags & NTF_STICKY),
        extern_learn=bool(flags & NTF_EXT_LEARNED),
        offloaded=bool(flags & NTF_OFFLOADED),
        locked=bool(ext & NTF_EXT_LOCKED),
        dst=str(msg.get_attr("NDA_DST") or ""),
    )


def _fdb(ipr: IPRoute, names: dict[int, str]) -> list[FdbEntry]:
    # RTM_GETNEIGH with AF_BRIDGE: the bridge FDBs plus every device's own address table
    return [_fdb_entry(m, names) for m in ipr.get_neighbours(family=socket.AF_BRIDGE)]


def _br_netfilter() -> Optional[BrNetfilter]:
    # /proc/sys/net resolves against the calling thread's namespace: call inside entered()
    if not os.path.isdir(BRIDGE_SYSCTLS):
        return None

    def read(name: str) -> bool:
        try:
            with open(f"{BRIDGE_SYSCTLS}/{name}") as f:
                return f.read().strip() not in ("", "0")
        except OSError:
            return False

    return BrNetfilter(
        call_iptables=read("bridge-nf-call-iptables"),
        call_ip6tables=read("bridge-nf-call-ip6tables"),
        call_arptables=read("bridge-nf-call-arptables"),
        filter_vlan_tagged=read("bridge-nf-filter-vlan-tagged"),
        filter_pppoe_tagged=read("bridge-nf-filter-pppoe-tagged"),
        pass_vlan_input_dev=read("bridge-nf-pass-vlan-input-dev"),
    )


def _nftables() -> Nftables:
    # nft inherits the calling thread's namespace, like `ip netns exec` without the /sys remount
    nft = shutil.which("nft")
    if nft is None:
        return Nftables("not-installed", "nft is not installed", [])
    try:
        run = subprocess.run(
            [nft, "-j", "list", "ruleset"], capture_output=True, text=True, timeout=NFT_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return Nftables("error", str(err), [])
    if run.returncode != 0:
        return Nftables("error", run.stderr.strip() or f"nft exited with {run.returncode}", [])
    return parse_nft_json(run.stdout)


def parse_nft_json(stdout: str) -> Nftables:
    """`nft -j list ruleset`'s output: the "nftables" list, or an error saying why it is none."""
    try:
        data = json.loads(stdout or "{}")
    except ValueError as err:
        return Nftables("error", f"nft printed no JSON: {err}", [])
    items = data.get("nftables", []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        return Nftables("error", "nft printed JSON without an \"nftables\" list", [])
    return Nftables("ok", "", items)


def collect_netns(ns: Netns) -> NetnsSnapshot:
    """The bridging configuration of one namespace."""
    with entered(ns):
        ipr = IPRoute()
        try:
            links = list(ipr.get_links())
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in links}
            fdb = _fdb(ipr, names)
        finally:
            ipr.close()
        br_nf = _br_netfilter()
        nft = _nftables()
    return NetnsSnapshot(
        netns=ns,
        devices=tuple(_devices(ns, links)),
        bridges=tuple(_bridges(links)),
        fdb=tuple(fdb),
        br_netfilter=br_nf,
        nftables=nft,
    )


def collect_snapshot(
    namespaces: Iterable[Netns], *, taps: bool = True, proc_root: str = "/proc"
) -> Snapshot:
    """The full model of the given namespaces, with the processes holding their taps."""
    per_ns = []
    for ns in namespaces:
        try:
            per_ns.append(collect_netns(ns))
        except FileNotFoundError:
            continue  # the namespace went away since it was listed
    inodes = {ns.netns.inode for ns in per_ns}
    holders = [t for t in find_tap_holders(proc_root) if t.tap_netns in inodes] if taps else []
    return Snapshot(
        taken_at=time.time(),
        kernel=os.uname().release,
        namespaces=tuple(per_ns),
        taps=tuple(holders),
    )
