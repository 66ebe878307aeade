"""The pcap sink, read back by the real tcpdump."""
import shutil
import subprocess

import pytest

from tracer.sinks.pcap import PcapSink

ARP = bytes.fromhex("ffffffffffff02aabbccdd010806" "0001080006040001" "02aabbccdd01" "c6336401"
                    "000000000000" "c633640a")
ECHO = (bytes.fromhex("525400e42ec102aabbccdd010800" "45000054000040004001" "0000" "c6336401" "c633640a")
        + bytes.fromhex("0800000012340001") + bytes(56))


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_tcpdump_reads_frames_and_truncation(tmp_path):
    path = tmp_path / "x.pcap"
    with PcapSink(str(path)) as pcap:
        pcap.write_frame(1_795_000_000_123_456_789, ARP, len(ARP))
        pcap.write_frame(1_795_000_001_000_000_000, ECHO[:60], len(ECHO))
    out = subprocess.run(["tcpdump", "-nn", "-e", "-r", str(path)], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert "02:aa:bb:cc:dd:01 > ff:ff:ff:ff:ff:ff" in lines[0]
    assert "Request who-has 198.51.100.10 tell 198.51.100.1" in lines[0]
    assert "198.51.100.1 > 198.51.100.10: ICMP echo request" in lines[1]
    assert f"length {len(ECHO)}" in lines[1]  # the original length, not the captured 60 bytes
