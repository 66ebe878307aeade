"""A stand-in guest: holds a tap fd exactly as qemu's tap backend does and answers ARP and ping.

Run inside the hypervisor namespace: `python -m tracer.lab.guest --tap vnet0 --mac M --ip A`.
Prints `ready` once the tap is open and its bridge port forwards (its gratuitous ARP sent), so the
lab knows frames will be read from then on and the bridge knows the guest's MAC.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import ipaddress
import os
import select
import signal
import struct
import sys
import time
from typing import Optional

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT = 135, 136
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed
# qemu reads a bounded number of frames per main-loop turn before it writes anything back;
# a batch keeps the guest that fast under floods without starving the control pipe.
BATCH = 64


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def open_tap(name: str) -> int:
    """The fd qemu's tap backend holds: TUNSETIFF(IFF_TAP | IFF_NO_PI) on an existing tap."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


# Bridge port states (include/uapi/linux/if_bridge.h): BR_STATE_DISABLED 0 … BR_STATE_FORWARDING 3.
BR_STATE_DISABLED = 0
IFF_UP = 0x1
PORT_WAIT_S = 10.0  # a bound, not a measurement: under qemu TCG the carrier event can take ~1 s


def wait_for_port(name: str, sys_net: str = "/sys/class/net") -> None:
    """Return once the bridge would take a frame from the tap: opening it turns the carrier on, but
    the bridge hears of that from linkwatch, later (up to a second after the previous link event,
    more under qemu TCG); until then the port is disabled and drops what the guest writes,
    unlearned. A real VM boots for seconds before its first frame; the stand-in writes at once, so
    it waits. A tap that is no bridge port, is set down, or whose port a test has set to another
    state (blocking, learning) is not waited for."""
    base = f"{sys_net}/{name}"
    deadline = time.monotonic() + PORT_WAIT_S
    while time.monotonic() < deadline:
        try:
            with open(f"{base}/flags") as f:
                if not int(f.read(), 16) & IFF_UP:
                    return
            with open(f"{base}/brport/state") as f:
                if int(f.read()) != BR_STATE_DISABLED:
                    return
        except (OSError, ValueError):
            return  # not a bridge port (or gone): nothing to wait for
        time.sleep(0.002)


def link_local(mac: str) -> str:
    """The guest's fe80:: address, EUI-64 from its MAC as a guest kernel derives it."""
    b = bytearray(bytes.fromhex(mac.replace(":", "")))
    b[0] ^= 0x02
    eui = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\0" * 6 + eui))


def arp_frame(op: int, src_mac: bytes, src_ip: bytes, dst_mac: bytes, dst_ip: bytes, eth_dst: bytes) -> bytes:
    return (eth_dst + src_mac + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op) + src_mac + src_ip + dst_mac + dst_ip)


def icmp6_packet(src: bytes, dst: bytes, message: bytes, hop_limit: int) -> bytes:
    """IPv6 header + ICMPv6 message whose checksum field (bytes 2-3) is filled in here."""
    pseudo = src + dst + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    message = message[:2] + struct.pack("!H", checksum(pseudo + message[:2] + b"\0\0" + message[4:])) + message[4:]
    return struct.pack("!IHBB", 0x60000000, len(message), IPPROTO_ICMPV6, hop_limit) + src + dst + message


class Guest:
    """Answers what a minimal guest OS answers: ARP for its address and ICMP echo (and ND/echo over IPv6)."""

    def __init__(self, mac: str, ip: str, answer_arp: bool = True, ipv6: bool = False):
        self.mac = bytes.fromhex(mac.replace(":", ""))
        self.ip = ipaddress.IPv4Address(ip).packed
        self.ip6 = ipaddress.IPv6Address(link_local(mac)).packed if ipv6 else None
        self.answer_arp = answer_arp
        self.answered = 0

    def announce(self) -> bytes:
        """A gratuitous ARP, as a booting guest sends: the bridge learns the guest MAC on its port."""
        return arp_frame(1, self.mac, self.ip, b"\0" * 6, self.ip, b"\xff" * 6)

    def reply(self, frame: bytes) -> Optional[bytes]:
        if len(frame) < 14 or (frame[0:6] != self.mac and not frame[0] & 1):
            return None
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        answer = None
        if ethertype == ETH_P_ARP:
            answer = self._arp(frame)
        elif ethertype == ETH_P_IP:
            answer = self._icmp4(frame)
        elif ethertype == ETH_P_IPV6 and self.ip6 is not None:
            answer = self._icmp6(frame)
        self.answered += answer is not None
        return answer

    def _arp(self, frame: bytes) -> Optional[bytes]:
        if not self.answer_arp or len(frame) < 42:
            return None
        op = struct.unpack_from("!H", frame, 20)[0]
        if op == 1 and frame[38:42] == self.ip:
            return arp_frame(2, self.mac, self.ip, frame[22:28], frame[28:32], frame[6:12])
        return None

    def _icmp4(self, frame: bytes) -> Optional[bytes]:
        if len(frame) < 34 or frame[0:6] != self.mac:
            return None
        ihl = (frame[14] & 0x0F) * 4
        ip = frame[14:14 + ihl]
        if len(ip) < 20 or ip[9] != 1 or ip[16:20] != self.ip:
            return None
        total = struct.unpack_from("!H", ip, 2)[0]
        icmp = frame[14 + ihl:14 + total]
        if not icmp or icmp[0] != 8:
            return None
        body = b"\0\0\0\0" + icmp[4:]
        body = b"\0\0" + struct.pack("!H", checksum(body)) + body[4:]
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64, 1, 0,
                                    self.ip, ip[12:16]))
        hdr[10:12] = struct.pack("!H", checksum(bytes(hdr)))
        return frame[6:12] + self.mac + frame[12:14] + bytes(hdr) + body

    def _icmp6(self, frame: bytes) -> Optional[bytes]:
        if len(frame) < 14 + 40 + 8 or frame[14 + 6] != IPPROTO_ICMPV6:
            return None  # extension headers are not something ping or ND sends here
        src, dst = frame[22:38], frame[38:54]
        length = struct.unpack_from("!H", frame, 18)[0]
        msg = frame[54:54 + length]
        if len(msg) < 8:
            return None
        if msg[0] == ND_NEIGHBOR_SOLICIT and len(msg) >= 24 and msg[8:24] == self.ip6:
            dad = src == b"\0" * 16  # a DAD probe gets its answer on all-nodes, unsolicited
            flags = 0x20000000 if dad else 0x60000000  # O, plus S when someone asked
            na = struct.pack("!BBHI", ND_NEIGHBOR_ADVERT, 0, 0, flags) + self.ip6 + b"\x02\x01" + self.mac
            to, eth_dst = (ALL_NODES, b"\x33\x33\0\0\0\x01") if dad else (src, frame[6:12])
            return eth_dst + self.mac + struct.pack("!H", ETH_P_IPV6) + icmp6_packet(self.ip6, to, na, 255)
        if msg[0] == ICMPV6_ECHO_REQUEST and dst == self.ip6 and frame[0:6] == self.mac:
            echo = bytes([ICMPV6_ECHO_REPLY, 0, 0, 0]) + msg[4:]
            return frame[6:12] + self.mac + frame[12:14] + icmp6_packet(self.ip6, src, echo, 64)
        return None


def drain(fd: int, guest: Guest) -> None:
    """Read what is queued (up to a batch), then write the answers, as qemu's tap loop does."""
    answers = []
    for _ in range(BATCH):
        try:
            frame = os.read(fd, 65536)
        except BlockingIOError:
            break
        answer = guest.reply(frame)
        if answer is not None:
            answers.append(answer)
    for answer in answers:
        send(fd, answer)


def send(fd: int, frame: bytes) -> None:
    """Write a frame to the tap. A tap set down refuses it (EIO): dropped, as qemu drops it, and the
    guest lives on (a test that sets the tap down right after start met its announcement there and
    the stand-in died: "ping after the fix 0/3", seen under load)."""
    try:
        os.write(fd, frame)
    except OSError as e:
        if e.errno != errno.EIO:
            raise


def serve(fd: int, guest: Guest, read: bool = True, control: Optional[int] = None) -> None:
    """Run until `control` reaches EOF (the lab that started us is gone) or a signal ends us."""
    os.set_blocking(fd, False)
    poller = select.poll()
    if read:
        poller.register(fd, select.POLLIN)
    if control is not None:
        poller.register(control, select.POLLIN)
    while True:
        for ready, _ in poller.poll():
            if ready == control and not os.read(control, 4096):
                return
            if ready == fd:
                drain(fd, guest)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tap", required=True)
    p.add_argument("--mac", required=True)
    p.add_argument("--ip", required=True)
    p.add_argument("--ipv6", action="store_true", help="also answer neighbour solicitation and echo on fe80::")
    p.add_argument("--no-arp", action="store_true", help="never answer ARP (a broken guest)")
    p.add_argument("--no-announce", action="store_true", help="don't send a gratuitous ARP at start")
    p.add_argument("--no-read", action="store_true", help="hold the tap open but never read it (a hung guest)")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="exit when stdin closes: the lab's pipe, so a killed lab can't leave us running")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    guest = Guest(args.mac, args.ip, answer_arp=not args.no_arp, ipv6=args.ipv6)
    fd = open_tap(args.tap)
    wait_for_port(args.tap)
    if not args.no_announce:
        # Before "ready", once the port forwards: the bridge has learned the guest's MAC once the lab
        # goes on (written after "ready", or before the port forwarded, the announcement was lost and
        # the tests' first ping to the guest counted as an unknown-unicast flood instead of a
        # forward: twice on 6.12 in the kernel matrix).
        send(fd, guest.announce())
    print("ready", flush=True)
    try:
        serve(fd, guest, read=not args.no_read, control=0 if args.exit_on_stdin_eof else None)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
