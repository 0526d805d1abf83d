/*
 * The portal's live pages, on the relay's JavaScript client (@nexus-relay/client,
 * clients/js, served at /static/vendor/nexus-relay-client.js). The client
 * keeps the connection: tokens, reconnection with backoff and jitter, resume
 * from the last position, refresh before expiry, heartbeats, rooms joined
 * again. This module is what is the portal's own:
 *  - its tokens come from the portal (meta nexus-realtime-config); a 401 there
 *    means signed out: the client stops;
 *  - every element with data-live="<tables>" (and optionally data-live-filter)
 *    is a live region, re-fetched from its data-live-src with htmx when a
 *    change or a gap concerns it, and once its subscription is live without a
 *    resume (what was committed between rendering and the ack is then on it);
 *  - the user's notifications: badge, and a toast for high-priority ones (text
 *    only, never HTML);
 *  - the connection's state in #realtime-status: connecting, live,
 *    reconnecting, offline, signed-out;
 *  - closes when the page goes away, and comes back from the back/forward cache;
 *  - rooms for the page's scripts: realtime.room(topic, {presenceKey}) gives the
 *    client's Room (case-presence.js).
 */
import { RelayClient } from "/static/vendor/nexus-relay-client.js";

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
      window.htmx.ajax("GET", this.src, { source: this.element, target: this.element, swap: "innerHTML" }),
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

// The portal's token endpoint as the client's token provider: null when signed out.
async function portalToken(configUrl) {
  const response = await fetch(configUrl, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) return null;
  if (!response.ok) throw new Error(`realtime config: HTTP ${response.status}`);
  return (await response.json()).token;
}

class LivePage {
  constructor(client) {
    this.client = client;
    this.status = document.getElementById("realtime-status");
    this.regions = Array.from(document.querySelectorAll("[data-live]"), (element) => new LiveRegion(element));
    client.on("status", (status) => this.setState(this.label(status)));
    for (const spec of this.subscriptionSpecs()) this.subscribe(spec);
  }

  /** The WebSocket of the current connection (for the tests), or null. */
  get socket() {
    return this.client.socket;
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

  subscribe(spec) {
    const subscription = this.client.subscribe(spec.table, spec.filter ? { filter: spec.filter } : {});
    const refresh = () => spec.regions.forEach((region) => region.refresh());
    // Not resumed (the first time, or a resume the relay could not make): what
    // the page shows may be older than the ack. A resume that fails ends in a gap.
    subscription.on("subscribed", (ack) => {
      if (!ack.resumed) refresh();
    });
    subscription.on("change", (change) => {
      refresh();
      if (spec.notifications) this.notification(change);
    });
    subscription.on("gap", refresh);
    subscription.on("error", (error) => console.warn("Nexus realtime:", spec.table, error.message));
  }

  label(status) {
    if (status === "reconnecting" && navigator.onLine === false) return "offline";
    if (status === "closed") return this.client.stopReason?.reason === "no_token" ? "signed-out" : "offline";
    return status;
  }

  setState(state) {
    if (!this.status) return;
    this.status.dataset.state = state;
    this.status.textContent = state.replace("-", " ");
  }

  refreshAll() {
    this.regions.forEach((region) => region.refresh());
  }

  notification(change) {
    const row = change.new;
    if (change.op === "INSERT" && row && row.priority === "high") this.toast(row.title, row.body);
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

  // A room (broadcast and presence on a topic), joined again after every reconnect:
  // options presenceKey, presence (default true), self.
  room(topic, options = {}) {
    return (
      this.client.rooms.get(topic) ??
      this.client.join(topic, { presence: options.presence !== false, presenceKey: options.presenceKey, self: options.self })
    );
  }
}

function boot() {
  const configUrl = meta("nexus-realtime-config");
  const url = meta("nexus-relay-url");
  if (!configUrl || !url || !meta("nexus-user-id")) return null; // signed out: nothing is live
  const client = new RelayClient({ url, token: () => portalToken(configUrl) });
  const page = new LivePage(client);
  window.NexusRealtime = page;
  window.addEventListener("pagehide", () => client.close(1000, "page closed"));
  window.addEventListener("pageshow", (event) => {
    // Back from the back/forward cache: reconnect (resuming), and re-fetch everything.
    if (event.persisted) client.connect().then(() => page.refreshAll(), () => {});
  });
  window.addEventListener("online", () => {
    if (client.status === "reconnecting") client.connect().catch(() => {});
  });
  client.connect().catch(() => {}); // a stop shows in #realtime-status
  return page;
}

/** The page's live connection, for the page's other modules; null when signed out. */
export const realtime = boot();
