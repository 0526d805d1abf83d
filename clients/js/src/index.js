/*
 * @nexus-relay/client: a client of Nexus Relay's own protocol, nexus-relay.v1
 * (docs/protocol.md in the relay's repository), for browsers and Node.
 *
 *   const client = new RelayClient({ url: "wss://relay.example.com/", token: getToken });
 *   const payments = client.subscribe("nexus_payments", { filter: "status=eq.pending" });
 *   payments.on("change", (change) => ...).on("gap", () => refetch());
 *   await client.connect();
 *   await payments.subscribed;
 *
 * Subscriptions and rooms are what the caller wants, not what one connection
 * holds: the client keeps them across reconnects. After a connection is lost
 * it reconnects with exponential backoff and jitter, authenticates with the
 * token it had (a resume needs it, docs/protocol.md "Resuming") or a new one
 * from the token provider, resumes every subscription from its last position
 * with its resume token, joins every room again and tracks its presence
 * again. It refreshes the token before it expires (`token_expiring`, and a
 * timer of its own), and heartbeats with ping/pong.
 *
 * One plain ES module without dependencies or build step: a page may serve it
 * as it is under `script-src 'self'`. Node 22 has a global WebSocket; on Node
 * 20 pass `ws`'s: new RelayClient({ ..., WebSocket }) after
 * `import WebSocket from "ws"`.
 */

export const SUBPROTOCOL = "nexus-relay.v1";

// WebSocket's readyState OPEN, the same in browsers and in ws.
const OPEN = 1;

// docs/protocol.md, "Close codes": after these, the token is no good; ask the
// provider for a new one, then reconnect (expired, revoked).
const NEW_TOKEN_CODES = new Set([4003, 4010]);
// The relay refused the token (bad signature, audience, claims, another user's
// on refresh): a new one from the same provider would be refused again, and
// reconnecting would loop. The client stops.
const STOP_CODES = new Set([4001]);

// Refs of requests that are not answered when they succeed (a broadcast in a
// room without ack): kept, at most this many, to route a refusal to its room.
const UNANSWERED_REFS_KEPT = 256;
// A refresh whose token provider failed is tried again after this long (the
// relay closes with 4003 at expiry otherwise, and the client reconnects).
const REFRESH_RETRY_MS = 5000;
// setTimeout fires at once for longer delays (they overflow 32 bits): a token
// that lasts longer is looked at again after this long.
const LONGEST_TIMER_MS = 2 ** 31 - 1;

/** The relay refused a request: `code` is the protocol's error code (docs/protocol.md, "Error codes"). */
export class RelayRequestError extends Error {
  constructor(frame) {
    super(`${frame.code}: ${frame.message}`);
    this.name = "RelayRequestError";
    this.code = frame.code;
    this.frame = frame;
  }
}

/** The connection closed (or the client stopped) before an answer came; `code` and `reason` say why. */
export class RelayClosedError extends Error {
  constructor(code, reason) {
    super(`connection closed (${code}${reason ? `: ${reason}` : ""})`);
    this.name = "RelayClosedError";
    this.code = code;
    this.reason = reason;
  }
}

/** A request that had no answer within its timeout. */
export class RelayTimeoutError extends Error {
  constructor(type, ms) {
    super(`no answer to ${type} within ${ms} ms`);
    this.name = "RelayTimeoutError";
  }
}

class Emitter {
  #handlers = new Map();
  #logger;

  constructor(logger) {
    this.#logger = logger;
  }

  /** Call `handler` on each `kind` event; returns this, to chain. */
  on(kind, handler) {
    if (!this.#handlers.has(kind)) this.#handlers.set(kind, new Set());
    this.#handlers.get(kind).add(handler);
    return this;
  }

  off(kind, handler) {
    this.#handlers.get(kind)?.delete(handler);
    return this;
  }

  listens(kind) {
    return (this.#handlers.get(kind)?.size ?? 0) > 0;
  }

  // A handler that throws is the caller's bug: logged, and the others still run.
  emit(kind, ...args) {
    for (const handler of Array.from(this.#handlers.get(kind) ?? [])) {
      try {
        handler(...args);
      } catch (error) {
        this.#logger?.error?.(`nexus-relay: a "${kind}" handler failed`, error);
      }
    }
  }
}

// A promise whose rejection nobody awaited is no crash (Node ends the process on
// one): the caller who awaits it still sees the rejection.
function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((yes, no) => {
    resolve = yes;
    reject = no;
  });
  promise.catch(() => {});
  return { promise, resolve, reject, settled: false };
}

function settle(pending, how, value) {
  if (pending.settled) return;
  pending.settled = true;
  pending[how](value);
}

// The token's `exp` (unix seconds), read without checking the signature: only
// to know whether it is worth reconnecting with. Null if it is not a JWT.
function expiryOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")));
    return typeof claims.exp === "number" ? claims.exp : null;
  } catch {
    return null;
  }
}

/**
 * One subscription to a table's changes, kept across reconnects: made by
 * RelayClient.subscribe(). Events: "subscribed" (the ack, on every
 * connection), "change", "gap" (re-fetch what it feeds), "replayed",
 * "unsubscribed" (the relay ended it), "error" (a refusal).
 */
export class Subscription extends Emitter {
  #client;
  #ack = deferred();
  // Positions of the changes a replay delivered: a replay cut short by a lost
  // connection starts again from the same since (docs/protocol.md, "Resuming"),
  // and those are not delivered twice. Positions are compared for equality only.
  #replayedPositions = new Set();

  constructor(client, table, options, logger) {
    super(logger);
    this.#client = client;
    this.table = table;
    this.events = options.events ?? "*";
    this.select = options.select ?? null;
    this.filter = options.filter ?? null;
    /** The relay's id for it on the current connection (ids change across connections). */
    this.id = null;
    /** Where a resume starts: the last position received (docs/protocol.md, "Resuming"). */
    this.position = options.since ?? null;
    /** The resume token that lets it resume from `position`. */
    this.resumeToken = options.resumeToken ?? null;
    /** "pending" (waiting for its ack), "live", or "closed" (unsubscribed, refused). */
    this.state = "pending";
    this.replaying = false; // between a resumed ack and "replayed"
    this.resuming = false; // its subscribe frame carried since
    this.lostResume = null; // the code of a refused resume: a gap to emit after the fresh ack
  }

  /** The first ack: resolves with the `subscribed` frame, or rejects with the relay's refusal. */
  get subscribed() {
    return this.#ack.promise;
  }

  /** `{since, resumeToken}` to resume it elsewhere (another process, a later run); null before its first ack. */
  get resumePoint() {
    if (this.position === null || this.resumeToken === null) return null;
    return { since: this.position, resumeToken: this.resumeToken };
  }

  /** Stop receiving its changes; resolves once the relay has answered (at once when not connected). */
  unsubscribe() {
    return this.#client._unsubscribe(this);
  }

  // --- Called by the client -------------------------------------------------------

  _frame() {
    const frame = { type: "subscribe", table: this.table };
    if (this.events !== "*") frame.events = Array.from(this.events);
    if (this.select !== null) frame.select = Array.from(this.select);
    if (this.filter !== null) frame.filter = this.filter;
    this.resuming = this.position !== null && this.resumeToken !== null;
    if (this.resuming) {
      frame.since = this.position;
      frame.resume_token = this.resumeToken;
    }
    return frame;
  }

  _acked(frame) {
    this.id = frame.id;
    this.state = "live";
    this.resumeToken = frame.resume_token;
    // Resumed: the resume point stays where it was until "replayed". Not resumed: from here.
    this.replaying = frame.resumed === true;
    if (!this.replaying) {
      this.position = frame.position;
      this.#replayedPositions.clear();
    }
    settle(this.#ack, "resolve", frame);
    this.emit("subscribed", frame);
    if (this.lostResume !== null) {
      // The relay refused the resume itself (an error, not a gap): what was
      // missed is unknown, so the caller re-fetches, as after any gap.
      const reason = this.lostResume;
      this.lostResume = null;
      this.emit("gap", { type: "gap", subscriptions: [frame.id], reason, position: frame.position });
    }
  }

  _refused(error) {
    this.state = "closed";
    this.id = null;
    settle(this.#ack, "reject", error);
    this.emit("error", error);
  }

  // False: a change this subscription was given already, by a replay cut short.
  _change(frame) {
    if (this.replaying) {
      if (this.#replayedPositions.has(frame.position)) return false;
      this.#replayedPositions.add(frame.position);
    } else {
      this.position = frame.position;
    }
    this.emit("change", frame);
    return true;
  }

  _gap(frame) {
    // A re-fetch now shows at least what was committed up to the gap.
    this.replaying = false;
    this.#replayedPositions.clear();
    this.position = frame.position;
    this.emit("gap", frame);
  }

  _replayed(frame) {
    this.replaying = false;
    this.#replayedPositions.clear();
    this.position = frame.position;
    this.emit("replayed", frame);
  }

  _ended(frame) {
    this.state = "closed";
    this.id = null;
    this.emit("unsubscribed", frame);
  }
}

/**
 * One room (broadcast and presence on a topic), joined again after every
 * reconnect until left: made by RelayClient.join(). Events: "joined" (on
 * every connection), "left" ({reason}: "disconnected", joined again once
 * reconnected; "left" after leave(); or the relay's reason, not joined
 * again), "broadcast" (the frame: event, payload), "presence" (state, and the
 * presence_diff it came from), "error" (a refusal).
 */
export class Room extends Emitter {
  #client;
  #entry = deferred();
  #presence = {};

  constructor(client, topic, options, logger) {
    super(logger);
    this.#client = client;
    this.topic = topic;
    this.presenceKey = options.presenceKey ?? null;
    this.withPresence = Boolean(options.presence) || this.presenceKey !== null;
    this.self = Boolean(options.self);
    this.ack = Boolean(options.ack);
    /** "joining", "joined", or "closed" (left, or refused). */
    this.state = "joining";
    /** The payload tracked, tracked again after each rejoin; null if none. */
    this.tracked = null;
  }

  /** The first `joined`: resolves with the frame, or rejects with the relay's refusal. */
  get joined() {
    return this.#entry.promise;
  }

  get isJoined() {
    return this.state === "joined";
  }

  /** Who is present, by key: `{key: [meta, ...]}`, as the relay's diffs left it. */
  get presence() {
    return Object.fromEntries(Object.entries(this.#presence).map(([key, metas]) => [key, metas.slice()]));
  }

  /**
   * Send `event` to the room's other members (and to oneself with `self`).
   * Resolves false when not in the room now (nothing sent: a broadcast is for
   * the people here now), true once sent; in a room joined with `ack`, once
   * the relay has sent it on, or rejects with its refusal. Without `ack`, a
   * refusal arrives as an "error" event.
   */
  broadcast(event, payload) {
    return this.#client._broadcast(this, event, payload);
  }

  /** Be present with `payload` (an object), now and after every rejoin; resolves with `tracked` (at once when not joined). */
  track(payload) {
    this.tracked = payload;
    return this.#client._roomRequest(this, { type: "track", topic: this.topic, payload });
  }

  /** Stop being present; resolves with `untracked` (at once when not joined). */
  untrack() {
    this.tracked = null;
    return this.#client._roomRequest(this, { type: "untrack", topic: this.topic });
  }

  /** Leave the room for good; resolves once the relay has answered (at once when not connected). */
  leave() {
    return this.#client._leave(this);
  }

  // --- Called by the client -------------------------------------------------------

  _frame() {
    const frame = { type: "join", topic: this.topic, broadcast: { self: this.self, ack: this.ack } };
    if (this.withPresence) frame.presence = { key: this.presenceKey ?? "" };
    return frame;
  }

  _entered(frame) {
    this.state = "joined";
    this.#presence = {};
    for (const [key, value] of Object.entries(frame.presence_state ?? {})) {
      this.#presence[key] = Array.from(value.metas ?? []);
    }
    settle(this.#entry, "resolve", frame);
    this.emit("joined", frame);
    if (this.withPresence) this.emit("presence", this.presence, null);
  }

  // Out of the room: nobody is known to be here any more.
  _exited(reason, closed) {
    const was = this.state === "joined";
    this.state = closed ? "closed" : "joining";
    this.#presence = {};
    if (was) {
      this.emit("left", { reason });
      this.emit("presence", {}, null);
    } else if (closed) {
      this.emit("left", { reason });
    }
  }

  _refused(error) {
    const first = !this.#entry.settled;
    settle(this.#entry, "reject", error);
    this.emit("error", error);
    if (!first) this._exited(error.code, true);
    else this.state = "closed";
  }

  // Leaves first, by phx_ref, then joins: as realtime-js applies a diff (docs/protocol.md, presence_diff).
  _diff(frame) {
    for (const [key, value] of Object.entries(frame.leaves ?? {})) {
      const gone = new Set((value.metas ?? []).map((meta) => meta.phx_ref));
      const metas = (this.#presence[key] ?? []).filter((meta) => !gone.has(meta.phx_ref));
      if (metas.length) this.#presence[key] = metas;
      else delete this.#presence[key];
    }
    for (const [key, value] of Object.entries(frame.joins ?? {})) {
      this.#presence[key] = (this.#presence[key] ?? []).concat(value.metas ?? []);
    }
    this.emit("presence", this.presence, frame);
  }
}

/**
 * A connection to the relay that keeps itself up. Events: "status"
 * ("connecting", "live", "reconnecting", "closed"), "ready" (the frame, on
 * every connection), "change" and "gap" (every subscription's, once per
 * frame), "disconnect" ({code, reason, closing}: the relay's `closing`
 * frame, if it sent one), "close" ({code, reason}: the client stopped for
 * good), "error" (a refusal no request was waiting for).
 */
export class RelayClient extends Emitter {
  // Options
  #url;
  #provider;
  #WebSocket;
  #logger;
  #timing;

  // The connection
  #socket = null;
  #generation = 0; // moves on at each connection and stop: late callbacks of an old one do nothing
  #token = null;
  #expiresAt = null;
  #closing = null; // the relay's `closing` frame on this connection
  #nextRef = 1;
  #pending = new Map(); // ref -> {reply(frame), lost(error)}
  #unanswered = new Map(); // ref -> Room, for refusals of broadcasts without ack
  #setup = new Set(); // refs of the subscribes and joins this connection waits for before "live"
  #byId = new Map(); // subscription id on this connection -> Subscription
  #attempt = 0;
  #timers = {};
  #refreshing = false;
  #connected = null; // deferred of connect()

  // What the caller wants
  #subscriptions = new Set();
  #rooms = new Map(); // topic -> Room
  #stopped = true;

  /** The current status: "idle" (before connect()), "connecting", "live", "reconnecting", "closed". */
  status = "idle";
  /** The `ready` frame of the current connection, null when not authenticated. */
  ready = null;
  /** Why the client stopped: {code, reason}, null while it runs. */
  stopReason = null;

  constructor(options) {
    super(options?.logger === undefined ? console : options.logger);
    if (!options || typeof options.url !== "string") throw new TypeError("RelayClient: options.url is required");
    if (typeof options.token !== "function") {
      throw new TypeError("RelayClient: options.token must be a function that returns a token (or a promise of one)");
    }
    this.#url = options.url;
    this.#provider = options.token;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError(
        "RelayClient: no WebSocket here; pass one as options.WebSocket (on Node 20: import WebSocket from \"ws\")",
      );
    }
    this.#logger = options.logger === undefined ? console : options.logger;
    this.#timing = {
      // Reconnection: the first delay doubles up to the last, each drawn at 50% to 150%.
      reconnectFirstMs: options.reconnectFirstMs ?? 500,
      reconnectMaxMs: options.reconnectMaxMs ?? 30000,
      // Timeouts
      connectTimeoutMs: options.connectTimeoutMs ?? 10000,
      requestTimeoutMs: options.requestTimeoutMs ?? 10000,
      pingIntervalMs: options.pingIntervalMs ?? 25000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10000,
      // Tokens: a token with less than this left is refreshed, and not reconnected with.
      refreshBeforeS: options.refreshBeforeS ?? 60,
    };
  }

  /** The WebSocket of the current connection, or null. */
  get socket() {
    return this.#socket;
  }

  /** The subscriptions the client keeps. */
  get subscriptions() {
    return Array.from(this.#subscriptions);
  }

  /** The rooms the client is in, or joining, by topic. */
  get rooms() {
    return new Map(this.#rooms);
  }

  /**
   * Start (or, after close(), start again): resolves with the next `ready`
   * frame, at once if authenticated now; rejects if the client stops first
   * (close 4001, no token from the provider, close()). While it waits to
   * reconnect, connects now and starts the backoff over.
   */
  connect() {
    if (this.ready !== null && this.#socket !== null) return Promise.resolve(this.ready);
    if (this.#connected === null) this.#connected = deferred();
    const promise = this.#connected.promise;
    if (this.#stopped) {
      this.#stopped = false;
      this.stopReason = null;
      this.#attempt = 0;
      this.#setStatus("connecting");
      this.#start();
    } else if (this.#socket === null && this.#timers.reconnect !== undefined) {
      clearTimeout(this.#timers.reconnect);
      delete this.#timers.reconnect;
      this.#attempt = 0;
      this.#start();
    }
    return promise;
  }

  /**
   * Close the connection and stop reconnecting. Subscriptions and rooms are
   * kept: connect() again resumes them. Resolves once the socket has closed.
   */
  close(code = 1000, reason = "client closed") {
    const socket = this.#socket;
    this.#stop(code, reason);
    if (socket === null || socket.readyState === 3) return Promise.resolve();
    return new Promise((resolve) => {
      const previous = socket.onclose;
      socket.onclose = (event) => {
        previous?.(event);
        resolve();
      };
    });
  }

  /**
   * Subscribe to a table's changes: options events ("*" or a list of INSERT,
   * UPDATE, DELETE), select (columns), filter (docs/protocol.md, "Filters"),
   * and since with resumeToken (a resumePoint kept from before) to first
   * receive what was missed. Sent now if connected, else once connected;
   * kept, and resumed, across reconnects.
   */
  subscribe(table, options = {}) {
    const subscription = new Subscription(this, table, options, this.#logger);
    this.#subscriptions.add(subscription);
    if (this.ready !== null) this.#sendSubscribe(subscription, false);
    return subscription;
  }

  /**
   * Join a room: options presence (receive its presence), presenceKey (one's
   * key in it: several connections of one key are one person), self (receive
   * one's own broadcasts), ack (broadcasts are answered). Joined now if
   * connected, else once connected, and again after every reconnect.
   */
  join(topic, options = {}) {
    if (this.#rooms.has(topic)) throw new Error(`RelayClient: already in the room ${JSON.stringify(topic)}; leave() it first`);
    const room = new Room(this, topic, options, this.#logger);
    this.#rooms.set(topic, room);
    if (this.ready !== null) this.#sendJoin(room, false);
    return room;
  }

  /** Send a frame and wait for its answer (the reply, or a RelayRequestError). For frames without a method. */
  request(frame, timeoutMs = this.#timing.requestTimeoutMs) {
    const pending = deferred();
    const ref = this.#nextRef++;
    const timer = setTimeout(() => {
      this.#pending.delete(ref);
      settle(pending, "reject", new RelayTimeoutError(frame.type, timeoutMs));
    }, timeoutMs);
    this.#pending.set(ref, {
      reply: (reply) => {
        clearTimeout(timer);
        if (reply.type === "error") settle(pending, "reject", new RelayRequestError(reply));
        else settle(pending, "resolve", reply);
      },
      lost: (error) => {
        clearTimeout(timer);
        settle(pending, "reject", error);
      },
    });
    if (!this.#send({ ...frame, ref })) {
      const request = this.#pending.get(ref);
      this.#pending.delete(ref);
      request.lost(new RelayClosedError(null, "not connected"));
    }
    return pending.promise;
  }

  // --- Subscriptions and rooms: called by them ---------------------------------------

  async _unsubscribe(subscription) {
    if (!this.#subscriptions.delete(subscription)) return;
    const id = subscription.id;
    subscription.state = "closed";
    subscription.id = null;
    if (id === null || this.ready === null) return;
    this.#byId.delete(id);
    await this.request({ type: "unsubscribe", id }).catch((error) => {
      // Closed, or already ended by the relay: gone all the same.
      if (!(error instanceof RelayClosedError) && error.code !== "unknown_subscription") throw error;
    });
  }

  async _leave(room) {
    if (this.#rooms.get(room.topic) !== room) return;
    this.#rooms.delete(room.topic);
    const wasIn = room.state !== "closed" && this.ready !== null;
    room._exited("left", true);
    if (!wasIn) return;
    await this.request({ type: "leave", topic: room.topic }).catch((error) => {
      // Not in it (the join was still waiting, or refused): out all the same.
      if (!(error instanceof RelayClosedError) && error.code !== "not_joined") throw error;
    });
  }

  _roomRequest(room, frame) {
    if (!room.isJoined) return Promise.resolve(null);
    return this.request(frame);
  }

  _broadcast(room, event, payload) {
    if (!room.isJoined) return Promise.resolve(false);
    const frame = { type: "broadcast", topic: room.topic, event, payload };
    if (room.ack) return this.request(frame).then(() => true);
    const ref = this.#nextRef++;
    if (!this.#send({ ...frame, ref })) return Promise.resolve(false);
    this.#unanswered.set(ref, room);
    if (this.#unanswered.size > UNANSWERED_REFS_KEPT) this.#unanswered.delete(this.#unanswered.keys().next().value);
    return Promise.resolve(true);
  }

  // --- The connection ----------------------------------------------------------------

  #setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.emit("status", status);
  }

  async #start() {
    const generation = ++this.#generation;
    let token;
    try {
      token = await this.#currentToken();
    } catch (error) {
      if (generation !== this.#generation) return;
      this.#logger?.warn?.("nexus-relay: the token provider failed", error);
      this.#scheduleReconnect();
      return;
    }
    if (generation !== this.#generation) return;
    if (token === null) {
      this.#stop(null, "no_token");
      return;
    }
    this.#open(token, generation);
  }

  // The token it has while it lasts (a resume needs the one it was covered with), else a new one.
  async #currentToken() {
    const now = Date.now() / 1000;
    if (this.#token !== null && (this.#expiresAt === null || this.#expiresAt - this.#timing.refreshBeforeS > now)) {
      return this.#token;
    }
    const token = await this.#provider();
    if (token === null || token === undefined || token === "") return null;
    if (typeof token !== "string") throw new TypeError("the token provider must return a string, or null");
    this.#token = token;
    this.#expiresAt = expiryOf(token);
    return token;
  }

  #open(token, generation) {
    let socket;
    try {
      socket = new this.#WebSocket(this.#url, [SUBPROTOCOL]);
    } catch (error) {
      this.#logger?.warn?.("nexus-relay: cannot open the WebSocket", error);
      this.#scheduleReconnect();
      return;
    }
    this.#socket = socket;
    this.#closing = null;
    socket.onopen = () => {
      if (socket === this.#socket) this.#send({ type: "auth", token, ref: this.#nextRef++ });
    };
    socket.onmessage = (event) => {
      if (socket === this.#socket) this.#receive(event.data);
    };
    socket.onclose = (event) => this.#lost(socket, event.code, event.reason);
    socket.onerror = () => {}; // onclose follows, with the code
    this.#timers.connect = setTimeout(() => {
      if (generation === this.#generation && this.ready === null) this.#drop(socket, "no ready in time");
    }, this.#timing.connectTimeoutMs);
  }

  #send(frame) {
    if (this.#socket === null || this.#socket.readyState !== OPEN) return false;
    this.#socket.send(JSON.stringify(frame));
    return true;
  }

  // Give up on a socket that does not answer: closing it may take the close
  // handshake's timeout, so the client moves on at once.
  #drop(socket, reason) {
    try {
      socket.close(4000, reason);
    } catch {
      // already closing
    }
    this.#lost(socket, 1006, reason);
  }

  #receive(data) {
    let frame;
    try {
      frame = JSON.parse(typeof data === "string" ? data : String(data));
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    if (frame.ref !== undefined && frame.ref !== null) {
      const pending = this.#pending.get(frame.ref);
      if (pending !== undefined) {
        this.#pending.delete(frame.ref);
        pending.reply(frame);
        return;
      }
      if (frame.type === "error") {
        const room = this.#unanswered.get(frame.ref);
        this.#unanswered.delete(frame.ref);
        if (room !== undefined) return room.emit("error", new RelayRequestError(frame));
      }
    }
    switch (frame.type) {
      case "ready":
        return this.#ready(frame);
      case "change":
        return this.#change(frame);
      case "gap":
        return this.#gap(frame);
      case "replayed":
        return this.#byId.get(frame.id)?._replayed(frame);
      case "unsubscribed":
        return this.#unsubscribed(frame);
      case "token_expiring":
        return void this.#refresh();
      case "closing":
        this.#closing = frame;
        return;
      case "broadcast": {
        const room = this.#rooms.get(frame.topic);
        if (room?.isJoined) room.emit("broadcast", frame);
        return;
      }
      case "presence_diff": {
        const room = this.#rooms.get(frame.topic);
        if (room?.isJoined) room._diff(frame);
        return;
      }
      case "left":
        return this.#roomEnded(frame);
      case "error": {
        // Before `ready`: the auth frame refused (the close follows, with its code).
        const error = new RelayRequestError(frame);
        if (this.listens("error")) this.emit("error", error);
        else this.#logger?.warn?.("nexus-relay:", error.message);
        return;
      }
      default:
        return;
    }
  }

  // docs/protocol.md, "A client, in short": subscribe again with since and resume_token, rejoin.
  #ready(frame) {
    clearTimeout(this.#timers.connect);
    this.ready = frame;
    if (typeof frame.expires_at === "number") this.#expiresAt = frame.expires_at;
    this.#byId.clear();
    this.#setup.clear();
    for (const subscription of this.#subscriptions) this.#sendSubscribe(subscription, true);
    for (const room of this.#rooms.values()) this.#sendJoin(room, true);
    this.#heartbeat();
    this.#scheduleRefresh();
    this.emit("ready", frame);
    if (this.#connected !== null) {
      settle(this.#connected, "resolve", frame);
      this.#connected = null;
    }
    this.#maybeLive();
  }

  #maybeLive() {
    if (this.ready !== null && this.#setup.size === 0) {
      this.#attempt = 0;
      this.#setStatus("live");
    }
  }

  #sendSubscribe(subscription, setup) {
    const ref = this.#nextRef++;
    const frame = subscription._frame();
    if (setup) this.#setup.add(ref);
    this.#pending.set(ref, {
      reply: (reply) => {
        this.#setup.delete(ref);
        this.#subscribeAnswered(subscription, reply, setup);
        this.#maybeLive();
      },
      lost: () => {}, // sent again on the next connection
    });
    this.#send({ ...frame, ref });
  }

  #subscribeAnswered(subscription, reply, setup) {
    if (reply.type === "subscribed") {
      if (!this.#subscriptions.has(subscription)) {
        // Unsubscribed while its subscribe was on the way.
        this.#send({ type: "unsubscribe", id: reply.id, ref: this.#nextRef++ });
        return;
      }
      this.#byId.set(reply.id, subscription);
      subscription._acked(reply);
      return;
    }
    if (reply.type !== "error" || !this.#subscriptions.has(subscription)) return;
    if (subscription.resuming) {
      // A resume the relay would not read (a position it does not parse):
      // subscribe again from now; the subscription reports a gap.
      subscription.position = null;
      subscription.resumeToken = null;
      subscription.lostResume = reply.code;
      this.#sendSubscribe(subscription, setup);
      return;
    }
    this.#subscriptions.delete(subscription);
    subscription._refused(new RelayRequestError(reply));
  }

  #sendJoin(room, setup) {
    const ref = this.#nextRef++;
    if (setup) this.#setup.add(ref);
    this.#pending.set(ref, {
      reply: (reply) => {
        this.#setup.delete(ref);
        this.#joinAnswered(room, reply);
        this.#maybeLive();
      },
      lost: () => {},
    });
    this.#send({ ...room._frame(), ref });
  }

  #joinAnswered(room, reply) {
    if (this.#rooms.get(room.topic) !== room) return; // left meanwhile
    if (reply.type === "joined") {
      room._entered(reply);
      if (room.tracked !== null) {
        this.request({ type: "track", topic: room.topic, payload: room.tracked }).catch((error) => {
          if (!(error instanceof RelayClosedError)) room.emit("error", error);
        });
      }
      return;
    }
    if (reply.type !== "error") return;
    // A rule said no: joining again would say no again.
    this.#rooms.delete(room.topic);
    room._refused(new RelayRequestError(reply));
  }

  // Unasked for: the relay ended the membership (a new token no longer admits the user).
  #roomEnded(frame) {
    const room = this.#rooms.get(frame.topic);
    if (room === undefined) return;
    this.#rooms.delete(frame.topic);
    room._exited(frame.reason ?? "left", true);
  }

  #change(frame) {
    let fresh = false;
    let known = false;
    for (const id of frame.subscriptions ?? []) {
      const subscription = this.#byId.get(id);
      if (subscription === undefined) continue;
      known = true;
      if (subscription._change(frame)) fresh = true;
    }
    if (fresh || !known) this.emit("change", frame);
  }

  #gap(frame) {
    for (const id of frame.subscriptions ?? []) this.#byId.get(id)?._gap(frame);
    this.emit("gap", frame);
  }

  #unsubscribed(frame) {
    const subscription = this.#byId.get(frame.id);
    if (subscription === undefined) return;
    this.#byId.delete(frame.id);
    this.#subscriptions.delete(subscription);
    subscription._ended(frame);
  }

  // --- Heartbeat and tokens ----------------------------------------------------------

  #heartbeat() {
    clearInterval(this.#timers.ping);
    const socket = this.#socket;
    this.#timers.ping = setInterval(() => {
      this.request({ type: "ping" }, this.#timing.pongTimeoutMs).catch((error) => {
        if (error instanceof RelayTimeoutError && socket === this.#socket) this.#drop(socket, "no pong");
      });
    }, this.#timing.pingIntervalMs);
  }

  #scheduleRefresh() {
    clearTimeout(this.#timers.refresh);
    if (this.#expiresAt === null || this.#timing.refreshBeforeS <= 0) return; // only on token_expiring
    const inMs = (this.#expiresAt - this.#timing.refreshBeforeS) * 1000 - Date.now();
    if (inMs > LONGEST_TIMER_MS) {
      this.#timers.refresh = setTimeout(() => this.#scheduleRefresh(), LONGEST_TIMER_MS);
      return;
    }
    this.#timers.refresh = setTimeout(() => this.#refresh(), Math.max(inMs, 1000));
  }

  // docs/protocol.md, "refresh": a new token on the open connection, and
  // resume tokens that cover it; reconnect with that one from now on.
  async #refresh() {
    if (this.#refreshing || this.ready === null) return;
    this.#refreshing = true;
    const generation = this.#generation;
    try {
      let token;
      try {
        token = await this.#provider();
      } catch (error) {
        this.#logger?.warn?.("nexus-relay: the token provider failed; trying again", error);
        clearTimeout(this.#timers.refresh);
        this.#timers.refresh = setTimeout(() => this.#refresh(), REFRESH_RETRY_MS);
        return;
      }
      if (generation !== this.#generation) return;
      if (token === null || token === undefined || token === "") {
        this.#stop(null, "no_token");
        return;
      }
      const reply = await this.request({ type: "refresh", token });
      if (generation !== this.#generation) return;
      this.#token = token;
      this.#expiresAt = typeof reply.expires_at === "number" ? reply.expires_at : expiryOf(token);
      for (const [id, resumeToken] of Object.entries(reply.resume_tokens ?? {})) {
        const subscription = this.#byId.get(id);
        if (subscription !== undefined) subscription.resumeToken = resumeToken;
      }
      this.#scheduleRefresh();
    } catch (error) {
      // Refused: the relay closes (4001, 4003), and the close decides what follows.
      if (!(error instanceof RelayClosedError)) this.#logger?.warn?.("nexus-relay: refresh failed", error);
    } finally {
      this.#refreshing = false;
    }
  }

  // --- Losing the connection ---------------------------------------------------------

  #lost(socket, code, reason) {
    if (socket !== this.#socket) return;
    this.#socket = null;
    this.#generation++;
    this.ready = null;
    for (const name of ["connect", "ping", "refresh"]) {
      clearTimeout(this.#timers[name]);
      clearInterval(this.#timers[name]);
    }
    const error = new RelayClosedError(code, reason);
    const pending = Array.from(this.#pending.values());
    this.#pending.clear();
    this.#unanswered.clear();
    this.#setup.clear();
    this.#byId.clear();
    for (const request of pending) request.lost(error);
    for (const subscription of this.#subscriptions) subscription.id = null;
    for (const room of this.#rooms.values()) room._exited("disconnected", false);
    this.emit("disconnect", { code, reason, closing: this.#closing });
    if (this.#stopped) return;
    if (STOP_CODES.has(code)) {
      this.#stop(code, reason || "token_refused");
      return;
    }
    if (NEW_TOKEN_CODES.has(code)) this.#token = null;
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    if (this.#stopped) return;
    this.#setStatus("reconnecting");
    const { reconnectFirstMs, reconnectMaxMs } = this.#timing;
    const base = Math.min(reconnectMaxMs, reconnectFirstMs * 2 ** this.#attempt);
    const delay = base * (0.5 + Math.random());
    this.#attempt += 1;
    clearTimeout(this.#timers.reconnect);
    this.#timers.reconnect = setTimeout(() => {
      delete this.#timers.reconnect;
      this.#start();
    }, delay);
  }

  #stop(code, reason) {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#generation++;
    for (const timer of Object.values(this.#timers)) {
      clearTimeout(timer);
      clearInterval(timer);
    }
    this.#timers = {};
    const socket = this.#socket;
    if (socket !== null) {
      this.#lost(socket, code ?? 1000, reason);
      try {
        // A client may close with 1000 or 3000-4999 only.
        socket.close(code === 1000 || (code >= 3000 && code < 5000) ? code : 1000, reason);
      } catch {
        // already closing
      }
    }
    this.stopReason = { code, reason };
    if (this.#connected !== null) {
      settle(this.#connected, "reject", new RelayClosedError(code, reason));
      this.#connected = null;
    }
    this.#setStatus("closed");
    this.emit("close", this.stopReason);
  }
}
