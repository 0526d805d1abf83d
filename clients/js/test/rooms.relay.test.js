// Rooms against a real relay: presence and broadcast between Alice and Bob on
// their case's room, a refusal for Grace, and both back in the room after the
// relay restarts.

import assert from "node:assert/strict";
import { test } from "node:test";

import { RelayClient } from "../src/index.js";
import { RELAY, WAIT, WebSocket, control, record, tokens } from "./support.js";

const TOPIC = "case:CASE-AB000001";
const KEYS = { alice: "USR-ALIC0001", bob: "USR-BOB00001" };

function person(t, user) {
  const client = new RelayClient({ url: RELAY, token: tokens(user), WebSocket, reconnectFirstMs: 100, reconnectMaxMs: 1000 });
  t.after(() => client.close());
  const room = client.join(TOPIC, { presenceKey: KEYS[user] });
  room.track({ name: user });
  return { client, room, presence: record(room, "presence"), broadcasts: record(room, "broadcast") };
}

const shows = (...keys) => (state) => JSON.stringify(Object.keys(state).sort()) === JSON.stringify(keys.sort());

test("Alice and Bob see each other, broadcast, and leave", async (t) => {
  const alice = person(t, "alice");
  await alice.client.connect();
  await alice.room.joined;
  await alice.presence.take(shows(KEYS.alice));
  const bob = person(t, "bob");
  await bob.client.connect();
  await bob.room.joined;
  await alice.presence.take(shows(KEYS.alice, KEYS.bob));
  await bob.presence.take(shows(KEYS.alice, KEYS.bob));
  assert.equal(alice.room.presence[KEYS.bob].at(-1).name, "bob");

  assert.equal(await bob.room.broadcast("typing", { key: KEYS.bob }), true);
  const typing = await alice.broadcasts.take();
  assert.deepEqual([typing.event, typing.payload], ["typing", { key: KEYS.bob }]);

  await bob.room.track({ name: "Bob Baker" });
  await alice.presence.take((state) => state[KEYS.bob]?.at(-1).name === "Bob Baker");
  assert.equal(alice.room.presence[KEYS.bob].length, 1); // replaced, not added

  const lefts = record(bob.room, "left");
  await bob.room.leave();
  assert.deepEqual(await lefts.take(), { reason: "left" });
  assert.equal(await bob.room.broadcast("typing", {}), false); // not in the room: nothing sent
  await alice.presence.take(shows(KEYS.alice));
  assert.equal(bob.client.rooms.size, 0);
});

test("a room the rules refuse rejects its join", async (t) => {
  const client = new RelayClient({ url: RELAY, token: tokens("grace"), WebSocket });
  t.after(() => client.close());
  const room = client.join(TOPIC, { presence: true });
  const errors = record(room, "error");
  await client.connect();
  await assert.rejects(room.joined, { name: "RelayRequestError", code: "topic_not_allowed" });
  assert.equal((await errors.take()).code, "topic_not_allowed");
  assert.equal(room.state, "closed");
  assert.equal(client.rooms.size, 0);
  assert.throws(() => {
    client.join("case:CASE-AB000001");
    client.join("case:CASE-AB000001");
  }, /already in the room/);
});

test("after the relay restarts, both are back in the room, present again", async (t) => {
  const alice = person(t, "alice");
  const bob = person(t, "bob");
  await Promise.all([alice.client.connect(), bob.client.connect()]);
  await alice.presence.take(shows(KEYS.alice, KEYS.bob));
  const aliceLefts = record(alice.room, "left");
  const aliceJoins = record(alice.room, "joined");

  await control("/relay", { action: "stop" });
  assert.deepEqual(await aliceLefts.take(), { reason: "disconnected" });
  await alice.presence.take((state) => Object.keys(state).length === 0);
  assert.equal(alice.room.isJoined, false);
  await control("/relay", { action: "start" });

  await aliceJoins.take(() => true, 4 * WAIT);
  await alice.presence.take(shows(KEYS.alice, KEYS.bob), 4 * WAIT);
  await bob.presence.take(shows(KEYS.alice, KEYS.bob), 4 * WAIT);
  await bob.room.broadcast("typing", { again: true });
  const typing = await alice.broadcasts.take((frame) => frame.payload.again === true);
  assert.equal(typing.topic, TOPIC);
});
