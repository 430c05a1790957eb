"""py-spy's raw samples are charged to the right owner of the CPU."""

from __future__ import annotations

from bench.profile import parse_raw

RAW = """\
<module> (ofp-server:6);main (ofp_server/main.py:61);Runner.run (asyncio/runners.py:118) 30
<module> (ofp-server:6);GetFeatures (ofp_server/servicer.py:103) 5
<module> (ofp-server:6);Runner.run (asyncio/runners.py:118);plan_read (ofp/snapshot.py:75) 15
Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982) 20
<module> (x:1);fetchrow (asyncpg/pool.py:777);Connection._do_execute (asyncpg/connection.py:2069) 20
<module> (x:1);meth (structlog/_native.py:172) 6
<module> (x:1);MutexValue.inc (prometheus_client/values.py:28) 4

not a sample line
"""


def test_samples_are_grouped_by_the_owner_of_their_leaf_frame() -> None:
    profile = parse_raw(RAW)
    assert profile.samples == 100
    shares = dict(profile.shares)
    assert shares == {
        "event loop + grpc.aio (compiled)": 0.30,
        "OFP code (validate, plan, assemble, hash, proto)": 0.20,
        "grpc threads (completion queue, polling)": 0.20,
        "asyncpg (driver, compiled protocol)": 0.20,
        "logging + metrics": 0.10,
    }
    assert profile.shares[0][0] == "event loop + grpc.aio (compiled)"
    assert profile.top[0] == ("Runner.run (asyncio/runners.py:118)", 0.30)
    assert "100 samples: event loop + grpc.aio (compiled) 30%" in profile.summary()


def test_no_samples_gives_an_empty_profile() -> None:
    assert parse_raw("").samples == 0
