// The client against a real relay (started by tests/clients/test_js.py):
// subscribe, changes, a relay restart with no loss, token refresh, revocation,
// and the two ways it stops.

import assert from "node:assert/strict";
import { test } from "node:test";

import { RelayClient, RelayClosedError } from "../src/index.js";
import { RELAY, WAIT, WebSocket, bobWrites, control, record, tokens, unique } from "./support.js";

const CASE_MESSAGES = { filter: "case_id=eq.CASE-AB000001" };

function newClient(t, token, options = {}) {
  const client = new RelayClient({ url: RELAY, token, WebSocket, reconnectFirstMs: 100, reconnectMaxMs: 1000, ...options });
  t.after(() => client.close());
  return client;
}

const bodyIs = (body) => (change) => change.new?.body === body;

test("subscribes, receives a change, and unsubscribes", async (t) => {
  const client = newClient(t, tokens("alice"));
  const statuses = record(client, "status");
  const messages = client.subscribe("nexus_case_messages", CASE_MESSAGES);
  const changes = record(messages, "change");
  const ready = await client.connect();
  assert.equal(ready.user, "USR-ALIC0001");
  const ack = await messages.subscribed;
  assert.equal(ack.table, "public.nexus_case_messages");
  assert.equal(ack.resumed, false);
  await statuses.take((status) => status === "live");

  const body = unique("Hello from Node");
  await bobWrites(body);
  const change = await changes.take(bodyIs(body));
  assert.equal(change.op, "INSERT");
  assert.deepEqual(change.subscriptions, [messages.id]);
  assert.equal(messages.position, change.position);
  assert.notEqual(messages.resumePoint, null);

  await messages.unsubscribe();
  assert.equal(messages.state, "closed");
  const fence = client.subscribe("nexus_case_messages", CASE_MESSAGES);
  const fenced = record(fence, "change");
  await fence.subscribed;
  const after = unique("After the unsubscribe");
  await bobWrites(after);
  await fenced.take(bodyIs(after));
  assert.equal(changes.values.length, 1); // nothing more for the one unsubscribed
});

test("a refused subscription rejects, and the connection carries on", async (t) => {
  const client = newClient(t, tokens("alice"));
  await client.connect();
  const refused = client.subscribe("nexus_case_messages", { filter: "nope=eq.1" });
  await assert.rejects(refused.subscribed, { name: "RelayRequestError", code: "invalid_filter" });
  assert.equal(refused.state, "closed");
  assert.deepEqual(client.subscriptions, []);
  const pong = await client.request({ type: "ping" });
  assert.equal(pong.type, "pong");
});

test("after the relay restarts, it resumes each subscription with no loss", async (t) => {
  const client = newClient(t, tokens("alice"));
  const disconnects = record(client, "disconnect");
  const statuses = record(client, "status");
  const messages = client.subscribe("nexus_case_messages", CASE_MESSAGES);
  const changes = record(messages, "change");
  const acks = record(messages, "subscribed");
  const gaps = record(messages, "gap");
  const replayed = record(messages, "replayed");
  await client.connect();
  await acks.take();
  const before = unique("Before the restart");
  await bobWrites(before);
  const seen = await changes.take(bodyIs(before));
  const { since, resumeToken } = messages.resumePoint;
  assert.equal(since, seen.position);

  await control("/relay", { action: "stop" });
  await disconnects.take();
  await statuses.take((status) => status === "reconnecting");
  const missed = [unique("Missed 1"), unique("Missed 2"), unique("Missed 3")];
  for (const body of missed) await bobWrites(body);
  await control("/relay", { action: "start" });

  const resumed = await acks.take(() => true, 4 * WAIT);
  assert.equal(resumed.resumed, true);
  for (const body of missed) await changes.take(bodyIs(body));
  const end = await replayed.take();
  assert.equal(messages.position, end.position);
  assert.notEqual(messages.resumeToken, resumeToken);
  await statuses.take((status) => status === "live");
  const live = unique("Live again");
  await bobWrites(live);
  await changes.take(bodyIs(live));
  // In order, each once, and no gap: nothing was lost.
  const bodies = changes.values.map((change) => change.new.body);
  assert.deepEqual(bodies, [before, ...missed, live]);
  assert.deepEqual(gaps.values, []);
});

test("refreshes its token when the relay says it expires, on the same connection", async (t) => {
  // The relay warns 60 s before exp (RELAY_TOKEN_EXPIRY_WARNING_S): a token of
  // 62 s is warned about at once; refreshBeforeS 0 leaves it to the relay.
  const provider = tokens("alice", { expires_in: 62 });
  const client = newClient(t, provider, { refreshBeforeS: 0 });
  const readies = record(client, "ready");
  const disconnects = record(client, "disconnect");
  const messages = client.subscribe("nexus_case_messages", CASE_MESSAGES);
  const changes = record(messages, "change");
  await client.connect();
  await messages.subscribed;
  const first = messages.resumeToken;
  const deadline = Date.now() + 2 * WAIT;
  while (provider.calls < 2 || messages.resumeToken === first) {
    assert.ok(Date.now() < deadline, `no refresh: ${provider.calls} token(s)`);
    await new Promise((resolve) => setTimeout(resolve, 50)); // polls what the client did
  }
  const body = unique("After the refresh");
  await bobWrites(body);
  await changes.take(bodyIs(body));
  assert.equal(readies.values.length, 1);
  assert.deepEqual(disconnects.values, []);
});

test("a revoked token is replaced by a new one from the provider", async (t) => {
  const provider = tokens("bob");
  const client = newClient(t, provider);
  const disconnects = record(client, "disconnect");
  const messages = client.subscribe("nexus_case_messages", CASE_MESSAGES);
  const acks = record(messages, "subscribed");
  const changes = record(messages, "change");
  const gaps = record(messages, "gap");
  await client.connect();
  await acks.take();

  await control("/sql", { sql: "SELECT relay.revoke('USR-BOB00001', 'test')" });
  const closed = await disconnects.take();
  assert.equal(closed.code, 4010);
  assert.equal(closed.closing.reason, "token_revoked");
  // A resume across a revocation is refused (docs/protocol.md): a gap, then live.
  await acks.take();
  const gap = await gaps.take();
  assert.equal(gap.reason, "resume_refused");
  assert.equal(provider.calls, 2);
  const body = unique("After the revocation");
  await bobWrites(body);
  await changes.take(bodyIs(body));
});

test("a token the relay refuses (4001) stops the client", async (t) => {
  const provider = tokens("alice", { secret: "another-secret-of-at-least-32-bytes-long" });
  const client = newClient(t, provider);
  const closes = record(client, "close");
  await assert.rejects(client.connect(), (error) => error instanceof RelayClosedError && error.code === 4001);
  const stopped = await closes.take();
  assert.equal(stopped.code, 4001);
  assert.equal(client.status, "closed");
  assert.equal(provider.calls, 1);
});

test("no token from the provider (signed out) stops the client", async (t) => {
  const client = newClient(t, async () => null);
  await assert.rejects(client.connect(), RelayClosedError);
  assert.deepEqual(client.stopReason, { code: null, reason: "no_token" });
  assert.equal(client.status, "closed");
});

test("another client resumes from a kept resume point, with the same token", async (t) => {
  // A resume needs the token the subscription was covered with, or one issued
  // before its resume token (docs/protocol.md, "Resuming"): a process that
  // keeps both resumes where the last one stopped.
  const token = await tokens("alice")();
  const first = newClient(t, () => token);
  const messages = first.subscribe("nexus_case_messages", CASE_MESSAGES);
  await first.connect();
  await messages.subscribed;
  const point = messages.resumePoint;
  await first.close();
  const missed = unique("While no client ran");
  await bobWrites(missed);

  const second = newClient(t, () => token);
  const again = second.subscribe("nexus_case_messages", { ...CASE_MESSAGES, ...point });
  const changes = record(again, "change");
  const replayed = record(again, "replayed");
  const gaps = record(again, "gap");
  await second.connect();
  const ack = await again.subscribed;
  assert.equal(ack.resumed, true);
  await changes.take(bodyIs(missed));
  await replayed.take();
  assert.deepEqual(gaps.values, []);
});

test("with a token issued after its resume token, a resume is refused: a gap", async (t) => {
  const first = newClient(t, tokens("alice"));
  const messages = first.subscribe("nexus_case_messages", CASE_MESSAGES);
  await first.connect();
  await messages.subscribed;
  const point = messages.resumePoint;
  await first.close();

  const second = newClient(t, tokens("alice"));
  const again = second.subscribe("nexus_case_messages", { ...CASE_MESSAGES, ...point });
  const gaps = record(again, "gap");
  await second.connect();
  assert.equal((await again.subscribed).resumed, false);
  assert.equal((await gaps.take()).reason, "resume_refused");
});
