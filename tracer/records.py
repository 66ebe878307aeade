"""Typed records passed between pipeline stages.

kernel hooks -> Event -> (stitch) -> Journey -> sinks. Devices come from the netlink
snapshot and name what an Event only identifies by (netns inode, ifindex).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # tracer.stitch builds on these records
    from .stitch import JourneyShape


class Hook(enum.IntEnum):
    """Which kernel moment an event marks. Values are shared with bpf/tapttrace.h."""

    RECEIVE = 1  # net:netif_receive_skb: a device hands the frame to the stack/bridge
    QUEUE = 2  # net:net_dev_queue: the frame is queued for transmission on a device
    DROP = 3  # skb:kfree_skb: the frame is freed as a drop, with a reason
    CONSUME = 4  # skb:consume_skb: the frame is freed after normal use
    FLOOD = 5  # br_flood() (kprobe/fentry, where the kernel has them): the bridge decides to flood
    # Inside the bridge and the tap (fentry, else kprobe; features.BRIDGE_FUNCS):
    FORWARD = 6  # br_forward(): the bridge sends the frame to the one port its FDB names
    FLOOD_PORT = 7  # maybe_deliver(): a flood offers the frame to one port
    PASS_UP = 8  # br_pass_frame_up(): the bridge hands the frame to the host's stack
    EGRESS = 9  # br_dev_queue_push_xmit(): out of a port, if the frame fits its MTU
    EGRESS_NF = 10  # br_nf_dev_queue_xmit(): the same through br_netfilter
    TAP_XMIT = 11  # tun_net_xmit(): the tap takes the frame for its queue
    NF_CHAIN = 12  # nft_do_chain() returns (fexit): an nf_tables base chain's verdict on the frame


# The kernel function each function hook marks (the hop's `location`).
HOOK_FUNCTIONS = {Hook.FLOOD: "br_flood", Hook.FORWARD: "br_forward", Hook.FLOOD_PORT: "maybe_deliver",
                  Hook.PASS_UP: "br_pass_frame_up", Hook.EGRESS: "br_dev_queue_push_xmit",
                  Hook.EGRESS_NF: "br_nf_dev_queue_xmit", Hook.TAP_XMIT: "tun_net_xmit",
                  Hook.NF_CHAIN: "nft_do_chain"}

# The reason word of FORWARD / FLOOD_PORT (bpf/tapttrace.h TT_PORT_*): the port's facts.
PORT_STATE_MASK = 0x0F
PORT_INGRESS = 1 << 4
PORT_LOCAL_RCV = 1 << 5
PORT_KNOWN = 1 << 7
PORT_FLAGS_SHIFT = 8
BR_HAIRPIN_MODE = 1 << 0  # of the port's BR_* flags (include/linux/if_bridge.h, the same on every kernel)
# The reason word of EGRESS / EGRESS_NF (bpf/tapttrace.h TT_EGRESS_*): what decides whether it fits.
EGRESS_MTU_MASK = 0x7FFFFFFF
EGRESS_GSO = 1 << 31
# The reason word of TAP_XMIT (bpf/tapttrace.h TT_TAP_*): the queue the frame is for.
TAP_SIZE_MASK = 0xFFFFFF
TAP_NO_READER = 1 << 29
TAP_FULL = 1 << 30
TAP_KNOWN = 1 << 31
# The reason word of NF_CHAIN (bpf/tapttrace.h TT_NF_*): the verdict, the hook, its family.
NF_VERDICT_MASK = 0xFF
NF_HOOK_SHIFT = 8
NF_PF_SHIFT = 16
NF_KNOWN = 1 << 31
NF_VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop"}
# Families as nft names them (include/uapi/linux/netfilter.h NFPROTO_*), and each one's hooks.
NF_FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
NF_HOOKS = {"bridge": ("prerouting", "input", "forward", "output", "postrouting"),
            "arp": ("input", "output", "forward"), "netdev": ("ingress", "egress"),
            "ip": ("prerouting", "input", "forward", "output", "postrouting", "ingress")}
STP_STATES = {0: "disabled", 1: "listening", 2: "learning", 3: "forwarding", 4: "blocking"}


@dataclass(frozen=True)
class Event:
    """One kernel event about one skb, decoded from the ring buffer."""

    ts_ns: int  # bpf_ktime_get_ns(), CLOCK_MONOTONIC
    skb: int  # sk_buff address: identity while the skb lives
    hook: Hook
    netns: int  # network namespace inode number (as in /proc/PID/ns/net)
    ifindex: int  # skb->dev's ifindex, 0 when the skb has no device
    ifname: str  # skb->dev's name at event time ("" when none)
    frame_len: int  # whole frame length from the MAC header (bytes)
    data: bytes  # the frame's first bytes from the MAC header (up to the snap length)
    reason: int = 0  # kfree_skb drop reason (0 when the kernel has none)
    location: int = 0  # kfree_skb/consume_skb caller address (0 when unknown)
    cpu: int = 0


@dataclass(frozen=True)
class DeviceKey:
    netns: int
    ifindex: int


@dataclass(frozen=True)
class Device:
    """A network device as netlink describes it, in the namespace it lives in."""

    netns: int  # namespace inode
    netns_name: str  # "root", a name under /run/netns, or "pid:<pid>"
    ifindex: int
    name: str
    kind: str = ""  # IFLA_INFO_KIND: "bridge", "tun", "veth", "vxlan", "" for physical
    mac: str = ""
    mtu: int = 0
    master: Optional[int] = None  # ifindex of the bridge this device is a port of
    master_name: str = ""
    is_tap: bool = False  # tun/tap device in tap mode (what qemu's tap backend uses)
    oper_up: bool = True

    @property
    def key(self) -> DeviceKey:
        return DeviceKey(self.netns, self.ifindex)

    @property
    def is_bridge(self) -> bool:
        return self.kind == "bridge"


@dataclass(frozen=True)
class Hop:
    """One place a copy of the frame was seen, in the words the user reads."""

    ts_ns: int
    copy: int  # which copy of the frame (0 = the skb that arrived first; clones count up)
    event: str  # received | passed-up | sent | read | consumed | dropped
    netns: str  # namespace name
    dev: str  # device name ("" when the skb had none)
    role: str = ""  # "port of br0", "bridge", "tap", "" ...
    reason: str = ""  # drop reason name, for event == "dropped"
    location: str = ""  # symbolized kernel function, for dropped/consumed/read
    reader: str = ""  # for event == "read": the process holding the tap open, when known
    # Hops from inside the bridge and the tap (fentry/kprobe) say what was decided there:
    # "refused: port listening", "too big: 1028 > MTU 576", "unknown unicast" …
    detail: str = ""
    # What such a hop found wrong, as a code for rules and colours (the words are `detail`'s):
    # "port-listening" (or another STP state), "hairpin" (refused back out of its way in), "too-big",
    # "queue-full" and "no-reader" (the tap's queue, at tun_net_xmit), "netfilter-drop" (an
    # nf_tables chain's verdict, at nft_do_chain).
    fault: str = ""


@dataclass
class Copy:
    """One skb carrying the frame: the original or a clone made on flood."""

    index: int
    outcome: str = "in-flight"  # delivered|forwarded|local|dropped|queued|in-flight
    dev: str = ""  # where the outcome happened (the tap it was read from, the port it left by…)
    netns: str = ""
    reason: str = ""
    location: str = ""
    port: str = ""  # the bridge port this copy was sent out of, if any


class Verdict(str, enum.Enum):
    DELIVERED = "delivered"
    FORWARDED = "forwarded"
    FLOODED = "flooded"
    LOCAL = "local"
    DROPPED = "dropped"
    QUEUED = "queued"


@dataclass
class Journey:
    """Everything one frame went through, from first sighting to its end."""

    id: int
    first_ns: int
    last_ns: int
    src_mac: str
    dst_mac: str
    ethertype: int
    summary: str
    frame_len: int
    frame: bytes  # the frame's captured bytes (for pcap)
    hops: list[Hop] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    verdict: str = ""
    reason: str = ""  # for dropped: the drop reason name
    location: str = ""  # for dropped: the kernel function
    drop_dev: str = ""
    flood_ports: list[str] = field(default_factory=list)  # ports that got a copy
    flood_missed: list[str] = field(default_factory=list)  # ports of the bridge that did not
    bridge: str = ""  # the bridge it crossed, if any
    # The bridge's FDB decision for the destination, where the bridge's own hops show it:
    # "local" (its own address: passed up), "miss" (flooded), a port's name, "" (not seen).
    fdb: str = ""
    fdb_local: str = ""  # for fdb == "local": the device whose own address it is (a tap carrying the guest's MAC)
    toward_guest: bool = False  # addressed to the watched MAC (or asking for its IP)
    note: str = ""  # e.g. "never reached vnet0"
    vm: str = ""  # the watched guest's VM name (libvirt domain, or the tap holder's), when known
    # Journeys the kernel stitched that took the same path share one template (stitch.JourneyShape):
    # sinks may cache their rendering of what doesn't change from one such journey to the next.
    shape: Optional[JourneyShape] = field(default=None, repr=False, compare=False)
