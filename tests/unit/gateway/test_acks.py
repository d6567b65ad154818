"""Client acks (issue 16 part 5) in process on the in-memory backplane, and the batching
rules of the gateway and of the Python SDK."""

from __future__ import annotations

from gateway.acks import AckBatch
from switchboard.receipts import Ack, parse_acks
from switchboard.streams import Position
from switchboard_client.acks import EVERY, Acks
from tests.unit.gateway.inproc import Env, publish, settle


async def test_an_ack_is_checked_against_what_the_connection_was_sent(env: Env) -> None:
    node = env.node()
    ada = await node.welcomed("ada")
    publish(env.cluster, "user:ada", "x")
    publish(env.cluster, "user:ada", "y")
    await ada.wait_offset("user", 2)
    epoch = ada.of_type("message")[0]["epoch"]
    session = ada.of_type("welcome")[0]["session"]

    ada.send({"type": "ack", "stream": "user", "epoch": epoch, "offset": 3})
    await ada.wait(lambda c: c.of_type("error"), "a refusal")
    assert ada.of_type("error")[0]["code"] == "bad_request"
    ada.send({"type": "ack", "stream": "user", "epoch": epoch, "offset": 2})
    ada.send({"type": "ack", "stream": "user", "epoch": epoch, "offset": 1})
    ada.send({"type": "ack", "stream": "user", "epoch": "elsewhere", "offset": 1})
    await settle()
    held = env.cluster.acks["ada"][session]
    assert (held.epoch, held.offset) == (epoch, 2), "offsets only rise"
    assert len(ada.of_type("error")) == 1, "a stale epoch is dropped without a word"


async def test_a_connection_acks_only_above_where_it_started(env: Env) -> None:
    node = env.node()
    publish(env.cluster, "user:bo", "before")  # never sent to the connection below
    bo = await node.welcomed("bo")
    publish(env.cluster, "user:bo", "after")
    await bo.wait_offset("user", 2)
    epoch = bo.of_type("message")[0]["epoch"]
    session = bo.of_type("welcome")[0]["session"]
    bo.send({"type": "ack", "stream": "user", "epoch": epoch, "offset": 1})
    await settle()
    assert "bo" not in env.cluster.acks, "an offset from before the connect is dropped"
    bo.send({"type": "ack", "stream": "user", "epoch": epoch, "offset": 2})
    await settle()
    held = env.cluster.acks["bo"][session]
    assert (held.floor, held.offset) == (1, 2)
    assert bo.of_type("error") == []


def test_the_gateway_batch_keeps_each_ranges_highest_ack_grouped_by_user() -> None:
    batch = AckBatch()
    batch.add(Ack("ann", "s1", "c1", "E", 0, 5))
    batch.add(Ack("ann", "s1", "c1", "E", 0, 3))
    batch.add(Ack("ann", "s2", "c2", "E", 0, 1))
    batch.add(Ack("bob", "s3", "c3", "E", 0, 7))
    batch.add(Ack("bob", "s3", "c4", "F", 0, 1))  # a new epoch: another range
    batch.add(Ack("bob", "s3", "c5", "F", 4, 6))  # reconnected above 4: another range too
    groups = {g[0].user: g for g in batch.take()}
    assert [(a.session, a.offset) for a in groups["ann"]] == [("s1", 5), ("s2", 1)]
    assert [(a.epoch, a.floor, a.offset) for a in groups["bob"]] == [
        ("E", 0, 7), ("F", 0, 1), ("F", 4, 6)], "none hides what another covers"
    assert batch.take() == [] and len(batch) == 0


def test_the_sdk_acks_every_fifty_messages_and_keeps_an_unsent_ack() -> None:
    acks = Acks()
    assert acks.take() is None
    assert not any(acks.processed("E", n) for n in range(1, EVERY))
    assert acks.processed("E", EVERY), "the 50th message sends at once"
    frame = acks.take()
    assert frame == {"type": "ack", "stream": "user", "epoch": "E", "offset": EVERY}
    assert not acks.processed("F", 1), "a new epoch counts from one again"
    acks.put_back(frame)  # a newer ack is pending: the old one is not put back over it
    assert acks.take() == {"type": "ack", "stream": "user", "epoch": "F", "offset": 1}
    acks.put_back(frame)
    assert acks.take() == frame


def test_an_acks_hash_is_read_back_skipping_what_the_script_did_not_write() -> None:
    best, sessions = parse_acks({"_max": "E 9", "s1": "c1 E 9 1700", "s0": "c0 E 4 1600",
                                 "junk": "no", "s2": "c2 E x 1"})
    assert best == Position("E", 9)
    assert [(s.session, s.conn, s.acked.offset, s.acked_ms) for s in sessions] == [
        ("s0", "c0", 4, 1600), ("s1", "c1", 9, 1700)]
