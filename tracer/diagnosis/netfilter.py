"""Which netfilter chain or rule drops a bridged frame, read off `nft -j list ruleset`.

The ruleset includes what iptables-nft and ebtables-nft made (iptables-legacy rules don't show).

A small evaluator: it walks the base chains a bridged frame crosses, in hook and priority order,
and matches each rule's expressions against what is known of the frame. Expressions it cannot
evaluate (conntrack state, xt matches, marks...) make the answer uncertain rather than wrong.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

# The bridge's netfilter hooks in the order a forwarded frame crosses them.
HOOK_ORDER = ("ingress", "prerouting", "forward", "postrouting", "egress")
_MAX_DEPTH = 16  # jumps nested deeper than this are treated as unknown (the kernel allows 16 too)
_IPTABLES_TABLES = ("filter", "mangle", "raw", "nat", "security")
_EBTABLES_TABLES = ("filter", "nat", "broute")


@dataclass(frozen=True)
class Probe:
    """A frame as one netfilter family sees it at one hook (None: not known)."""

    family: str  # bridge | ip | ip6 | netdev
    hook: str  # one of HOOK_ORDER
    iifname: Optional[str] = None
    oifname: Optional[str] = None
    ether_saddr: Optional[str] = None
    ether_daddr: Optional[str] = None
    ether_type: Optional[str] = None  # ip | ip6 | arp
    saddr: Optional[str] = None
    daddr: Optional[str] = None
    l4proto: Optional[str] = None  # icmp | ipv6-icmp | tcp | udp
    bridge: Optional[str] = None  # meta ibrname/obrname


@dataclass(frozen=True)
class Culprit:
    """The chain policy or rule that decides a drop."""

    family: str
    table: str
    chain: str
    hook: str
    kind: str  # policy | rule
    handle: Optional[int] = None
    position: int = 0  # 1-based place of the rule in its chain
    text: str = ""  # the rule, roughly as `nft list` prints it
    packets: Optional[int] = None  # the rule's counter, when it has one
    certain: bool = True  # every rule before it could be evaluated

    @property
    def tool(self) -> str:
        """iptables, ip6tables or ebtables when the table looks made by them, else nft."""
        if self.chain.isupper() and self.family == "ip" and self.table in _IPTABLES_TABLES:
            return "iptables"
        if self.chain.isupper() and self.family == "ip6" and self.table in _IPTABLES_TABLES:
            return "ip6tables"
        if self.chain.isupper() and self.family == "bridge" and self.table in _EBTABLES_TABLES:
            return "ebtables"
        return "nft"

    def describe(self) -> str:
        """E.g. 'the iptables FORWARD chain (table ip filter) has policy DROP'."""
        where = f"table {self.family} {self.table}"
        if self.tool != "nft":
            name = f"the {self.tool} {self.chain} chain ({where})"
        else:
            name = f"nftables chain {self.chain} ({where}, hook {self.hook})"
        if self.kind == "policy":
            return f"{name} has policy {'DROP' if self.tool != 'nft' else 'drop'}"
        counted = f", counter {self.packets} packets" if self.packets is not None else ""
        return f"rule {self.position} of {name} drops: `{self.text}` (handle {self.handle}{counted})"


@dataclass(frozen=True)
class Decision:
    """What the ruleset does with a probe."""

    verdict: str  # accept | drop | unknown
    culprit: Optional[Culprit] = None  # the policy/rule that drops (verdict drop), or the likeliest one
    candidates: tuple[Culprit, ...] = ()  # drops that may apply (their rules could not be fully evaluated)


class Ruleset:
    """The chains and rules of one namespace's ruleset, indexed for walking."""

    def __init__(self, items: Sequence[dict]):
        self.chains: dict[tuple[str, str, str], dict] = {}
        self.rules: dict[tuple[str, str, str], list[dict]] = {}
        # Chains and rules of a shape nft doesn't print (no family/table/name, a rule whose expr is
        # no list): left out and counted, and a ruleset with any is never called certain.
        self.skipped = 0
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, dict):
                continue  # metainfo, tables, sets...: not walked
            if "chain" in item:
                c = item["chain"]
                key = _key(c, "name")
                if key is None:
                    self.skipped += 1
                else:
                    self.chains[key] = c
            elif "rule" in item:
                r = item["rule"]
                key = _key(r, "chain")
                if key is None or not isinstance(r.get("expr", []), list):
                    self.skipped += 1
                else:
                    self.rules.setdefault(key, []).append(r)

    def base_chains(self, family: str, hook: str, devices: Sequence[str] = ()) -> list[dict]:
        """Base chains of `family` (inet counts for ip and ip6) at `hook`, in priority order."""
        families = {family, "inet"} if family in ("ip", "ip6") else {family}
        found = []
        for c in self.chains.values():
            if c.get("family") not in families or c.get("hook") != hook:
                continue
            if family == "netdev" and not (_chain_devices(c) & set(devices)):
                continue
            found.append(c)
        return sorted(found, key=lambda c: _prio(c.get("prio", 0)))

    def decide(self, probes: Sequence[Probe]) -> Decision:
        """The fate of a frame that crosses `probes` in order: the first certain drop, else accept or unknown."""
        candidates: list[Culprit] = []
        uncertain = False
        for probe in probes:
            devices = [d for d in (probe.iifname, probe.oifname) if d]
            for chain in self.base_chains(probe.family, probe.hook, devices):
                verdict, culprit, sure, maybe = self._walk(chain, chain, probe, 0)
                candidates.extend(maybe)
                if verdict == "drop" and culprit is not None:
                    if sure and not uncertain:
                        return Decision("drop", culprit, tuple(candidates))
                    candidates.append(culprit)
                    uncertain = True
                elif not sure:
                    uncertain = True
        if candidates:
            best = sorted(candidates, key=lambda c: (not (c.packets or 0) > 0, not c.certain))[0]
            return Decision("unknown", best, tuple(candidates))
        return Decision("unknown" if uncertain or self.skipped else "accept")

    def _walk(self, base: dict, chain: dict, probe: Probe, depth: int
              ) -> tuple[str, Optional[Culprit], bool, list[Culprit]]:
        """(verdict, culprit, certain, possible drops) of `chain`; verdict "" means fall through/return."""
        fam, table, name = chain["family"], chain["table"], chain["name"]
        maybe: list[Culprit] = []
        sure = True
        for pos, rule in enumerate(self.rules.get((fam, table, name), ()), 1):
            matched = _matches(rule.get("expr", ()), probe)
            if matched is False:
                continue
            verdict, target = _verdict(rule.get("expr", ()))
            if verdict == "":
                continue
            culprit = Culprit(fam, table, name, base.get("hook", ""), "rule", rule.get("handle"), pos,
                              rule_text(rule), _counter(rule), certain=sure and matched is True)
            if verdict in ("jump", "goto"):
                if depth >= _MAX_DEPTH or (fam, table, target) not in self.chains:
                    sure = False
                    continue
                sub, sub_culprit, sub_sure, sub_maybe = self._walk(base, self.chains[(fam, table, target)], probe,
                                                                   depth + 1)
                maybe.extend(sub_maybe)
                if sub in ("accept", "drop"):
                    if matched is True and sub_sure:
                        return sub, sub_culprit, sure, maybe
                    if sub == "drop" and sub_culprit is not None:
                        maybe.append(sub_culprit)
                    sure = False
                elif not sub_sure or matched is None:
                    sure = False
                if verdict == "goto" and matched is True and sub_sure:
                    break  # goto does not come back here: the caller's caller (or the policy) decides
                continue
            if verdict == "return":
                if matched is True:
                    break  # in a base chain, return means: the policy decides
                sure = False
                continue
            if verdict in ("accept", "drop"):
                if matched is True:
                    return verdict, culprit, sure, maybe
                if verdict == "drop":
                    maybe.append(culprit)
                sure = False
                continue
            sure = False  # queue, unknown targets: the kernel may or may not come back
        if base is chain and chain.get("policy") == "drop":
            return "drop", Culprit(fam, table, name, chain.get("hook", ""), "policy", certain=sure), sure, maybe
        return ("accept" if base is chain else ""), None, sure, maybe


def _key(obj: Any, name: str) -> Optional[tuple[str, str, str]]:
    """(family, table, obj[name]) of a chain or rule, None when it lacks one of them."""
    if not isinstance(obj, dict):
        return None
    key = (obj.get("family"), obj.get("table"), obj.get(name))
    return key if all(isinstance(k, str) for k in key) else None  # type: ignore[return-value]


def _dict(value: Any) -> dict:
    """value when it is a JSON object, else an empty one: parts of an expression nft would never
    print that way read as absent, so the expression is one tapttrace can't evaluate."""
    return value if isinstance(value, dict) else {}


def _prio(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    named = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100, "out": 100}
    return named.get(str(value), 0)


def _chain_devices(c: dict) -> set[str]:
    devs = c.get("dev") or c.get("devices") or []
    return {devs} if isinstance(devs, str) else {d for d in devs if isinstance(d, str)} if isinstance(devs, list) \
        else set()


def _counter(rule: dict) -> Optional[int]:
    for e in rule.get("expr", ()):
        if isinstance(e, dict) and isinstance(e.get("counter"), dict):
            packets = e["counter"].get("packets")
            return packets if isinstance(packets, int) and not isinstance(packets, bool) else None
    return None


def _verdict(exprs: Sequence[Any]) -> tuple[str, str]:
    """(accept|drop|jump|goto|return|other|"", jump target) of a rule; "" when it has no verdict."""
    for e in exprs:
        if not isinstance(e, dict):
            continue
        if "accept" in e:
            return "accept", ""
        if "drop" in e or "reject" in e:
            return "drop", ""
        if "return" in e:
            return "return", ""
        if "jump" in e or "goto" in e:
            key = "jump" if "jump" in e else "goto"
            target = _dict(e[key]).get("target", "")
            return key, target if isinstance(target, str) else ""
        if "queue" in e:
            return "other", ""
        xt = e.get("xt")
        if isinstance(xt, dict) and xt.get("type") == "target":
            name = str(xt.get("name", "")).upper()
            if name in ("DROP", "REJECT"):
                return "drop", ""
            if name == "ACCEPT":
                return "accept", ""
            # LOG, MARK, CT, ...: not terminal
    return "", ""


def _matches(exprs: Sequence[Any], probe: Probe) -> Optional[bool]:
    """True/False when every match expression could be evaluated, None when one could not."""
    result: Optional[bool] = True
    for e in exprs:
        if not isinstance(e, dict):
            continue
        if "match" in e:
            m = _match(_dict(e["match"]), probe)
        elif "xt" in e and _dict(e["xt"]).get("type") == "match":
            m = None  # physdev, conntrack, comment...: iptables extensions nft can't show
        elif "limit" in e or "quota" in e or "numgen" in e:
            m = None
        else:
            continue
        if m is False:
            return False
        if m is None:
            result = None
    return result


def _match(m: dict, probe: Probe) -> Optional[bool]:
    value = _field(m.get("left"), probe)
    if value is None:
        return None
    hit = _compare(value, m.get("right"))
    if hit is None:
        return None
    op = m.get("op", "==")
    if op in ("==", "in"):
        return hit
    if op == "!=":
        return not hit
    return None


def _field(left: Any, probe: Probe) -> Optional[str]:
    if not isinstance(left, dict):
        return None
    if "meta" in left:
        key = _dict(left["meta"]).get("key")
        if not isinstance(key, str):
            return None
        return {
            "iifname": probe.iifname, "oifname": probe.oifname, "l4proto": probe.l4proto,
            "protocol": probe.ether_type, "nfproto": probe.ether_type if probe.ether_type != "arp" else None,
            "ibrname": probe.bridge, "obrname": probe.bridge,
        }.get(key)
    if "payload" in left:
        p = _dict(left["payload"])
        protocol, field_name = p.get("protocol"), p.get("field")
        if not isinstance(protocol, str) or not isinstance(field_name, str):
            return None
        key = (protocol, field_name)
        return {
            ("ether", "saddr"): probe.ether_saddr, ("ether", "daddr"): probe.ether_daddr,
            ("ether", "type"): probe.ether_type,
            ("ip", "saddr"): probe.saddr if probe.ether_type == "ip" else None,
            ("ip", "daddr"): probe.daddr if probe.ether_type == "ip" else None,
            ("ip", "protocol"): probe.l4proto if probe.ether_type == "ip" else None,
            ("ip6", "saddr"): probe.saddr if probe.ether_type == "ip6" else None,
            ("ip6", "daddr"): probe.daddr if probe.ether_type == "ip6" else None,
            ("ip6", "nexthdr"): probe.l4proto if probe.ether_type == "ip6" else None,
        }.get(key)
    return None


def _compare(value: str, right: Any) -> Optional[bool]:
    if isinstance(right, (str, int)) and not isinstance(right, bool):
        return _equal(value, str(right))
    if isinstance(right, dict):
        if "set" in right:
            if not isinstance(right["set"], list):
                return None
            hits = [_compare(value, r) for r in right["set"]]
            return True if True in hits else (None if None in hits else False)
        if "prefix" in right:
            prefix = _dict(right["prefix"])
            try:
                net = ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}", strict=False)
                return ipaddress.ip_address(value) in net
            except (ValueError, KeyError, TypeError):  # TypeError: an IPv4 address against an IPv6 net
                return None
        if "range" in right:
            try:
                lo, hi = (ipaddress.ip_address(str(x)) for x in right["range"])
                addr = ipaddress.ip_address(value)
            except (ValueError, TypeError):  # not two addresses
                return None
            if lo.version != hi.version:
                return None
            # An IPv6 address is never in an IPv4 range (and the other way round); comparing
            # addresses of two versions raises TypeError.
            return addr.version == lo.version and int(lo) <= int(addr) <= int(hi)
    return None  # named sets (@name), maps, ...: not evaluated


def _equal(value: str, pattern: str) -> bool:
    if pattern.endswith("*"):  # interface name wildcards: iifname "vnet*"
        return value.startswith(pattern[:-1])
    return value.lower() == pattern.lower()


def rule_text(rule: dict) -> str:
    """A rule roughly as `nft list ruleset` prints it."""
    parts = []
    for e in rule.get("expr", ()):
        if not isinstance(e, dict) or not e:
            continue
        key, val = next(iter(e.items()))
        if key == "match":
            val = _dict(val)
            op = "" if val.get("op") in ("==", "in") else f"{val.get('op')} "
            parts.append(f"{_operand(val.get('left'))} {op}{_operand(val.get('right'))}")
        elif key == "counter":
            parts.append("counter" + (f" packets {val.get('packets')}" if isinstance(val, dict) else ""))
        elif key in ("jump", "goto"):
            parts.append(f"{key} {_dict(val).get('target', '?')}")
        elif key == "xt":
            parts.append(f"xt {_dict(val).get('type', '')} {_dict(val).get('name', '')}".strip())
        elif val is None:
            parts.append(key)
        else:
            parts.append(key)
    return " ".join(parts)


def _operand(x: Any) -> str:
    if isinstance(x, dict):
        if "meta" in x:
            return f"meta {_dict(x['meta']).get('key')}"
        if "payload" in x:
            return f"{_dict(x['payload']).get('protocol')} {_dict(x['payload']).get('field')}"
        if "set" in x and isinstance(x["set"], list):
            return "{ " + ", ".join(_operand(v) for v in x["set"]) + " }"
        if "prefix" in x:
            return f"{_dict(x['prefix']).get('addr')}/{_dict(x['prefix']).get('len')}"
        if "range" in x and isinstance(x["range"], list):
            return "-".join(str(v) for v in x["range"])
        return next(iter(x), "?")
    return str(x)
