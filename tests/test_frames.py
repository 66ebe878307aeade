"""Frame decoding and the guest-address learning rule (pure)."""
from tracer import frames

ARP_REQ = bytes.fromhex("ffffffffffff02aabbccdd010806" "0001080006040001" "02aabbccdd01" "c6336401"
                        "000000000000" "c633640a")
ARP_REPLY = bytes.fromhex("02aabbccdd01525400e42ec10806" "0001080006040002" "525400e42ec1" "c633640a"
                          "02aabbccdd01" "c6336401")
ICMP_ECHO = (bytes.fromhex("525400e42ec1" "02aabbccdd01" "0800")
             + bytes.fromhex("45000054" "00004000" "4001" "0000" "c6336401" "c633640a")
             + bytes.fromhex("08000000" "1234" "0001") + bytes(8))


def test_arp_request():
    info = frames.decode(ARP_REQ)
    assert info.summary == "ARP who-has 198.51.100.10 tell 198.51.100.1"
    assert info.is_broadcast and info.arp_op == 1 and info.arp_target_ip == "198.51.100.10"


def test_arp_reply_teaches_the_guest_address():
    info = frames.decode(ARP_REPLY)
    assert info.summary == "ARP reply 198.51.100.10 is-at 52:54:00:e4:2e:c1"
    assert frames.guest_addresses(info, "52:54:00:e4:2e:c1") == ["198.51.100.10"]
    assert frames.guest_addresses(info, "52:54:00:00:00:01") == []


def test_icmp_echo_summary_with_sequence():
    info = frames.decode(ICMP_ECHO)
    assert info.dst_mac == "52:54:00:e4:2e:c1" and info.src_mac == "02:aa:bb:cc:dd:01"
    assert info.summary == "ICMP echo 198.51.100.1 > 198.51.100.10 seq 1"


def test_short_and_unknown_frames_do_not_raise():
    assert "runt" in frames.decode(b"\x00" * 5).summary
    assert frames.decode(bytes(12) + b"\x88\xcc" + bytes(10)).summary == "ethertype 0x88cc"


def test_fingerprint_depends_on_bytes_and_length():
    a = frames.fingerprint(ICMP_ECHO, 98)
    assert a == frames.fingerprint(ICMP_ECHO, 98)
    assert a != frames.fingerprint(ICMP_ECHO, 99)
    assert a != frames.fingerprint(ARP_REQ, 98)
