// The SDK under Node, with the `ws` package injected, against a live cluster (redis-server, a
// router, two gateways sharing one port): what an application using it would notice.
// tests/integration/test_js_sdk.py starts the cluster and runs this file; see cluster.js.

import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import WebSocket from "ws";

import { Switchboard } from "../switchboard.js";
import { Gate, liveCluster, record, uniqueName, until } from "./cluster.js";

const cluster = liveCluster(); // throws, failing every test here, when no cluster is given
const T = { timeout: 30_000 };

const clients = [];
function client(options) {
  const sb = new Switchboard(cluster.gatewayUrl, { WebSocket, ...options });
  clients.push(sb);
  return sb;
}
afterEach(() => {
  for (const sb of clients.splice(0)) sb.close();
});

/** The messages of one stream as [epoch, offset, data]. */
function stream(log, name) {
  return log.messages.filter((m) => m.stream === name).map((m) => [m.epoch, m.offset, m.data]);
}

test("unicast and broadcast published through the router arrive once each, in order", T,
  async () => {
    const user = uniqueName("alice");
    const sb = client({ token: cluster.token(user) });
    const log = record(sb);
    const welcome = await sb.connect();
    assert.equal(welcome.user, user);
    assert.deepEqual([sb.state, sb.transport, sb.user], ["open", "websocket", user]);

    const sent = [];
    for (let n = 0; n < 5; n++) sent.push([await cluster.publish({ user }, { n }), { n }]);
    const everyone = await cluster.publish({ broadcast: true }, "hello everyone");
    await until(() => stream(log, "user").length === 5, "5 unicast messages");
    await until(() => stream(log, "broadcast").length === 1, "the broadcast");

    assert.deepEqual(stream(log, "user"), sent.map(([r, data]) => [r.epoch, r.offset, data]));
    assert.deepEqual(stream(log, "broadcast"),
      [[everyone.epoch, everyone.offset, "hello everyone"]]);
    assert.equal(sb.positions.user.offset, sent[4][0].offset);
  });

test("subscribe to a channel, get what the router publishes there; a refused one is dropped", T,
  async () => {
    const channel = uniqueName("room");
    const sb = client({ token: cluster.token(uniqueName("bob"), { channels: [channel] }) });
    const log = record(sb);
    await sb.connect();

    sb.subscribe(channel);
    await until(() => log.of("subscribed").find((e) => e.channel === channel), "subscribed");
    const r = await cluster.publish({ channel }, { text: "hi" });
    const m = await until(() => log.messages.find((e) => e.stream === `ch.${channel}`),
      "the channel message");
    assert.deepEqual(m, { stream: `ch.${channel}`, epoch: r.epoch, offset: r.offset,
      data: { text: "hi" } });

    sb.subscribe("not-allowed");
    const refusal = await until(() => log.of("error").find((e) => e.channel === "not-allowed"),
      "the refusal");
    assert.deepEqual([refusal.code, refusal.fatal], ["forbidden", false]);
    assert.deepEqual(sb.channels, [channel]);
  });

test("a client publishes to a channel: acknowledged with its offset, delivered to subscribers", T,
  async () => {
    const channel = uniqueName("chat");
    const reader = client({ token: cluster.token(uniqueName("reader"), { channels: [channel] }),
      channels: [channel] });
    const readerLog = record(reader);
    await reader.connect();
    await until(() => readerLog.of("subscribed").length === 1, "the connect-time subscription");

    const writer = client({ token: cluster.token(uniqueName("writer"), { publish: [channel] }) });
    await writer.connect();
    const ack = await writer.publish(channel, { text: "from node" });
    assert.equal(ack.channel, channel);
    const m = await until(() => readerLog.messages[0], "the published message");
    assert.deepEqual(m, { stream: `ch.${channel}`, epoch: ack.epoch, offset: ack.offset,
      data: { text: "from node" } });

    await assert.rejects(writer.publish(uniqueName("elsewhere"), 1),
      (err) => err.code === "forbidden");
    assert.equal(writer.state, "open");
  });

test("disconnected by the router (4201), it resumes with nothing lost or repeated", T,
  async () => {
    const user = uniqueName("carol");
    const gate = new Gate(WebSocket);
    const sb = client({ token: cluster.token(user), WebSocket: gate.WebSocket });
    const log = record(sb);
    await sb.connect();
    const sent = [];
    for (let n = 0; n < 3; n++) sent.push(await cluster.publish({ user }, n));
    await until(() => log.messages.length === 3, "the first 3 messages");

    gate.hold(); // the client's reconnect waits until we published while it was away
    await cluster.disconnect(user, 4201, "moving you");
    const closed = await until(() => log.of("state").find((e) => e.code === 4201),
      "the close 4201");
    assert.equal(closed.state, "reconnecting");
    for (let n = 3; n < 8; n++) sent.push(await cluster.publish({ user }, n));
    gate.release();

    await until(() => log.of("welcome").length === 2, "the second welcome");
    await until(() => log.messages.length >= 8, "all 8 messages");
    // one more, so that a duplicate of the replay would have arrived by now
    sent.push(await cluster.publish({ user }, 8));
    await until(() => log.messages.length >= 9, "the last message");

    assert.deepEqual(stream(log, "user"), sent.map((r, n) => [r.epoch, r.offset, n]));
    const offsets = log.messages.map((m) => m.offset);
    assert.deepEqual(offsets, offsets.map((_, i) => offsets[0] + i), "contiguous offsets");
    const resumed = log.of("recovered")[1];
    assert.deepEqual([resumed.recovered, resumed.resumed, resumed.initial, resumed.via],
      [true, true, false, "cursor"]);
    assert.deepEqual([sb.stats.reconnects, sb.stats.gaps, sb.stats.lost, gate.opened],
      [1, 0, 0, 2]);
  });

test("a terminal close from the router (4003) stops the client for good", T, async () => {
  const user = uniqueName("dave");
  const gate = new Gate(WebSocket);
  const sb = client({ token: cluster.token(user), WebSocket: gate.WebSocket });
  const log = record(sb);
  await sb.connect();
  await cluster.disconnect(user, 4003, "banned");
  const fatal = await until(() => log.of("error").find((e) => e.fatal), "the fatal error");
  assert.equal(fatal.code, 4003);
  assert.equal(sb.state, "closed");
  assert.equal(gate.opened, 1, "no reconnect after a terminal close");
});

test("a bad token without a tokenProvider: connect() rejects, with a fatal auth error", T,
  async () => {
    const forged = cluster.token(uniqueName("mallory"), { secret: "not-the-secret" });
    const sb = client({ token: forged });
    const log = record(sb);
    // Node's ws, like a browser, shows a refused handshake as close 1006; the SDK's probe
    // (a plain fetch of the same URL) finds the 401.
    await assert.rejects(sb.connect(), (err) => err.code === 401);
    const errors = log.of("error");
    assert.deepEqual(errors.map((e) => [e.code, e.fatal]), [[401, true]]);
    assert.equal(sb.state, "closed");
  });

test("a refused token is replaced through tokenProvider", T, async () => {
  const user = uniqueName("erin");
  let asked = 0;
  const sb = client({
    token: cluster.token(user, { secret: "not-the-secret" }),
    tokenProvider: async () => { asked += 1; return cluster.token(user); },
  });
  const welcome = await sb.connect();
  assert.equal(welcome.user, user);
  assert.equal(asked, 1);
});

test("close() while connecting, then connect() again: resumes what was published meanwhile", T,
  async () => {
    const user = uniqueName("frank");
    const sb = client({ token: cluster.token(user) });
    const log = record(sb);
    const first = sb.connect();
    sb.close(); // with ws, a close during the handshake is an error event: must not crash
    await assert.rejects(first, /closed/);

    await sb.connect();
    const before = await cluster.publish({ user }, "before");
    await until(() => log.messages.length === 1, "the first message");
    sb.close();
    const away = await cluster.publish({ user }, "while closed");
    await sb.connect();
    await until(() => log.messages.length === 2, "the message published while closed");
    assert.deepEqual(stream(log, "user"), [[before.epoch, before.offset, "before"],
      [away.epoch, away.offset, "while closed"]]);
    assert.equal(log.of("recovered").at(-1).recovered, true);
  });

test("a watcher is told who joins and leaves its channel; a client that did not opt in is not",
  T, async () => {
    const channel = uniqueName("lobby");
    const watcher = client({ token: cluster.token(uniqueName("wes"),
      { channels: [channel], presence: [channel] }), channels: [channel] });
    const log = record(watcher);
    await watcher.connect();
    await until(() => log.of("subscribed").length === 1, "the watcher's subscription");
    const mine = await until(() => log.presence[0], "the watcher's own join");

    const ann = uniqueName("ann");
    const guest = client({ token: cluster.token(ann, { channels: [channel],
      presence: [channel] }) });
    const plain = client({ token: cluster.token(uniqueName("pat"), { channels: [channel] }),
      channels: [channel] });
    const plainLog = record(plain);
    await plain.connect();
    await guest.connect();
    guest.subscribe(channel);
    const join = await until(() => log.presence.find((e) => e.user === ann),
      "ann's join");
    guest.close();
    const leave = await until(() => log.presence.find(
      (e) => e.user === ann && e.event === "leave"), "ann's leave");
    assert.deepEqual([mine.event, join.event, join.channel], ["join", "join", channel]);
    assert.equal(leave.conn, join.conn);
    assert.notEqual(join.conn, mine.conn);
    const r = await cluster.publish({ channel }, "after");
    assert.equal(r.offset, 1); // presence takes no offsets
    await until(() => plainLog.messages.length === 1, "the plain subscriber's message");
    assert.equal(plainLog.presence.length, 0);
  });

test("the user stream's processed messages are acked: within a second, at close, and never "
  + "with ack: false", T, async () => {
  const user = uniqueName("ida");
  const sb = client({ token: cluster.token(user) });
  const log = record(sb);
  await sb.connect();
  const quiet = client({ token: cluster.token(user), ack: false });
  await quiet.connect();
  const first = await cluster.publish({ user }, 1);
  await until(() => stream(log, "user").length === 1, "the first message");
  const acked = async (offset) => {
    const p = await cluster.positions(user);
    return p.sessions.find((s) => s.session === sb.session && s.acked
      && s.acked.offset === offset);
  };
  const row = await until(() => acked(1), "the timer's ack of offset 1", 5000);
  assert.equal(row.acked.epoch, first.epoch);
  await cluster.publish({ user }, 2);
  await until(() => stream(log, "user").length === 2, "the second message");
  sb.close(); // sends what is pending before the close frame
  await until(() => acked(2), "the ack sent at close");
  const p = await cluster.positions(user);
  assert.equal(p.acked.offset, 2);
  assert.equal(p.sessions.filter((s) => s.session === quiet.session).length, 0);
});
