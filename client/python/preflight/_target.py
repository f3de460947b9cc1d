"""`server=` values -> a gRPC target whose channel spreads calls over every
address with gRPC's round_robin policy (the rules of the C++ CLI's
client/server_target.h, so `--server` means the same in every client):

    HOST:PORT            one server (gRPC resolves a name; all its addresses are used)
    H1:P1,H2:P2,...      a list, e.g. the replicas of a fleet sharing one store;
                         [IPV6]:PORT for IPv6
    dns:///NAME:PORT     every A record of NAME, re-resolved by gRPC (a
                         Kubernetes headless Service)
    ipv4:A:P,...  ipv6:[A]:P,...  unix:PATH   gRPC's own target forms

A bad value raises ValueError("server: ...") saying what is wrong; a list
none of whose names resolves raises LookupError.
"""
import ipaddress
import json
import random
import re
import socket
from typing import Callable, List, Optional, Tuple

ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
_FORMS = "HOST:PORT, a comma-separated list H1:P1,H2:P2, or dns:///NAME:PORT"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,253}$")


def _bad(why: str) -> ValueError:
    return ValueError(f"server: {why}")


def _is_ip(host: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


def parse_address(entry: str) -> Tuple[str, int, str]:
    """(host, port, kind) of one HOST:PORT entry; kind is ipv4, ipv6 or name."""
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise _bad(f"'{entry}': '[' without ']'")
        host, rest = entry[1:close], entry[close + 1:]
        if not rest.startswith(":"):
            raise _bad(f"'{entry}' has no port (expected [IPV6]:PORT)")
        port = rest[1:]
        if not _is_ip(host, 6):
            raise _bad(f"'{entry}': not an IPv6 address in []")
        kind = "ipv6"
    else:
        host, sep, port = entry.rpartition(":")
        if not sep:
            raise _bad(f"'{entry}' has no port (expected HOST:PORT)")
        if ":" in host:
            raise _bad(f"'{entry}': an IPv6 address needs brackets, [ADDRESS]:PORT")
        if _is_ip(host, 4):
            kind = "ipv4"
        elif _NAME.match(host):
            kind = "name"
        else:
            raise _bad(f"'{entry}': '{host}' is not a host name or IP address")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise _bad(f"'{entry}': port must be 1..65535, got '{port}'")
    return host, int(port), kind


def _parse_list(text: str, whole: str):
    out = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            raise _bad(f"empty address in the list '{whole}'")
        out.append(parse_address(entry))
    return out


def parse(server: str) -> Tuple[str, list]:
    """(uri, addresses): a target used as written, or a list of 2+ entries."""
    s = (server or "").strip()
    if not s:
        raise _bad(f"is empty (expected {_FORMS})")
    if s.startswith("dns:"):
        rest = s[4:]
        if rest.startswith("//"):
            slash = rest.find("/", 2)
            if slash < 0:
                raise _bad(f"'{s}': expected dns:///NAME:PORT")
            rest = rest[slash + 1:]
        if "," in rest:
            raise _bad(f"'{s}': a dns: target names one host; list servers as H1:P1,H2:P2 "
                       "without dns:")
        try:
            parse_address(rest)
        except ValueError as e:
            raise _bad("dns target " + str(e)[len("server: "):]) from None
        return s, []
    for scheme, kind, label in (("ipv4:", "ipv4", "IPv4"), ("ipv6:", "ipv6", "[IPv6]")):
        if s.startswith(scheme):
            for host, _, k in _parse_list(s[len(scheme):], s):
                if k != kind:
                    raise _bad(f"'{s}': {scheme} takes {label} addresses only, got '{host}'")
            return s, []
    if s.startswith(("unix:", "unix-abstract:")):
        if s.endswith(":"):
            raise _bad(f"'{s}' names no socket path")
        return s, []
    if "://" in s:
        raise _bad(f"unsupported scheme '{s.split('://')[0]}' in '{s}' (expected {_FORMS})")
    entries = _parse_list(s, s)
    return (s, []) if len(entries) == 1 else ("", entries)


def single(server: str) -> bool:
    """True when `server` names one server (HOST:PORT or a one-address
    gRPC form), so every call of a client reaches the same one."""
    uri, entries = parse(server)
    return not entries and not uri.startswith("dns:") and "," not in uri


def system_resolve(host: str) -> List[str]:
    """Numeric addresses of a name (getaddrinfo), IPv6 without brackets."""
    out = []
    for family, _, _, _, addr in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM):
        if family in (socket.AF_INET, socket.AF_INET6) and addr[0] not in out:
            out.append(addr[0])
    return out


def grpc_target(server: str, resolve: Optional[Callable[[str], List[str]]] = None,
                rng: Optional[random.Random] = None) -> str:
    """The gRPC target for `server`. A list becomes one ipv4: (or, when
    every entry has only IPv6 addresses, ipv6:) target, its addresses in a
    random order: round_robin sends a new channel's first call to the first
    address that connects, so a fresh order is what spreads short-lived
    clients over the list. Names in a list are resolved here, once; one that
    does not resolve is left out while another does."""
    uri, entries = parse(server)
    if not entries:
        return uri
    resolve = resolve or system_resolve
    v4, v6, unresolved, v4_only, v6_only = [], [], [], [], []
    all4 = all6 = True
    resolved = 0
    for host, port, kind in entries:
        if kind == "name":
            try:
                ips = resolve(host)
            except OSError as e:
                unresolved.append(f"{host}: {e}")
                continue
            if not ips:
                unresolved.append(f"{host}: no address")
                continue
        else:
            ips = [host]
        resolved += 1
        has4 = has6 = False
        for ip in ips:
            is6 = ":" in ip
            text = f"[{ip}]:{port}" if is6 else f"{ip}:{port}"
            into = v6 if is6 else v4
            if text not in into:
                into.append(text)
            has6, has4 = has6 or is6, has4 or not is6
        all4, all6 = all4 and has4, all6 and has6
        if has4 != has6:
            (v4_only if has4 else v6_only).append(f"{host}:{port}")
    if not resolved:
        raise LookupError("server: none of the servers resolves: " + "; ".join(unresolved))
    if all4:
        scheme, chosen = "ipv4:", v4
    elif all6:
        scheme, chosen = "ipv6:", v6
    else:
        raise _bad(f"the list mixes IPv4-only ({','.join(v4_only)}) and IPv6-only "
                   f"({','.join(v6_only)}) servers; one gRPC target holds one address family: "
                   "use dns:///NAME:PORT or one family")
    (rng or random).shuffle(chosen)
    return scheme + ",".join(chosen)
