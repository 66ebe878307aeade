"""The pcap sink, read back by the real tcpdump (frames built by hand, checksums and all)."""
from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tracer.sinks.pcap import SNAPLEN, PcapSink

pytestmark = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")

REMOTE_MAC = bytes.fromhex("02aabbccdd01")
GUEST_MAC = bytes.fromhex("525400e42ec1")
REMOTE_IP = bytes([198, 51, 100, 1])
GUEST_IP = bytes([198, 51, 100, 10])


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_request() -> bytes:
    eth = b"\xff" * 6 + REMOTE_MAC + b"\x08\x06"
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + REMOTE_MAC + REMOTE_IP + bytes(6) + GUEST_IP
    return eth + arp


def icmp_echo(seq: int = 1, payload: bytes = bytes(range(56))) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0x4000, 64, 1, 0, REMOTE_IP, GUEST_IP)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return GUEST_MAC + REMOTE_MAC + b"\x08\x00" + ip + icmp


def tcpdump(path: Path, *args: str) -> list[str]:
    """One string per packet: -v continues a packet on indented lines."""
    out = subprocess.run(["tcpdump", "-nn", "-e", "-r", str(path), *args],
                         capture_output=True, text=True, check=True)
    packets: list[str] = []
    for line in out.stdout.splitlines():
        if line[:1].isspace() and packets:
            packets[-1] += " " + line.strip()
        else:
            packets.append(line)
    return packets


def test_tcpdump_decodes_frames_timestamps_and_truncation(tmp_path):
    path = tmp_path / "x.pcap"
    echo = icmp_echo()
    with PcapSink(path) as pcap:
        pcap.write_frame(1_795_000_000_123_456_789, arp_request(), 42)
        pcap.write_frame(1_795_000_001_000_000_001, echo, len(echo))
        # Cut inside the ICMP header, as a BPF program's capture limit might.
        pcap.write_frame(1_795_000_002_000_000_000, echo[:38], len(echo))

    lines = tcpdump(path, "-v", "-tt", "--time-stamp-precision=nano")
    assert len(lines) == 3, lines
    arp, full, cut = lines
    assert arp.startswith("1795000000.123456789 ")  # nanoseconds survive: the 0xa1b23c4d magic
    assert "02:aa:bb:cc:dd:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42" in arp
    assert "Request who-has 198.51.100.10 tell 198.51.100.1" in arp

    assert full.startswith("1795000001.000000001 ")
    assert "02:aa:bb:cc:dd:01 > 52:54:00:e4:2e:c1, ethertype IPv4 (0x0800), length 98" in full
    assert "198.51.100.1 > 198.51.100.10: ICMP echo request, id 4660, seq 1, length 64" in full
    assert "cksum" not in full  # tcpdump checked both checksums and found nothing to say

    # tcpdump gives the original length from the record and marks where the capture ran out.
    assert "52:54:00:e4:2e:c1, ethertype IPv4 (0x0800), length 98" in cut
    assert "[|icmp]" in cut
    assert "seq 1" not in cut


def test_records_are_readable_while_the_sink_is_open(tmp_path):
    path = tmp_path / "live.pcap"
    pcap = PcapSink(str(path))
    try:
        pcap.write_frame(1_795_000_000_000_000_000, arp_request(), 42)
        lines = tcpdump(path)
        assert len(lines) == 1 and "Request who-has 198.51.100.10" in lines[0]
        pcap.write_frame(1_795_000_000_500_000_000, icmp_echo(seq=2), 98)
        assert len(tcpdump(path)) == 2
    finally:
        pcap.close()


def test_stream_target_stays_open_and_oversized_frames_obey_the_snaplen(tmp_path):
    buf = io.BytesIO()
    with PcapSink(buf) as pcap:
        # A GSO super-frame (BIG TCP makes them) can outgrow any snaplen.
        pcap.write_frame(1_795_000_000_000_000_000, GUEST_MAC + REMOTE_MAC + b"\x88\xb5" + bytes(70_084), 70_098)
    assert not buf.closed  # the caller's stream (e.g. stdout) is the caller's to close
    data = buf.getvalue()
    magic, _, _, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, snaplen, linktype) == (0xA1B23C4D, SNAPLEN, 1)
    _, _, caplen, orig_len = struct.unpack_from("<IIII", data, 24)
    assert (caplen, orig_len) == (SNAPLEN, 70_098)
    assert len(data) == 24 + 16 + SNAPLEN

    path = tmp_path / "big.pcap"
    path.write_bytes(data)
    (line,) = tcpdump(path)
    assert "length 70098" in line
