/*
 * Nexus realtime client: keeps the page's live regions in step with the relay.
 *
 * The relay's protocol is in docs/protocol.md. This client:
 *  - gets a short-lived relay token from the portal (meta nexus-realtime-config);
 *  - subscribes to what the page shows: every element with data-live="<tables>"
 *    (and optionally data-live-filter) is a live region, re-fetched from its
 *    data-live-src with htmx when a change or a gap concerns it;
 *  - always subscribes to the user's notifications: badge, and a toast for
 *    high-priority ones (text only, never HTML);
 *  - reconnects with exponential backoff and jitter, resumes from the last
 *    position it received, and re-fetches every live region when it cannot
 *    resume or hears of a gap, so no stale data survives a fault;
 *  - refreshes its token before it expires; heartbeats with ping/pong;
 *  - unsubscribes and closes when the page goes away;
 *  - after its token is revoked (close 4010) asks the portal for a new one, and
 *    stops when the portal answers that the user is signed out (401);
 *  - shows the connection's state in #realtime-status: live, reconnecting,
 *    offline, signed-out;
 *  - joins rooms (broadcast and presence on a topic) for the page's scripts:
 *    window.NexusRealtime.room(topic, {presenceKey}) gives a Room, joined again
 *    after every reconnect, its presence tracked again (case-presence.js).
 */
(function () {
  "use strict";

  const SUBPROTOCOL = "nexus-relay.v1";
  const PING_EVERY_MS = 25000;
  const PONG_WITHIN_MS = 10000;
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const REFRESH_BEFORE_S = 60;
  // Close codes after which a new token is needed (docs/protocol.md): refused,
  // expired, revoked (the user moved, was deactivated or signed out: the
  // portal answers 401 if they are no longer signed in as this user).
  const NEEDS_NEW_TOKEN = new Set([4001, 4003, 4010]);

  function meta(name) {
    const element = document.querySelector(`meta[name="${name}"]`);
    return element ? element.content : null;
  }

  class LiveRegion {
    constructor(element) {
      this.element = element;
      this.src = element.dataset.liveSrc;
      this.loading = null;
      this.again = false;
    }

    // Re-fetch the region; changes that arrive while a fetch runs cause one more.
    refresh() {
      if (!this.src || !window.htmx) return;
      if (this.loading) {
        this.again = true;
        return;
      }
      // The region is the request's source: htmx queues requests per source
      // ("queue first" drops a third while one runs), so regions must not share one.
      this.loading = Promise.resolve(
        window.htmx.ajax("GET", this.src, { source: this.element, target: this.element, swap: "innerHTML" })
      )
        .catch((error) => console.warn("Nexus realtime: reload failed", this.src, error))
        .finally(() => {
          this.loading = null;
          if (this.again) {
            this.again = false;
            this.refresh();
          }
        });
    }
  }

  // A room: broadcast and presence on one topic (docs/protocol.md, "Rooms").
  // Options: presenceKey (default: the relay chooses), presence (default true),
  // self (receive one's own broadcasts, default false). Its handlers: on("broadcast", (event, payload) => ...), on("presence",
  // (state) => ...) with state {key: [meta, ...]}, on("status", (joined) => ...).
  class Room {
    constructor(realtime, topic, options) {
      this.realtime = realtime;
      this.topic = topic;
      this.presence = options.presence !== false; // receive the room's presence
      this.presenceKey = options.presenceKey || "";
      this.self = Boolean(options.self);
      this.handlers = { broadcast: [], presence: [], status: [] };
      this.state = {};
      this.joined = false;
      this.refused = false;
      this.tracked = null; // the payload to track, again after each rejoin
    }

    on(kind, handler) {
      this.handlers[kind].push(handler);
      return this;
    }

    emit(kind, ...args) {
      for (const handler of this.handlers[kind]) {
        try {
          handler(...args);
        } catch (error) {
          console.warn("Nexus realtime: a room handler failed", error);
        }
      }
    }

    joinFrame(ref) {
      const frame = { type: "join", ref, topic: this.topic, broadcast: { self: this.self, ack: false } };
      if (this.presence) frame.presence = { key: this.presenceKey };
      return frame;
    }

    // Sent only while joined: a broadcast is for the people here now.
    send(event, payload) {
      if (this.joined) this.realtime.send({ type: "broadcast", topic: this.topic, event, payload });
    }

    track(payload) {
      this.tracked = payload;
      if (this.joined) this.realtime.send({ type: "track", topic: this.topic, payload });
    }

    untrack() {
      this.tracked = null;
      if (this.joined) this.realtime.send({ type: "untrack", topic: this.topic });
    }

    entered(frame) {
      this.joined = true;
      this.state = {};
      for (const [key, value] of Object.entries(frame.presence_state || {})) {
        this.state[key] = Array.from(value.metas || []);
      }
      if (this.tracked) this.realtime.send({ type: "track", topic: this.topic, payload: this.tracked });
      this.emit("status", true);
      this.emit("presence", this.state);
    }

    // Out of the room (disconnected, or the relay ended the membership): nobody is known here.
    exited() {
      const was = this.joined;
      this.joined = false;
      this.state = {};
      if (was) {
        this.emit("status", false);
        this.emit("presence", this.state);
      }
    }

    // Leaves first, by phx_ref, then joins: as realtime-js applies a diff.
    diff(frame) {
      for (const [key, value] of Object.entries(frame.leaves || {})) {
        const gone = new Set((value.metas || []).map((meta) => meta.phx_ref));
        const metas = (this.state[key] || []).filter((meta) => !gone.has(meta.phx_ref));
        if (metas.length) this.state[key] = metas;
        else delete this.state[key];
      }
      for (const [key, value] of Object.entries(frame.joins || {})) {
        this.state[key] = (this.state[key] || []).concat(value.metas || []);
      }
      this.emit("presence", this.state);
    }
  }

  class NexusRealtime {
    constructor(configUrl) {
      this.configUrl = configUrl;
      this.status = document.getElementById("realtime-status");
      this.regions = Array.from(document.querySelectorAll("[data-live]")).map((e) => new LiveRegion(e));
      this.specs = this.subscriptionSpecs();
      this.socket = null;
      this.config = null;
      this.bySubscription = new Map(); // subscription id -> spec
      this.pending = new Map(); // ref -> spec, awaiting "subscribed"
      this.rooms = new Map(); // topic -> Room
      this.joining = new Map(); // ref -> Room, awaiting "joined"
      this.nextRef = 1;
      this.attempt = 0;
      this.stopped = false;
      this.needsFullRefresh = false;
      this.timers = {};
    }

    // One subscription per distinct (table, filter) on the page, plus notifications.
    subscriptionSpecs() {
      const specs = new Map();
      const add = (table, filter, region) => {
        const key = `${table}|${filter || ""}`;
        if (!specs.has(key)) specs.set(key, { table, filter: filter || null, regions: [], notifications: false });
        if (region) specs.get(key).regions.push(region);
        return specs.get(key);
      };
      for (const region of this.regions) {
        for (const table of region.element.dataset.live.split(/\s+/).filter(Boolean)) {
          add(table, region.element.dataset.liveFilter, region);
        }
      }
      add("nexus_notifications", null, null).notifications = true;
      return Array.from(specs.values());
    }

    setState(state) {
      if (!this.status) return;
      this.status.dataset.state = state;
      this.status.textContent = state.replace("-", " ");
    }

    async start() {
      this.stopped = false;
      this.setState(this.attempt ? "reconnecting" : "connecting");
      try {
        // A token still good for a while is kept: a resume needs the token the
        // client was covered with, not one issued since (docs/protocol.md).
        if (!this.tokenLasts()) this.config = await this.fetchConfig();
      } catch (error) {
        if (error.signedOut) {
          this.stop("signed-out"); // nothing to do until the user signs in again
          return;
        }
        this.scheduleReconnect();
        return;
      }
      this.connect();
    }

    tokenLasts() {
      return Boolean(
        this.config && this.config.expires_at - REFRESH_BEFORE_S > Date.now() / 1000,
      );
    }

    async fetchConfig() {
      const response = await fetch(this.configUrl, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) {
        const error = new Error("signed out");
        error.signedOut = true;
        throw error;
      }
      if (!response.ok) throw new Error(`realtime config: HTTP ${response.status}`);
      return response.json();
    }

    connect() {
      let socket;
      try {
        socket = new WebSocket(this.config.url, [SUBPROTOCOL]);
      } catch (error) {
        console.warn("Nexus realtime: cannot open the WebSocket", error);
        this.scheduleReconnect();
        return;
      }
      this.socket = socket;
      socket.onopen = () => this.send({ type: "auth", token: this.config.token });
      socket.onmessage = (event) => this.receive(event.data);
      socket.onclose = (event) => this.closed(socket, event);
      socket.onerror = () => {}; // onclose follows, with the code
    }

    send(frame) {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) {
        this.socket.send(JSON.stringify(frame));
      }
    }

    receive(data) {
      let frame;
      try {
        frame = JSON.parse(data);
      } catch (error) {
        return;
      }
      switch (frame.type) {
        case "ready":
          this.ready(frame);
          break;
        case "subscribed":
          this.subscribed(frame);
          break;
        case "change":
          this.change(frame);
          break;
        case "gap":
          this.gap(frame);
          break;
        case "replayed":
          this.replayed(frame);
          break;
        case "token_expiring":
          this.refreshToken();
          break;
        case "pong":
          clearTimeout(this.timers.pong);
          break;
        case "refreshed":
          this.refreshed(frame);
          break;
        case "joined":
          this.roomJoined(frame);
          break;
        case "broadcast": {
          const room = this.rooms.get(frame.topic);
          if (room && room.joined) room.emit("broadcast", frame.event, frame.payload);
          break;
        }
        case "presence_diff": {
          const room = this.rooms.get(frame.topic);
          if (room && room.joined) room.diff(frame);
          break;
        }
        case "left":
          this.roomLeft(frame);
          break;
        case "closing":
          console.info("Nexus realtime: the relay closes the connection:", frame.reason);
          break;
        case "error":
          console.warn("Nexus realtime:", frame.code, frame.message);
          this.refused(frame);
          break;
        default:
          break;
      }
    }

    // Each subscription keeps its own resume point (spec.position) and the
    // token that lets it resume (spec.token): docs/protocol.md, "Resuming".
    ready() {
      this.readySeen = true;
      this.bySubscription.clear();
      this.pending.clear();
      // A first connection re-fetches once all subscriptions are live: what was
      // committed between rendering the page and the acks is then on it too.
      this.needsFullRefresh = this.specs.some((spec) => !spec.token);
      for (const spec of this.specs) {
        const ref = this.nextRef++;
        const frame = { type: "subscribe", ref, table: spec.table };
        if (spec.filter) frame.filter = spec.filter;
        spec.resuming = Boolean(spec.token && spec.position);
        if (spec.resuming) {
          frame.since = spec.position;
          frame.resume_token = spec.token;
        }
        this.pending.set(ref, spec);
        this.send(frame);
      }
      this.joining.clear();
      for (const room of this.rooms.values()) this.joinRoom(room);
      this.heartbeat();
      this.scheduleTokenRefresh();
    }

    // The page's rooms: one per topic, joined now if connected, and after each reconnect.
    room(topic, options) {
      let room = this.rooms.get(topic);
      if (!room) {
        room = new Room(this, topic, options || {});
        this.rooms.set(topic, room);
        if (this.socket && this.socket.readyState === WebSocket.OPEN && this.readySeen) {
          this.joinRoom(room);
        }
      }
      return room;
    }

    joinRoom(room) {
      if (room.refused) return;
      const ref = this.nextRef++;
      this.joining.set(ref, room);
      this.send(room.joinFrame(ref));
    }

    roomJoined(frame) {
      const room = this.joining.get(frame.ref);
      if (!room) return;
      this.joining.delete(frame.ref);
      room.entered(frame);
    }

    // Unasked for (a new token no longer admits the user): out, and not joined again.
    roomLeft(frame) {
      const room = this.rooms.get(frame.topic);
      if (!room || frame.ref !== undefined) return;
      console.warn("Nexus realtime: left", frame.topic, frame.reason);
      room.refused = true;
      room.exited();
    }

    // A subscribe refused. One that resumed from a position the relay cannot
    // read (say, of an older relay) subscribes again from now, and the page
    // re-fetches; any other refusal is a bug of the page: logged, not retried.
    refused(frame) {
      const room = this.joining.get(frame.ref);
      if (room) {
        this.joining.delete(frame.ref);
        room.refused = true; // a rule said no: joining again would say no again
        return;
      }
      const spec = this.pending.get(frame.ref);
      if (!spec) return;
      this.pending.delete(frame.ref);
      if (!spec.resuming) return;
      spec.position = null;
      spec.token = null;
      spec.resuming = false;
      this.needsFullRefresh = true;
      const ref = this.nextRef++;
      const again = { type: "subscribe", ref, table: spec.table };
      if (spec.filter) again.filter = spec.filter;
      this.pending.set(ref, spec);
      this.send(again);
    }

    subscribed(frame) {
      const spec = this.pending.get(frame.ref);
      if (!spec) return;
      this.pending.delete(frame.ref);
      this.bySubscription.set(frame.id, spec);
      spec.token = frame.resume_token;
      spec.replaying = frame.resumed === true;
      // Resumed: the resume point moves at "replayed". Not resumed: from the ack on.
      if (!spec.replaying) spec.position = frame.position;
      // A resume that could not be made whole (a gap follows): re-fetch everything.
      if (spec.resuming && frame.resumed === false) this.needsFullRefresh = true;
      if (this.pending.size === 0) {
        this.attempt = 0;
        this.setState("live");
        if (this.needsFullRefresh) this.refreshAll();
      }
    }

    // A new token: resume tokens that cover it too, for every subscription.
    refreshed(frame) {
      for (const [id, token] of Object.entries(frame.resume_tokens || {})) {
        const spec = this.bySubscription.get(id);
        if (spec) spec.token = token;
      }
    }

    replayed(frame) {
      const spec = this.bySubscription.get(frame.id);
      if (!spec) return;
      spec.replaying = false;
      spec.position = frame.position;
    }

    change(frame) {
      const regions = new Set();
      for (const id of frame.subscriptions) {
        const spec = this.bySubscription.get(id);
        if (!spec) continue;
        if (!spec.replaying) spec.position = frame.position;
        spec.regions.forEach((region) => regions.add(region));
        if (spec.notifications) this.notification(frame);
      }
      regions.forEach((region) => region.refresh());
    }

    notification(frame) {
      const row = frame.new;
      if (frame.op === "INSERT" && row && row.priority === "high") {
        this.toast(row.title, row.body);
      }
    }

    gap(frame) {
      const regions = new Set();
      for (const id of frame.subscriptions || []) {
        const spec = this.bySubscription.get(id);
        if (!spec) continue;
        // The re-fetch below shows at least what was committed up to the gap.
        spec.replaying = false;
        spec.position = frame.position;
        spec.regions.forEach((region) => regions.add(region));
      }
      regions.forEach((region) => region.refresh());
    }

    refreshAll() {
      this.regions.forEach((region) => region.refresh());
    }

    // A toast renders text, never HTML: a title like <img onerror=...> shows as text.
    toast(title, body) {
      const container = document.getElementById("toast-container");
      if (!container) return;
      const toast = document.createElement("div");
      toast.className = "toast";
      toast.setAttribute("role", "status");
      const heading = document.createElement("strong");
      heading.textContent = title || "";
      toast.appendChild(heading);
      if (body) {
        const text = document.createElement("p");
        text.textContent = body;
        toast.appendChild(text);
      }
      container.appendChild(toast);
      setTimeout(() => toast.classList.add("fade"), 7000);
      setTimeout(() => toast.remove(), 7500);
    }

    heartbeat() {
      clearInterval(this.timers.ping);
      this.timers.ping = setInterval(() => {
        this.send({ type: "ping" });
        clearTimeout(this.timers.pong);
        this.timers.pong = setTimeout(() => {
          console.warn("Nexus realtime: no pong, reconnecting");
          if (this.socket) this.socket.close(4000, "heartbeat");
        }, PONG_WITHIN_MS);
      }, PING_EVERY_MS);
    }

    scheduleTokenRefresh() {
      clearTimeout(this.timers.refresh);
      if (!this.config || !this.config.expires_at) return;
      const inMs = (this.config.expires_at - REFRESH_BEFORE_S) * 1000 - Date.now();
      this.timers.refresh = setTimeout(() => this.refreshToken(), Math.max(inMs, 1000));
    }

    async refreshToken() {
      if (this.refreshing) return;
      this.refreshing = true;
      try {
        this.config = await this.fetchConfig();
        this.send({ type: "refresh", token: this.config.token });
        this.scheduleTokenRefresh();
      } catch (error) {
        if (error.signedOut) this.stop("signed-out");
      } finally {
        this.refreshing = false;
      }
    }

    closed(socket, event) {
      if (socket !== this.socket) return;
      this.socket = null;
      this.readySeen = false;
      this.joining.clear();
      for (const room of this.rooms.values()) room.exited();
      clearInterval(this.timers.ping);
      clearTimeout(this.timers.pong);
      clearTimeout(this.timers.refresh);
      if (this.stopped) return;
      if (NEEDS_NEW_TOKEN.has(event.code)) this.config = null;
      this.scheduleReconnect();
    }

    scheduleReconnect() {
      if (this.stopped) return;
      this.setState(navigator.onLine === false ? "offline" : "reconnecting");
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
      const delay = base * (0.5 + Math.random()); // jitter: 50% to 150%
      this.attempt += 1;
      clearTimeout(this.timers.reconnect);
      this.timers.reconnect = setTimeout(() => this.start(), delay);
    }

    // Leaving the page: unsubscribe, close, and keep quiet.
    stop(state) {
      this.stopped = true;
      Object.values(this.timers).forEach((timer) => {
        clearTimeout(timer);
        clearInterval(timer);
      });
      for (const room of this.rooms.values()) room.exited();
      if (this.socket) {
        for (const id of this.bySubscription.keys()) this.send({ type: "unsubscribe", id });
        this.socket.close(1000, "page closed");
        this.socket = null;
      }
      this.setState(state || "offline");
    }
  }

  function boot() {
    const configUrl = meta("nexus-realtime-config");
    if (!configUrl || !meta("nexus-user-id")) return; // signed out: nothing is live
    const realtime = new NexusRealtime(configUrl);
    window.NexusRealtime = realtime;
    window.addEventListener("pagehide", () => realtime.stop("offline"));
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) {
        // Back from the back/forward cache: reconnect, and assume everything is stale.
        realtime.specs.forEach((spec) => {
          spec.position = null;
          spec.token = null;
        });
        realtime.start().then(() => realtime.refreshAll());
      }
    });
    window.addEventListener("online", () => {
      if (!realtime.socket && !realtime.stopped) {
        realtime.attempt = 0;
        realtime.start();
      }
    });
    realtime.start();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", boot);
  } else {
    boot();
  }
})();
