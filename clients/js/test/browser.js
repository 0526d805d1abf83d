// A plain page's use of the module, in Chromium (tests/clients/test_js.py): the
// browser's own WebSocket; it subscribes, joins a room, and shows what it got.
import { RelayClient, SUBPROTOCOL } from "/client.js";

const relay = new URLSearchParams(location.search).get("relay");
const token = async () => {
  const response = await fetch("/token", { method: "POST", body: JSON.stringify({ user: "alice" }) });
  return (await response.json()).token;
};
const client = new RelayClient({ url: relay, token, reconnectFirstMs: 100, reconnectMaxMs: 1000 });
window.client = client;
const show = (id) => document.getElementById(id);

client.on("status", (status) => {
  show("statuses").textContent += `${show("statuses").textContent ? " " : ""}${status}`;
  if (status !== "live") show("status").dataset.state = status;
});
const messages = client.subscribe("nexus_case_messages", { filter: "case_id=eq.CASE-AB000001" });
messages.on("change", (change) => {
  const item = document.createElement("li");
  item.textContent = change.new.body;
  show("changes").append(item);
});
const room = client.join("case:CASE-AB000001", { presenceKey: "USR-ALIC0001" });
room.on("presence", (state) => {
  show("presence").textContent = Object.keys(state).join(" ");
});
room.track({ name: "Alice Archer" });
await client.connect();
await messages.subscribed;
await room.joined;
show("status").dataset.state = `live ${SUBPROTOCOL}`;
client.on("status", (status) => {
  if (status === "live") show("status").dataset.state = `live ${SUBPROTOCOL}`;
});
