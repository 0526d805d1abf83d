// Type declarations of @nexus-relay/client (src/index.js), written by hand.
// The frames are the relay's protocol, nexus-relay.v1 (docs/protocol.md).

export declare const SUBPROTOCOL: "nexus-relay.v1";

// --- Frames --------------------------------------------------------------------------

/** A row as the relay sends it: column name to JSON value. */
export type Row = Record<string, unknown>;

/** A position in the change log, `"<log>:<tick>.<seq>"`: kept and handed back, never parsed. */
export type Position = string;

export type Operation = "INSERT" | "UPDATE" | "DELETE";

export interface ReadyFrame {
  type: "ready";
  version: number;
  connection_id: string;
  position: Position;
  user: string;
  role: string;
  claims: Record<string, unknown>;
  expires_at: number;
  limits: {
    max_subscriptions: number;
    max_topics: number;
    max_messages_per_second: number;
    max_frame_bytes: number;
  };
  ref?: string | number;
}

export interface SubscribedFrame {
  type: "subscribed";
  id: string;
  table: string;
  events: Operation[];
  position: Position;
  resumed: boolean;
  resume_token: string;
  ref?: string | number;
}

export interface ChangeFrame {
  type: "change";
  subscriptions: string[];
  table: string;
  op: Operation | "LEAVE";
  commit_timestamp: string;
  position: Position;
  new?: Row;
  old?: Row;
  /** The rows weighed more than RELAY_MAX_CHANGE_BYTES: re-fetch the row named by `key`. */
  too_large?: true;
  key?: Row;
  size?: number;
}

export type GapReason =
  | "truncate"
  | "relay_error"
  | "unreadable_change"
  | "claims_changed"
  | "policy_changed"
  | "log_changed"
  | "history_exceeded"
  | "resume_refused"
  | "replay_too_large";

export interface GapFrame {
  type: "gap";
  subscriptions: string[];
  /** The relay's reason; or, for a resume the relay refused with an error, that error's code. */
  reason: GapReason | (string & {});
  position: Position;
}

export interface ReplayedFrame {
  type: "replayed";
  id: string;
  position: Position;
}

export interface UnsubscribedFrame {
  type: "unsubscribed";
  id: string;
  reason?: "table_unpublished" | "policy_removed" | (string & {});
}

export interface ClosingFrame {
  type: "closing";
  code: number;
  reason: string;
  message: string;
}

export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
  ref?: string | number;
}

export interface PresenceMeta {
  phx_ref: string;
  phx_ref_prev?: string;
  [field: string]: unknown;
}

/** Who is present in a room, by presence key. */
export type PresenceState = Record<string, PresenceMeta[]>;

export interface JoinedFrame {
  type: "joined";
  topic: string;
  presence_state?: Record<string, { metas: PresenceMeta[] }>;
  ref?: string | number;
}

export interface BroadcastFrame {
  type: "broadcast";
  topic: string;
  event: string;
  payload: unknown;
}

export interface PresenceDiffFrame {
  type: "presence_diff";
  topic: string;
  joins: Record<string, { metas: PresenceMeta[] }>;
  leaves: Record<string, { metas: PresenceMeta[] }>;
}

/** Any frame the relay answers a request with (see RelayClient.request). */
export type ReplyFrame = { type: string; ref?: string | number; [field: string]: unknown };

// --- Errors --------------------------------------------------------------------------

/** The relay refused a request; `code` is the protocol's error code. */
export declare class RelayRequestError extends Error {
  readonly name: "RelayRequestError";
  readonly code: string;
  readonly frame: ErrorFrame;
  constructor(frame: ErrorFrame);
}

/** The connection closed, or the client stopped, before an answer came. */
export declare class RelayClosedError extends Error {
  readonly name: "RelayClosedError";
  /** The close code (null: not connected, or stopped without one). */
  readonly code: number | null;
  readonly reason: string;
  constructor(code: number | null, reason: string);
}

/** A request that had no answer within its timeout. */
export declare class RelayTimeoutError extends Error {
  readonly name: "RelayTimeoutError";
  constructor(type: string, ms: number);
}

// --- The WebSocket it uses -----------------------------------------------------------

/** What the client needs of a WebSocket: the browser's, Node 22's, or `ws`'s. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  // Set by the client; it reads event.data of a message, event.code and event.reason of a close.
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface WebSocketConstructor {
  new (url: string, protocols: string[]): WebSocketLike;
}

// --- Handlers ------------------------------------------------------------------------

declare class Emitter<Events extends Record<string, (...args: any[]) => void>> {
  /** Call `handler` on each `kind` event; returns this. A handler that throws is logged. */
  on<K extends keyof Events>(kind: K, handler: Events[K]): this;
  off<K extends keyof Events>(kind: K, handler: Events[K]): this;
}

export type Status = "idle" | "connecting" | "live" | "reconnecting" | "closed";

export interface Logger {
  warn?(...data: unknown[]): void;
  error?(...data: unknown[]): void;
}

/**
 * Gives the client a token: at the first connection, after the relay closed
 * with 4003 (expired) or 4010 (revoked), when the one it has is about to
 * expire, and to refresh. `null` (or `""`): there is none (signed out), and
 * the client stops. A throw: tried again with the reconnection's backoff.
 */
export type TokenProvider = () => string | null | undefined | Promise<string | null | undefined>;

export interface RelayClientOptions {
  /** The relay's WebSocket URL, `ws://host:8765/` or `wss://...`. */
  url: string;
  token: TokenProvider;
  /** Default: the global WebSocket (browsers, Node 22). On Node 20: `ws`'s. */
  WebSocket?: WebSocketConstructor;
  /** Where handler failures and refusals nobody waits for are reported (default console; null: nowhere). */
  logger?: Logger | null;

  // Reconnection: the first delay doubles up to the last, each drawn at 50% to 150% of it.
  /** Default 500. */
  reconnectFirstMs?: number;
  /** Default 30000. */
  reconnectMaxMs?: number;

  // Timeouts
  /** From opening the socket to `ready` (default 10000). */
  connectTimeoutMs?: number;
  /** For requests (default 10000). */
  requestTimeoutMs?: number;
  /** How often a `ping` is sent (default 25000). */
  pingIntervalMs?: number;
  /** No `pong` within it: the connection is dead, and replaced (default 10000). */
  pongTimeoutMs?: number;

  // Tokens
  /**
   * A token with less than this many seconds left is refreshed, and not
   * reconnected with (default 60). 0: refresh only on the relay's
   * `token_expiring`.
   */
  refreshBeforeS?: number;
}

export interface SubscribeOptions {
  /** `"*"` (default) or some of INSERT, UPDATE, DELETE (LEAVE comes with UPDATE). */
  events?: "*" | Operation[];
  /** The columns to send (the primary key always comes). Default: every column. */
  select?: string[];
  /** Supabase's `column=op.value`, joined with `&`; PostgREST's `or=(...)` groups (docs/protocol.md, "Filters"). */
  filter?: string;
  /** Resume from a `resumePoint` kept from before: first receive what was missed after it. */
  since?: Position;
  resumeToken?: string;
}

export interface JoinOptions {
  /** Receive the room's presence (implied by presenceKey). */
  presence?: boolean;
  /** One's presence key: several connections of one key are one person to the others. */
  presenceKey?: string;
  /** Receive one's own broadcasts. */
  self?: boolean;
  /** Broadcasts are answered: broadcast() waits for the relay. */
  ack?: boolean;
}

export interface Disconnect {
  code: number;
  reason: string;
  /** The relay's `closing` frame, when it sent one before closing. */
  closing: ClosingFrame | null;
}

export interface StopReason {
  /** The close code; null when the token provider gave no token. */
  code: number | null;
  /** "no_token", the relay's reason for 4001, or close()'s. */
  reason: string;
}

// --- The client ----------------------------------------------------------------------

export type SubscriptionEvents = {
  /** Acknowledged, on every connection (`resumed` says whether a replay follows). */
  subscribed: (frame: SubscribedFrame) => void;
  change: (frame: ChangeFrame) => void;
  /** Changes may have been lost: re-fetch what it feeds. */
  gap: (frame: GapFrame) => void;
  replayed: (frame: ReplayedFrame) => void;
  /** The relay ended it (the table unpublished, the policy removed). */
  unsubscribed: (frame: UnsubscribedFrame) => void;
  /** The relay refused it. */
  error: (error: RelayRequestError) => void;
};

export declare class Subscription extends Emitter<SubscriptionEvents> {
  readonly table: string;
  readonly events: "*" | Operation[];
  readonly select: string[] | null;
  readonly filter: string | null;
  /** The relay's id on the current connection; null when not subscribed now. */
  readonly id: string | null;
  /** Where a resume starts: the last position received. */
  readonly position: Position | null;
  readonly resumeToken: string | null;
  readonly state: "pending" | "live" | "closed";
  /** Between a resumed ack and its `replayed`. */
  readonly replaying: boolean;
  /** The first ack; rejects with a RelayRequestError when refused. */
  readonly subscribed: Promise<SubscribedFrame>;
  /** To resume it elsewhere (another process, a later run); null before its first ack. */
  readonly resumePoint: { since: Position; resumeToken: string } | null;
  unsubscribe(): Promise<void>;
}

export type RoomEvents = {
  /** In the room, on every connection. */
  joined: (frame: JoinedFrame) => void;
  /**
   * Out of the room: "disconnected" (joined again once reconnected), "left"
   * (leave()), or the relay's reason (not joined again).
   */
  left: (event: { reason: string }) => void;
  broadcast: (frame: BroadcastFrame) => void;
  /** The presence state now; `diff` is the frame it came from (null: joined, or out). */
  presence: (state: PresenceState, diff: PresenceDiffFrame | null) => void;
  error: (error: RelayRequestError) => void;
};

export declare class Room extends Emitter<RoomEvents> {
  readonly topic: string;
  readonly presenceKey: string | null;
  readonly withPresence: boolean;
  readonly self: boolean;
  readonly ack: boolean;
  readonly state: "joining" | "joined" | "closed";
  readonly isJoined: boolean;
  /** The payload tracked (again after each rejoin), or null. */
  readonly tracked: Record<string, unknown> | null;
  /** The first `joined`; rejects with a RelayRequestError when refused. */
  readonly joined: Promise<JoinedFrame>;
  /** Who is present, by key. */
  readonly presence: PresenceState;
  /** False: not in the room now, nothing sent. True: sent (with `ack`: and sent on by the relay). */
  broadcast(event: string, payload: unknown): Promise<boolean>;
  /** Resolves with `tracked`, or null when not joined now (tracked once joined). */
  track(payload: Record<string, unknown>): Promise<ReplyFrame | null>;
  untrack(): Promise<ReplyFrame | null>;
  leave(): Promise<void>;
}

export type ClientEvents = {
  status: (status: Status) => void;
  ready: (frame: ReadyFrame) => void;
  change: (frame: ChangeFrame) => void;
  gap: (frame: GapFrame) => void;
  disconnect: (event: Disconnect) => void;
  /** Stopped for good: close(), close 4001, or no token from the provider. */
  close: (reason: StopReason) => void;
  /** A refusal that no request was waiting for. */
  error: (error: RelayRequestError) => void;
};

export declare class RelayClient extends Emitter<ClientEvents> {
  constructor(options: RelayClientOptions);
  readonly status: Status;
  /** The current connection's `ready` frame; null when not authenticated. */
  readonly ready: ReadyFrame | null;
  readonly stopReason: StopReason | null;
  /** The current connection's WebSocket, or null. */
  readonly socket: WebSocketLike | null;
  readonly subscriptions: Subscription[];
  readonly rooms: Map<string, Room>;
  /** Start, or start again after close(); resolves with the next `ready`. */
  connect(): Promise<ReadyFrame>;
  /** Close and stop reconnecting; subscriptions and rooms are kept for a later connect(). */
  close(code?: number, reason?: string): Promise<void>;
  subscribe(table: string, options?: SubscribeOptions): Subscription;
  /** Throws if already in (or joining) the room. */
  join(topic: string, options?: JoinOptions): Room;
  /** Send a frame (its `ref` is added) and wait for the relay's answer. */
  request(frame: { type: string; [field: string]: unknown }, timeoutMs?: number): Promise<ReplyFrame>;
}
