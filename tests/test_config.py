"""Flag validation: bad input is refused with one clear line (pure)."""
import pytest

from tracer.config import FollowConfig, ip_key, mac_to_int, parse_ip, parse_mac
from tracer.errors import EXIT_USAGE, UsageError


@pytest.mark.parametrize("text", ["52:54:00:e4:2e", "52:54:00:e4:2e:c1:00", "zz:54:00:e4:2e:c1",
                                  "52:54-00:e4:2e:c1", "", "5254.00e4.2ec1", "52:54:00:e4:2e:c1\n"])
def test_bad_macs_are_refused(text):
    with pytest.raises(UsageError) as err:
        parse_mac(text)
    assert err.value.exit_code == EXIT_USAGE and "\n" not in err.value.message


def test_macs_are_normalised():
    assert parse_mac("52-54-00-E4-2E-C1") == "52:54:00:e4:2e:c1"
    assert mac_to_int("52:54:00:e4:2e:c1") == 0x525400E42EC1


def test_ips():
    assert parse_ip("198.51.100.10") == "198.51.100.10"
    assert ip_key("198.51.100.10") == bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 10])
    assert len(ip_key("2001:db8::1")) == 16
    with pytest.raises(UsageError):
        parse_ip("198.51.100.300")


def test_config_validates_everything():
    cfg = FollowConfig(mac="52:54:00:E4:2E:C1", ips=("198.51.100.10",), count=3)
    assert cfg.mac == "52:54:00:e4:2e:c1"
    for bad in ({"count": 0}, {"duration": -1}, {"ips": ("nope",)}, {"ringbuf_pages": 3}):
        with pytest.raises(UsageError):
            FollowConfig(mac="52:54:00:e4:2e:c1", **bad)
