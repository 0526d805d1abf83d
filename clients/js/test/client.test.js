// The client on a fake WebSocket: what it sends, and what it does on each close
// code, without a relay. The relay's answers are written here by hand, as
// docs/protocol.md gives them.

import assert from "node:assert/strict";
import { test } from "node:test";

import { RelayClient, SUBPROTOCOL } from "../src/index.js";
import { record } from "./support.js";

class FakeSocket {
  static opened = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.opened.push(this);
  }

  send(data) {
    this.sent.push(JSON.parse(data));
  }

  close(code = 1000, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }

  // --- The relay's side ---
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  lastSent(type) {
    return this.sent.filter((frame) => frame.type === type).at(-1);
  }

  // Authenticate: answer the auth frame with `ready`.
  ready(extra = {}) {
    this.open();
    const auth = this.lastSent("auth");
    this.receive({ type: "ready", version: 1, position: "L:1.0", user: "U", expires_at: 4102444800, ref: auth.ref, ...extra });
    return auth;
  }
}

async function nextSocket(count) {
  for (let i = 0; i < 200 && FakeSocket.opened.length < count; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(FakeSocket.opened.length, count, "no new socket");
  return FakeSocket.opened[count - 1];
}

function fakeClient(t, options = {}) {
  FakeSocket.opened = [];
  const provider = async () => {
    provider.calls += 1;
    return `token-${provider.calls}`;
  };
  provider.calls = 0;
  const client = new RelayClient({
    url: "ws://relay.test/",
    token: provider,
    WebSocket: FakeSocket,
    reconnectFirstMs: 1,
    reconnectMaxMs: 4,
    logger: null,
    ...options,
  });
  t.after(() => client.close());
  return { client, provider };
}

test("it offers the subprotocol and authenticates with the provider's token", async (t) => {
  const { client } = fakeClient(t);
  const connected = client.connect();
  const socket = await nextSocket(1);
  assert.deepEqual(socket.protocols, [SUBPROTOCOL]);
  assert.equal(socket.ready().token, "token-1");
  assert.equal((await connected).user, "U");
  assert.equal(client.status, "live"); // nothing to wait for
  // A token that lasts for decades is not refreshed at once (a timer over 32 bits would fire now).
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(socket.lastSent("refresh"), undefined);
});

test("after a reconnect it resumes from the last position, with the same token", async (t) => {
  const { client, provider } = fakeClient(t);
  const messages = client.subscribe("nexus_case_messages", { filter: "case_id=eq.C1", select: ["body"] });
  client.connect();
  const first = await nextSocket(1);
  first.ready();
  const subscribe = first.lastSent("subscribe");
  assert.deepEqual(
    { table: subscribe.table, filter: subscribe.filter, select: subscribe.select, since: subscribe.since },
    { table: "nexus_case_messages", filter: "case_id=eq.C1", select: ["body"], since: undefined },
  );
  first.receive({ type: "subscribed", id: "s1", position: "L:1.0", resumed: false, resume_token: "R1", ref: subscribe.ref });
  first.receive({ type: "change", subscriptions: ["s1"], op: "INSERT", position: "L:2.7", new: { body: "a" } });
  first.receive({ type: "refreshed", resume_tokens: { s1: "R2" } }); // not asked for: ignored
  first.close(1006);

  const second = await nextSocket(2);
  assert.equal(second.ready().token, "token-1"); // kept: a resume needs it
  assert.equal(provider.calls, 1);
  const again = second.lastSent("subscribe");
  assert.deepEqual([again.since, again.resume_token], ["L:2.7", "R1"]);
  second.receive({ type: "subscribed", id: "s4", position: "L:3.0", resumed: true, resume_token: "R3", ref: again.ref });
  // While replaying, the resume point stays where it was, until "replayed".
  second.receive({ type: "change", subscriptions: ["s4"], op: "INSERT", position: "L:2.9", new: { body: "b" } });
  assert.equal(messages.position, "L:2.7");
  second.receive({ type: "replayed", id: "s4", position: "L:3.0" });
  assert.deepEqual(messages.resumePoint, { since: "L:3.0", resumeToken: "R3" });
  assert.equal(messages.id, "s4");
});

test("4003 and 4010 ask the provider for a new token; 4001 stops", async (t) => {
  const { client, provider } = fakeClient(t);
  const disconnects = record(client, "disconnect");
  client.connect();
  (await nextSocket(1)).ready();
  FakeSocket.opened[0].receive({ type: "closing", code: 4010, reason: "token_revoked", message: "" });
  FakeSocket.opened[0].close(4010, "token_revoked");
  assert.equal((await disconnects.take()).closing.reason, "token_revoked");
  assert.equal((await nextSocket(2)).ready().token, "token-2");
  FakeSocket.opened[1].close(4003);
  assert.equal((await nextSocket(3)).ready().token, "token-3");
  FakeSocket.opened[2].close(1001);
  assert.equal((await nextSocket(4)).ready().token, "token-3");

  const closes = record(client, "close");
  FakeSocket.opened[3].close(4001, "invalid_token");
  assert.deepEqual(await closes.take(), { code: 4001, reason: "invalid_token" });
  assert.equal(client.status, "closed");
  assert.equal(provider.calls, 3);
});

test("backoff doubles up to its maximum, each delay at 50% to 150% of it", async (t) => {
  const delays = [];
  const realSetTimeout = globalThis.setTimeout;
  const { client } = fakeClient(t, { reconnectFirstMs: 500, reconnectMaxMs: 4000 });
  globalThis.setTimeout = (callback, ms, ...args) => {
    if (ms >= 250) delays.push(ms);
    return realSetTimeout(callback, 0, ...args);
  };
  t.after(() => {
    globalThis.setTimeout = realSetTimeout;
  });
  client.connect();
  for (let n = 1; n <= 6; n++) (await nextSocket(n)).close(1006);
  await nextSocket(7);
  globalThis.setTimeout = realSetTimeout;
  const reconnects = delays.filter((ms) => ms !== 10000); // not the connect timeouts
  const bases = [500, 1000, 2000, 4000, 4000, 4000];
  assert.equal(reconnects.length, bases.length);
  reconnects.forEach((ms, i) => assert.ok(ms >= bases[i] * 0.5 && ms <= bases[i] * 1.5, `${ms} for ${bases[i]}`));
});

test("no pong in time: the connection is dropped and replaced", async (t) => {
  const { client } = fakeClient(t, { pingIntervalMs: 5, pongTimeoutMs: 5 });
  const disconnects = record(client, "disconnect");
  client.connect();
  (await nextSocket(1)).ready();
  const lost = await disconnects.take();
  assert.deepEqual([lost.code, lost.reason], [1006, "no pong"]);
  assert.ok(FakeSocket.opened[0].lastSent("ping"));
  await nextSocket(2);
});

test("token_expiring: a refresh with the provider's new token, and the new resume tokens", async (t) => {
  const { client } = fakeClient(t);
  const messages = client.subscribe("nexus_payments");
  client.connect();
  const socket = await nextSocket(1);
  socket.ready();
  const subscribe = socket.lastSent("subscribe");
  socket.receive({ type: "subscribed", id: "s1", position: "L:1.0", resumed: false, resume_token: "R1", ref: subscribe.ref });
  socket.receive({ type: "token_expiring", expires_at: 4102444800, seconds_left: 60 });
  for (let i = 0; i < 100 && !socket.lastSent("refresh"); i++) await new Promise((r) => setTimeout(r, 1));
  const refresh = socket.lastSent("refresh");
  assert.equal(refresh.token, "token-2");
  socket.receive({ type: "refreshed", expires_at: 4102444900, resume_tokens: { s1: "R9" }, ref: refresh.ref });
  await new Promise((r) => setTimeout(r, 1));
  assert.equal(messages.resumeToken, "R9");
  socket.close(1006);
  assert.equal((await nextSocket(2)).ready().token, "token-2"); // the new one, from now on
});

test("a resume the relay refuses with an error subscribes again from now, with a gap", async (t) => {
  const { client } = fakeClient(t);
  const messages = client.subscribe("nexus_payments", { since: "epoch:12", resumeToken: "old" });
  const gaps = record(messages, "gap");
  client.connect();
  const socket = await nextSocket(1);
  socket.ready();
  const resume = socket.lastSent("subscribe");
  assert.equal(resume.since, "epoch:12");
  socket.receive({ type: "error", code: "invalid_position", message: "not a position", ref: resume.ref });
  const fresh = socket.lastSent("subscribe");
  assert.equal(fresh.since, undefined);
  assert.equal(client.status, "connecting"); // not live until it is
  socket.receive({ type: "subscribed", id: "s2", position: "L:5.0", resumed: false, resume_token: "R", ref: fresh.ref });
  assert.deepEqual(await gaps.take(), { type: "gap", subscriptions: ["s2"], reason: "invalid_position", position: "L:5.0" });
  assert.equal(client.status, "live");
});

test("presence diffs: leaves by phx_ref first, then joins", async (t) => {
  const { client } = fakeClient(t);
  const room = client.join("case:C1", { presenceKey: "A" });
  client.connect();
  const socket = await nextSocket(1);
  socket.ready();
  const join = socket.lastSent("join");
  assert.deepEqual(join.presence, { key: "A" });
  socket.receive({
    type: "joined",
    topic: "case:C1",
    ref: join.ref,
    presence_state: { B: { metas: [{ name: "Bob", phx_ref: "1" }] } },
  });
  socket.receive({
    type: "presence_diff",
    topic: "case:C1",
    joins: { B: { metas: [{ name: "Bob Baker", phx_ref: "2", phx_ref_prev: "1" }] }, A: { metas: [{ phx_ref: "3" }] } },
    leaves: { B: { metas: [{ name: "Bob", phx_ref: "1" }] } },
  });
  assert.deepEqual(room.presence, { B: [{ name: "Bob Baker", phx_ref: "2", phx_ref_prev: "1" }], A: [{ phx_ref: "3" }] });
  socket.receive({ type: "presence_diff", topic: "case:C1", joins: {}, leaves: { B: { metas: [{ phx_ref: "2" }] } } });
  assert.deepEqual(Object.keys(room.presence), ["A"]);
  // The relay ends the membership: out, and not joined again.
  const lefts = record(room, "left");
  socket.receive({ type: "left", topic: "case:C1", reason: "topic_not_allowed" });
  assert.deepEqual(await lefts.take(), { reason: "topic_not_allowed" });
  assert.equal(client.rooms.size, 0);
});

test("a replay cut short starts again from the same since, and delivers nothing twice", async (t) => {
  const { client } = fakeClient(t);
  const messages = client.subscribe("nexus_payments", { since: "L:1.0", resumeToken: "R" });
  const changes = record(messages, "change");
  const all = record(client, "change");
  client.connect();
  const first = await nextSocket(1);
  first.ready();
  let resume = first.lastSent("subscribe");
  first.receive({ type: "subscribed", id: "s1", position: "L:9.0", resumed: true, resume_token: "R2", ref: resume.ref });
  first.receive({ type: "change", subscriptions: ["s1"], op: "INSERT", position: "L:2.1", new: { n: 1 } });
  first.close(1006); // before "replayed"
  const second = await nextSocket(2);
  second.ready();
  resume = second.lastSent("subscribe");
  assert.equal(resume.since, "L:1.0"); // the same since: the replay was not whole
  second.receive({ type: "subscribed", id: "s1", position: "L:9.0", resumed: true, resume_token: "R3", ref: resume.ref });
  second.receive({ type: "change", subscriptions: ["s1"], op: "INSERT", position: "L:2.1", new: { n: 1 } });
  second.receive({ type: "change", subscriptions: ["s1"], op: "INSERT", position: "L:3.1", new: { n: 2 } });
  second.receive({ type: "replayed", id: "s1", position: "L:9.0" });
  second.receive({ type: "change", subscriptions: ["s1"], op: "INSERT", position: "L:10.1", new: { n: 3 } });
  assert.deepEqual(changes.values.map((change) => change.new.n), [1, 2, 3]);
  assert.deepEqual(all.values.map((change) => change.new.n), [1, 2, 3]);
  assert.equal(messages.position, "L:10.1");
});
