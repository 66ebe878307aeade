"""A stand-in guest: holds a tap fd exactly as qemu's tap backend does and answers ARP and ping.

Run inside the hypervisor namespace: `python -m tracer.lab.guest --tap vnet0 --mac M --ip A`.
Prints `ready` once the tap is open, so the lab knows frames will be read from then on.
"""
from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import signal
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def arp_frame(op: int, src_mac: bytes, src_ip: bytes, dst_mac: bytes, dst_ip: bytes, eth_dst: bytes) -> bytes:
    return (eth_dst + src_mac + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op) + src_mac + src_ip + dst_mac + dst_ip)


class Guest:
    """Answers what a minimal guest OS answers: ARP for its address and ICMP echo."""

    def __init__(self, mac: str, ip: str, answer_arp: bool = True):
        self.mac = bytes.fromhex(mac.replace(":", ""))
        self.ip = ipaddress.IPv4Address(ip).packed
        self.answer_arp = answer_arp
        self.answered = 0

    def announce(self) -> bytes:
        """A gratuitous ARP, as a booting guest sends: the bridge learns the guest MAC on its port."""
        return arp_frame(1, self.mac, self.ip, b"\0" * 6, self.ip, b"\xff" * 6)

    def reply(self, frame: bytes) -> bytes | None:
        if len(frame) < 14 or (frame[0:6] != self.mac and not frame[0] & 1):
            return None
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if ethertype == ETH_P_ARP and len(frame) >= 42 and self.answer_arp:
            op = struct.unpack_from("!H", frame, 20)[0]
            if op == 1 and frame[38:42] == self.ip:
                return arp_frame(2, self.mac, self.ip, frame[22:28], frame[28:32], frame[6:12])
        if ethertype == ETH_P_IP and len(frame) >= 34 and frame[0:6] == self.mac:
            ihl = (frame[14] & 0x0F) * 4
            ip = frame[14:14 + ihl]
            if ip[9] == 1 and ip[16:20] == self.ip:
                total = struct.unpack_from("!H", ip, 2)[0]
                icmp = frame[14 + ihl:14 + total]
                if icmp and icmp[0] == 8:
                    body = b"\0\0\0\0" + icmp[4:]
                    body = b"\0\0" + struct.pack("!H", checksum(body)) + body[4:]
                    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64, 1, 0,
                                                self.ip, ip[12:16]))
                    hdr[10:12] = struct.pack("!H", checksum(bytes(hdr)))
                    return frame[6:12] + self.mac + frame[12:14] + bytes(hdr) + body
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tap", required=True)
    p.add_argument("--mac", required=True)
    p.add_argument("--ip", required=True)
    p.add_argument("--no-arp", action="store_true", help="never answer ARP (a broken guest)")
    p.add_argument("--no-announce", action="store_true", help="don't send a gratuitous ARP at start")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    guest = Guest(args.mac, args.ip, answer_arp=not args.no_arp)
    fd = open_tap(args.tap)
    print("ready", flush=True)
    if not args.no_announce:
        os.write(fd, guest.announce())
    while True:
        frame = os.read(fd, 65536)
        answer = guest.reply(frame)
        if answer is not None:
            os.write(fd, answer)


if __name__ == "__main__":
    sys.exit(main())
