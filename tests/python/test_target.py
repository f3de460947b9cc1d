"""client/python/preflight/_target.py: the `server=` forms of the Python
client and the gates (the C++ CLI's rules, tests/client/server_target_test.cc),
without a server: loaded from the source file, so it needs no build."""
import importlib.util
import os
import random

import pytest

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "client", "python", "preflight", "_target.py")
_spec = importlib.util.spec_from_file_location("preflight_target", _SRC)
target = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(target)

NAMES = {"a.test": ["10.0.0.1"], "b.test": ["10.0.0.2", "10.0.0.3"],
         "dual.test": ["10.0.0.9", "fd00::9"], "v6.test": ["fd00::6"]}


def fake_resolve(host):
    if host not in NAMES:
        raise OSError(f"[Errno -2] Name or service not known: {host}")
    return NAMES[host]


def split(t):
    scheme, _, rest = t.partition(":")
    return scheme + ":", sorted(rest.split(","))


@pytest.mark.parametrize("server", [
    "127.0.0.1:50051", "preflight.preflight.svc:50051", "[::1]:50051",
    "dns:///preflight-headless.preflight.svc.cluster.local:50051",
    "dns://10.96.0.10:53/preflight:50051", "ipv4:127.0.0.1:1,127.0.0.1:2",
    "ipv6:[::1]:1,[::1]:2", "unix:/run/preflight.sock"])
def test_one_server_and_grpc_forms_are_used_as_written(server):
    assert target.grpc_target(server, fake_resolve) == server


@pytest.mark.parametrize("server,message", [
    ("", "is empty (expected HOST:PORT, a comma-separated list"),
    ("host", "'host' has no port (expected HOST:PORT)"),
    ("host:0", "port must be 1..65535, got '0'"),
    ("host:65536", "port must be 1..65535, got '65536'"),
    ("host:5x", "port must be 1..65535, got '5x'"),
    ("a:1,,b:2", "empty address in the list 'a:1,,b:2'"),
    ("::1:50051", "an IPv6 address needs brackets, [ADDRESS]:PORT"),
    ("[::1]", "'[::1]' has no port (expected [IPV6]:PORT)"),
    ("bad host:1", "'bad host' is not a host name or IP address"),
    ("http://h:1", "unsupported scheme 'http' in 'http://h:1'"),
    ("dns:///name", "dns target 'name' has no port"),
    ("dns:///a:1,b:2", "a dns: target names one host"),
    ("ipv4:[::1]:1", "ipv4: takes IPv4 addresses only, got '::1'"),
    ("unix:", "names no socket path"),
])
def test_bad_values_say_why(server, message):
    with pytest.raises(ValueError) as e:
        target.grpc_target(server, fake_resolve)
    assert str(e.value).startswith("server: ")
    assert message in str(e.value)


def test_lists_become_one_target_of_the_common_family():
    assert split(target.grpc_target("127.0.0.1:1, 127.0.0.1:2", fake_resolve)) == \
        ("ipv4:", ["127.0.0.1:1", "127.0.0.1:2"])
    assert split(target.grpc_target("a.test:1,b.test:2,dual.test:3", fake_resolve)) == \
        ("ipv4:", ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:2", "10.0.0.9:3"])
    assert split(target.grpc_target("v6.test:1,dual.test:2,[::1]:3", fake_resolve)) == \
        ("ipv6:", ["[::1]:3", "[fd00::6]:1", "[fd00::9]:2"])
    assert split(target.grpc_target("127.0.0.1:1,127.0.0.1:1", fake_resolve)) == \
        ("ipv4:", ["127.0.0.1:1"])


def test_unresolvable_names_are_left_out_unless_none_resolves():
    assert target.grpc_target("nosuch.test:1,a.test:2", fake_resolve) == "ipv4:10.0.0.1:2"
    with pytest.raises(LookupError) as e:
        target.grpc_target("nosuch.test:1,gone.test:2", fake_resolve)
    assert "none of the servers resolves" in str(e.value)
    assert "nosuch.test" in str(e.value) and "gone.test" in str(e.value)


def test_mixed_families_are_refused_naming_both():
    with pytest.raises(ValueError) as e:
        target.grpc_target("10.0.0.1:1,v6.test:2", fake_resolve)
    assert "mixes IPv4-only (10.0.0.1:1) and IPv6-only (v6.test:2)" in str(e.value)


def test_the_order_is_shuffled_so_every_address_comes_first_sometimes():
    rng = random.Random(7)
    first = {target.grpc_target("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", fake_resolve, rng)
             .split(":", 1)[1].split(",")[0] for _ in range(200)}
    assert first == {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}


def test_single_tells_one_server_from_many():
    assert target.single("h:1") and target.single("[::1]:1") and target.single("unix:/s")
    assert not target.single("h:1,h:2")
    assert not target.single("dns:///h:1")
    assert not target.single("ipv4:127.0.0.1:1,127.0.0.1:2")


def test_the_service_config_selects_round_robin():
    import json
    assert json.loads(target.ROUND_ROBIN_SERVICE_CONFIG) == \
        {"loadBalancingConfig": [{"round_robin": {}}]}
