/*
 * A case's page, live: who else is viewing it now, and who is typing.
 *
 * Through the relay's own protocol (a Room of @nexus-relay/client, from
 * realtime-client.js): presence on
 * the room case:<id>, keyed by user id (several tabs of one person are one
 * person) with their display name, never their email; and broadcast "typing"
 * events from the message form, at most one every TYPING_EVERY_MS, which
 * expire after TYPING_SHOWN_MS on the other pages. The relay admits to the
 * room only those who may see the case (the policy file's rule, checked in
 * PostgreSQL under their RLS).
 *
 * Names are the senders' own words: they are rendered with textContent, never
 * as HTML.
 */
import { realtime } from "/static/realtime-client.js";

{
  const TYPING_EVERY_MS = 2000;
  const TYPING_SHOWN_MS = 5000;

  function meta(name) {
    const element = document.querySelector(`meta[name="${name}"]`);
    return element ? element.content : null;
  }

  function nameOf(value) {
    return typeof value === "string" ? value.slice(0, 80) : "";
  }

  function boot() {
    const box = document.getElementById("case-presence");
    const me = meta("nexus-user-id");
    if (!box || !realtime || !me) return;
    const name = box.dataset.name || "";
    const viewers = document.getElementById("case-viewers");
    const nobody = document.getElementById("case-viewers-none");
    const typingLine = document.getElementById("case-typing");
    const textarea = document.getElementById("message-body");
    const form = document.getElementById("message-form");
    const typing = new Map(); // user id -> {name, until}
    let expiry = null;

    const room = realtime.room(box.dataset.topic, { presenceKey: me });
    room.track({ name });

    room.on("presence", (state) => {
      const names = [];
      for (const [key, metas] of Object.entries(state)) {
        if (key === me || !metas.length) continue;
        names.push(nameOf(metas[metas.length - 1].name) || "Someone");
      }
      names.sort((a, b) => a.localeCompare(b));
      viewers.replaceChildren(
        ...names.map((text) => {
          const item = document.createElement("li");
          item.textContent = text;
          return item;
        }),
      );
      nobody.hidden = names.length > 0;
      box.dataset.viewers = String(names.length);
    });

    room.on("broadcast", ({ event, payload }) => {
      if (event !== "typing" || !payload || typeof payload.key !== "string" || payload.key === me) return;
      if (payload.typing === false) typing.delete(payload.key);
      else typing.set(payload.key, { name: nameOf(payload.name) || "Someone", until: Date.now() + TYPING_SHOWN_MS });
      showTyping();
    });

    // Out of the room (disconnected, or ended by the relay): nobody is known to type.
    room.on("left", () => {
      typing.clear();
      showTyping();
    });

    function showTyping() {
      const now = Date.now();
      for (const [key, who] of typing) if (who.until <= now) typing.delete(key);
      const names = Array.from(typing.values(), (who) => who.name).sort((a, b) => a.localeCompare(b));
      if (!names.length) typingLine.textContent = "";
      else if (names.length === 1) typingLine.textContent = `${names[0]} is typing…`;
      else typingLine.textContent = `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]} are typing…`;
      typingLine.hidden = names.length === 0;
      clearTimeout(expiry);
      if (names.length) {
        const next = Math.min(...Array.from(typing.values(), (who) => who.until)) - now;
        expiry = setTimeout(showTyping, Math.max(next, 50));
      }
    }

    // Throttled: the first keystroke says so at once, then one every TYPING_EVERY_MS.
    let lastSent = 0;
    if (textarea) {
      textarea.addEventListener("input", () => {
        const now = Date.now();
        if (!textarea.value || now - lastSent < TYPING_EVERY_MS) return;
        lastSent = now;
        room.broadcast("typing", { key: me, name });
      });
    }
    if (form) {
      form.addEventListener("submit", () => {
        lastSent = 0;
        room.broadcast("typing", { key: me, name, typing: false });
      });
    }
  }

  boot(); // a module runs once the document is parsed
}
