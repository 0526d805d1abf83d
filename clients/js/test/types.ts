// A typed use of the package, for `tsc --noEmit -p clients/js` (tests/clients/test_js.py):
// it compiles only if index.d.ts describes what a caller writes. Never run.
import {
  RelayClient,
  RelayClosedError,
  RelayRequestError,
  SUBPROTOCOL,
  type ChangeFrame,
  type PresenceState,
  type ReadyFrame,
  type Status,
} from "@nexus-relay/client";

const protocol: "nexus-relay.v1" = SUBPROTOCOL;

async function fetchToken(): Promise<string | null> {
  const response = await fetch("/nexus/api/realtime-config");
  if (response.status === 401) return null;
  return ((await response.json()) as { token: string }).token;
}

const client = new RelayClient({
  url: "ws://127.0.0.1:8765/",
  token: fetchToken,
  WebSocket, // the DOM's
  reconnectFirstMs: 200,
  refreshBeforeS: 0,
  logger: null,
});
const statuses: Status[] = [];
client.on("status", (status) => statuses.push(status)).on("close", ({ code, reason }) => {
  const stopped: string = `${code ?? "no code"} ${reason}`;
  return stopped;
});

const payments = client.subscribe("nexus_payments", {
  events: ["INSERT", "UPDATE"],
  select: ["status", "amount"],
  filter: "status=in.(pending,approved)",
});
payments.on("change", (change: ChangeFrame) => {
  const row = change.op === "DELETE" || change.op === "LEAVE" ? change.old : change.new;
  const status: unknown = row?.["status"];
  return status;
});
payments.on("gap", (gap) => gap.reason.length);

async function main(): Promise<void> {
  const ready: ReadyFrame = await client.connect();
  const user: string = ready.user;
  const ack = await payments.subscribed;
  const resumed: boolean = ack.resumed;
  const point = payments.resumePoint;
  if (point !== null) {
    client.subscribe("nexus_payments", { since: point.since, resumeToken: point.resumeToken });
  }

  const room = client.join("case:CASE-AB000001", { presenceKey: user, self: false, ack: true });
  room.on("presence", (state: PresenceState) => Object.keys(state).length);
  room.on("broadcast", ({ event, payload }) => [event, payload]);
  room.on("left", ({ reason }) => reason);
  await room.joined;
  await room.track({ name: "Alice" });
  const sent: boolean = await room.broadcast("typing", { name: "Alice" });
  await room.untrack();
  await room.leave();

  try {
    await client.request({ type: "ping" });
  } catch (error) {
    if (error instanceof RelayRequestError) console.log(error.code, error.frame.message);
    if (error instanceof RelayClosedError) console.log(error.code, error.reason);
  }
  await payments.unsubscribe();
  await client.close();
  console.log(protocol, resumed, sent, statuses);
}

// @ts-expect-error: the token is a provider, not a string
new RelayClient({ url: "ws://127.0.0.1:8765/", token: "eyJ..." });
// @ts-expect-error: events are operations
client.subscribe("nexus_payments", { events: ["TRUNCATE"] });

void main();
