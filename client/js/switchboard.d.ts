// Type declarations for switchboard.js, the Switchboard client SDK (an ES module with no
// dependencies, for browsers, Node 18+ and React Native). The wire protocol is
// docs/protocol.md; the guide is docs/browser.md.

export declare const VERSION: string;
/** The WebSocket subprotocol the SDK offers (JSON text frames). */
export declare const SUBPROTOCOL_JSON: "switchboard.v1.json";

export type State = "connecting" | "open" | "reconnecting" | "offline" | "closed";
export type Transport = "websocket" | "sse";

/** A position in a stream: the next message of the stream has `offset + 1`. */
export interface Position {
  epoch: string;
  offset: number;
}

/** One message, delivered once and in offset order per stream. */
export interface Message<T = unknown> {
  /** "user", "broadcast" or "ch.NAME" */
  stream: string;
  epoch: string;
  offset: number;
  data: T;
}

export interface StateChange {
  state: State;
  previous: State;
  transport: Transport;
  /** Gateway of the current (or last) connection. */
  gateway: string | null;
  /** Close code of the connection that just ended (1006: no close code seen). */
  code?: number;
  reason?: string;
}

/** Sent after every (re)connect, and when a stream's epoch changes mid-connection. */
export interface Recovery {
  /** True when no message was lost: every stream resumed exactly (or nothing was missed). */
  recovered: boolean;
  /** The gateway knew our session. */
  resumed: boolean;
  /** Streams whose messages in between are lost to this client: refetch their state. */
  lost: string[];
  gateway: string | null;
  /** The first connection of this client (nothing to recover). */
  initial: boolean;
  /** How the position reached the gateway: our `cursor=`, EventSource's `Last-Event-ID`, or
   * null (first connection, or an epoch change). */
  via: "cursor" | "last-event-id" | null;
}

export interface Welcome {
  type: "welcome";
  session: string;
  gateway: string;
  user: string;
  resumed: boolean;
  recovered: boolean;
  streams: Record<string, Position>;
}

export interface SwitchboardError {
  /** A gateway error code ("forbidden", "bad_request", "unavailable", ...), a close code or
   * HTTP status for fatal errors, or "token_provider". */
  code: string | number;
  message: string;
  /** True when the client stopped for good (state "closed"). */
  fatal: boolean;
  /** The channel a subscribe or publish error is about. */
  channel?: string;
}

export interface Subscribed {
  channel: string;
  epoch: string;
  offset: number;
  recovered: boolean;
}

/** A connection joined or left a channel whose presence events this one receives. */
export interface Presence {
  channel: string;
  event: "join" | "leave";
  user: string;
  /** The connection's id: a user with two tabs joins twice and leaves twice. */
  conn: string;
}

export interface Published {
  channel: string;
  epoch: string;
  offset: number;
}

export interface BackoffOptions {
  /** Bound of the first delay, seconds (default 0.5). */
  base?: number;
  /** Largest bound, seconds (default 20). */
  cap?: number;
  /** Seconds a connection must stay open before the attempt count resets (default 60). */
  resetAfter?: number;
}

export interface Options {
  /** The client JWT. */
  token?: string;
  /** Returns a (new) token: called when there is none, when the current one expires within
   * 10 s (JWT `exp`), and when the gateway refuses it (HTTP 401, close 4001). */
  tokenProvider?: () => Promise<string>;
  /** "auto" (default): WebSocket, falling back to SSE when it cannot connect. */
  transport?: "auto" | "websocket" | "sse";
  /** Only "json" in the browser SDK. */
  format?: "json";
  /** Channels to subscribe to at connect. */
  channels?: string[];
  backoff?: BackoffOptions;
  /** Seconds to wait for the welcome (default 10). */
  openTimeout?: number;
  /** Seconds of silence before the SDK pings over a WebSocket (default 25; null: off). */
  pingInterval?: number | null;
  /** Seconds to wait for that pong before reconnecting (default 10). */
  pingTimeout?: number;
  /** WebSocket failures before any welcome after which "auto" moves to SSE even when the
   * probe could not tell why they failed (default 3). */
  fallbackAfter?: number;
  /** Probe the gateway with a plain GET after a failed handshake (default true). */
  probe?: boolean;
  /** Acknowledge the user stream's messages once the "message" listeners have returned
   * (delivery receipts, docs/receipts.md): at most every 50 messages or 1 s, and at close;
   * over WebSocket only (default true). */
  ack?: boolean;
  /** Extra query parameters for every connect (e.g. `{user: "alice"}` on a dev gateway with
   * auth disabled). */
  params?: Record<string, string>;
  /** The WebSocket class to use (default `globalThis.WebSocket`): in Node < 22 the `ws`
   * package's, or any class with the browser's WebSocket API. */
  WebSocket?: WebSocketConstructor;
  /** The EventSource class for the SSE fallback (default `globalThis.EventSource`). Without
   * one, "auto" never falls back and "sse" throws. */
  EventSource?: EventSourceConstructor;
  /** Used by the handshake probe (default `globalThis.fetch`; none: no probe). */
  fetch?: FetchLike;
}

/** What the SDK uses of a WebSocket: the browser's, React Native's and the `ws` package's
 * have it. */
export interface WebSocketLike {
  readonly readyState: number;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor =
  new (url: string, protocols?: string | string[]) => WebSocketLike;

/** What the SDK uses of an EventSource. */
export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (ev: any) => void): void;
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;

/** What the SDK uses of `fetch` (the global one fits). */
export type FetchLike = (url: string, init?: any) => Promise<{
  readonly status: number;
  readonly headers: { get(name: string): string | null };
  json(): Promise<any>;
}>;

export interface EventMap {
  message: Message;
  state: StateChange;
  welcome: Welcome;
  recovered: Recovery;
  error: SwitchboardError;
  subscribed: Subscribed;
  unsubscribed: { channel: string };
  presence: Presence;
}

export interface Stats {
  connects: number;
  reconnects: number;
  duplicates: number;
  gaps: number;
  lost: number;
  fallbacks: number;
}

export declare class Switchboard {
  /**
   * @param url the gateway: "https://rt.example.com", "wss://rt.example.com/ws", or a URL
   *   relative to the page ("/" when the page is served by the gateway).
   */
  constructor(url: string, options?: Options);
  readonly url: string;
  readonly state: State;
  readonly transport: Transport;
  readonly gateway: string | null;
  readonly session: string | null;
  readonly user: string | null;
  readonly channels: string[];
  /** Stream -> position of the last message delivered (or the welcome's). */
  readonly positions: Record<string, Position>;
  /** The positions as a resume cursor, `STREAM:EPOCH:OFFSET,...`. */
  readonly cursor: string;
  readonly stats: Stats;

  /** Returns a function that removes the listener. */
  on<K extends keyof EventMap>(event: K, callback: (payload: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(event: K, callback: (payload: EventMap[K]) => void): void;
  /** Resolves with the first welcome; rejects when the client stops for good first. */
  connect(): Promise<Welcome>;
  /** Close (WebSocket code 1000) and stop reconnecting; connect() again resumes. */
  close(): void;
  /** Messages arrive as stream "ch.NAME". Over SSE the SDK reconnects (resuming) to apply it. */
  subscribe(channel: string, options?: { cursor?: Position | string }): void;
  unsubscribe(channel: string): void;
  /** WebSocket only; resolves once the gateway stored the message. */
  publish(channel: string, data: unknown, timeout?: number): Promise<Published>;
  /** Round trip in milliseconds (WebSocket only). */
  ping(timeout?: number): Promise<number>;
}

export default Switchboard;

// Protocol helpers, for clients that speak the protocol themselves.
export declare function closeAction(code: number): "backoff" | "jitter" | "token" | "terminal";
export declare function formatCursor(
  positions: Map<string, Position> | Record<string, Position>,
): string;
export declare function parseCursor(text: string): Map<string, Position>;
export declare function endpoints(url?: string): { ws: string; sse: string; http: string };
export declare function retryAfter(value: string | null | undefined): number | null;
export declare class Backoff {
  constructor(options?: BackoffOptions, random?: () => number, now?: () => number);
  base: number;
  cap: number;
  resetAfter: number;
  attempt: number;
  bound(): number;
  /** Seconds before the next attempt; a server hint replaces the random delay. */
  next(hint?: number | null): number;
  connected(): void;
  disconnected(): void;
}
