// What the Node tests share: timeouts, the WebSocket to use, the test's control
// server (tests/clients/test_js.py: tokens, SQL, the relay stopped and
// started), and events waited for without sleeping.

import { randomUUID } from "node:crypto";

/** The unit of every wait, scaled as the Python tests' (TEST_TIMEOUT_SCALE). */
export const WAIT = 5000 * Number(process.env.TEST_TIMEOUT_SCALE ?? "1");

/** Node 22's global WebSocket, else ws's (Node 20). */
export const WebSocket = globalThis.WebSocket ?? (await import("ws")).default;

export const RELAY = process.env.NEXUS_TEST_RELAY;

export async function control(path, body = {}) {
  const response = await fetch(`${process.env.NEXUS_TEST_CONTROL}${path}`, {
    method: "POST",
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`control ${path}: ${answer.error}`);
  return answer;
}

/** A token provider for a demo user (alice, bob, grace) that counts its calls. */
export function tokens(user, options = {}) {
  const provider = async () => {
    provider.calls += 1;
    return (await control("/token", { user, ...options })).token;
  };
  provider.calls = 0;
  return provider;
}

export function unique(text) {
  return `${text} ${randomUUID().slice(0, 8)}`;
}

/** Bob writes on CASE-AB000001, which Alice and Bob may read. */
export async function bobWrites(body) {
  await control("/sql", {
    sql:
      "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)" +
      " VALUES ('CASE-AB000001', 'TNT-BETA0001', 'USR-BOB00001', %s)",
    params: [body],
  });
}

/**
 * Events as they arrive, taken by predicate: take() returns the first one not
 * taken yet that matches, waiting for it up to `timeout`.
 */
export class Events {
  #items = [];
  #waiters = [];

  push(value) {
    this.#items.push({ value, taken: false });
    for (const waiter of this.#waiters.slice()) {
      if (this.#give(waiter)) this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
    }
  }

  /** Every event received, taken or not. */
  get values() {
    return this.#items.map((item) => item.value);
  }

  take(predicate = () => true, timeout = WAIT) {
    return new Promise((resolve, reject) => {
      const waiter = { predicate, resolve };
      if (this.#give(waiter)) return;
      this.#waiters.push(waiter);
      waiter.timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        reject(new Error(`no such event within ${timeout} ms; seen: ${JSON.stringify(this.values)}`));
      }, timeout);
    });
  }

  #give(waiter) {
    const index = this.#items.findIndex((item) => !item.taken && waiter.predicate(item.value));
    if (index < 0) return false;
    const item = this.#items[index];
    item.taken = true;
    clearTimeout(waiter.timer);
    waiter.resolve(item.value);
    return true;
  }
}

/** Record an emitter's `kind` events (their first argument). */
export function record(emitter, kind) {
  const events = new Events();
  emitter.on(kind, (value) => events.push(value));
  return events;
}
