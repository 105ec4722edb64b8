// Watching one job: its WebSocket first, polling the status while the socket is not open,
// and reopening the socket with backoff when it closes before the job ends.
import { ApiError, apiConfig, downloadStatus, isAbort, retryDelayMs } from "./api";
import { backoffDelayMs, RECONNECT_BACKOFF } from "./backoff";
import { isTerminal, type JobUpdate } from "./types";

/** Close codes after which the socket is not reopened (docs/api.md, "WebSocket"). */
export const FINAL_CLOSE_CODES: ReadonlySet<number> = new Set([4401, 4403, 4404]);
/** A socket not open this long is not waited for: polling starts meanwhile. */
export const SOCKET_OPEN_TIMEOUT_MS = 5000;
/** Two heartbeats (15 s each) and a margin: a socket this quiet is treated as lost. */
export const SOCKET_SILENCE_MS = 35_000;
export const DEFAULT_POLLING_INTERVAL_MS = 2000;

export type Transport = "websocket" | "polling" | "none";

export interface WatcherEvents {
  /** A message of the socket or a status answer. */
  update(update: JobUpdate): void;
  /** The job cannot be watched any more (404, 401): its last error. */
  lost(error: ApiError): void;
  transport?(transport: Transport): void;
}

/**
 * Owns one socket, one poll timer and one reopen timer at most, and every request it
 * made; `stop()` ends all of them. It stops by itself at a terminal status.
 *
 * A socket that closes before the job ends (4408 when idle, a server restarting, an edge
 * dropping it) is reopened after a backoff with jitter (1 s, 2 s, 4 s ... 30 s, reset once
 * a socket delivered a message), through a `websocket_url` with a fresh ticket: the one a
 * poll since the close brought, else a status call's. Meanwhile the status is polled every
 * `polling_interval`, so the job keeps moving on screen. A socket closed 4401, 4403 or 4404
 * is not reopened: polling carries on alone.
 */
export class JobWatcher {
  private socket: WebSocket | null = null;
  private socketAllowed = true;
  private freshUrl: string | null;
  private reopenAttempt = 0;
  private pollFailures = 0;
  private polling = false;
  private timers = new Set<ReturnType<typeof setTimeout>>();
  private openTimer: ReturnType<typeof setTimeout> | null = null;
  private silenceTimer: ReturnType<typeof setTimeout> | null = null;
  private pollTimer: ReturnType<typeof setTimeout> | null = null;
  private reopenTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly requests = new AbortController();
  private readonly pollingIntervalMs: number;
  private stopped = false;
  private status: string | undefined;

  constructor(
    readonly jobId: string,
    private readonly events: WatcherEvents,
    options: { websocketUrl?: string | null; pollingIntervalMs?: number; status?: string } = {},
  ) {
    this.freshUrl = options.websocketUrl ?? null;
    this.pollingIntervalMs = options.pollingIntervalMs ?? DEFAULT_POLLING_INTERVAL_MS;
    this.status = options.status;
  }

  get transport(): Transport {
    if (this.socket?.readyState === WebSocket.OPEN) return "websocket";
    return this.polling ? "polling" : "none";
  }

  get active(): boolean {
    return !this.stopped;
  }

  start(): void {
    if (isTerminal(this.status)) {
      this.stop();
      return;
    }
    void this.reopen();
  }

  /** Ends every timer, request and socket of this watcher, for good. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.polling = false;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.requests.abort();
    this.dropSocket();
    this.events.transport?.("none");
  }

  private later(fn: () => void, ms: number): ReturnType<typeof setTimeout> {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.stopped) fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  private cancel(timer: ReturnType<typeof setTimeout> | null): null {
    if (timer !== null) {
      clearTimeout(timer);
      this.timers.delete(timer);
    }
    return null;
  }

  private apply(update: JobUpdate): void {
    if (this.stopped) return;
    if (update.status) this.status = update.status;
    this.events.update(update);
    if (isTerminal(update.status)) this.stop();
  }

  // --- the socket ------------------------------------------------------------------------------

  private openSocket(url: string): void {
    let socket: WebSocket;
    try {
      socket = new WebSocket(url);
    } catch {
      this.socketLost();
      return;
    }
    this.socket = socket;
    this.openTimer = this.later(() => {
      if (this.socket === socket && socket.readyState !== WebSocket.OPEN) this.startPolling();
    }, SOCKET_OPEN_TIMEOUT_MS);
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.openTimer = this.cancel(this.openTimer);
      this.armSilenceTimer(socket);
    };
    socket.onmessage = (event: MessageEvent) => {
      if (this.socket !== socket) return;
      let message: JobUpdate;
      try {
        message = JSON.parse(String(event.data));
      } catch {
        return;
      }
      this.reopenAttempt = 0; // the backoff starts over once a socket has worked
      this.stopPolling();
      this.armSilenceTimer(socket);
      this.events.transport?.("websocket");
      this.apply(message);
    };
    socket.onclose = (event: CloseEvent) => {
      if (this.socket !== socket) return;
      this.dropSocket();
      if (this.stopped) return;
      if (FINAL_CLOSE_CODES.has(event.code)) {
        this.socketAllowed = false;
        this.startPolling();
        return;
      }
      this.socketLost();
    };
  }

  private armSilenceTimer(socket: WebSocket): void {
    this.silenceTimer = this.cancel(this.silenceTimer);
    this.silenceTimer = this.later(() => {
      if (this.socket === socket) this.socketLost();
    }, SOCKET_SILENCE_MS);
  }

  private dropSocket(): void {
    this.openTimer = this.cancel(this.openTimer);
    this.silenceTimer = this.cancel(this.silenceTimer);
    const socket = this.socket;
    this.socket = null;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = null;
    if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) {
      socket.close(1000);
    }
  }

  /** The socket closed or never opened before the job ended: poll, and reopen later. */
  private socketLost(): void {
    this.dropSocket();
    if (this.stopped) return;
    this.startPolling();
    if (this.reopenTimer !== null || !this.socketAllowed) return;
    const delayMs = backoffDelayMs(this.reopenAttempt, RECONNECT_BACKOFF, apiConfig.random);
    this.reopenAttempt += 1;
    this.reopenTimer = this.later(() => {
      this.reopenTimer = null;
      void this.reopen();
    }, delayMs);
  }

  /** Opens the socket through a fresh ticket: a poll's since the close, else a status call's. */
  private async reopen(): Promise<void> {
    let url = this.freshUrl;
    this.freshUrl = null;
    if (url === null) {
      try {
        const job = await downloadStatus(this.jobId, this.requests.signal, false);
        this.apply({ ...job, type: "poll" });
        url = job.websocket_url ?? null;
      } catch (error) {
        if (isAbort(error) || this.stopped) return;
        if (this.giveUp(error)) return;
        this.socketLost();
        return;
      }
    }
    if (this.stopped || this.socket) return;
    if (url === null) {
      this.startPolling(); // an active job's status always has one; poll meanwhile
      return;
    }
    this.openSocket(url);
  }

  // --- polling ---------------------------------------------------------------------------------

  private startPolling(): void {
    if (this.stopped || this.polling) return;
    this.polling = true;
    this.events.transport?.("polling");
    this.pollTimer = this.later(() => void this.pollOnce(), 0);
  }

  private stopPolling(): void {
    this.polling = false;
    this.pollTimer = this.cancel(this.pollTimer);
  }

  private async pollOnce(): Promise<void> {
    this.pollTimer = null;
    let nextMs = this.pollingIntervalMs;
    try {
      const job = await downloadStatus(this.jobId, this.requests.signal, false);
      if (!this.polling) return;
      this.pollFailures = 0;
      if (job.websocket_url && !this.socket) this.freshUrl = job.websocket_url;
      this.apply({ ...job, type: "poll" });
    } catch (error) {
      if (isAbort(error) || this.stopped || !this.polling) return;
      if (this.giveUp(error)) return;
      const retryMs = error instanceof ApiError ? retryDelayMs(error, this.pollFailures) : null;
      this.pollFailures += 1;
      nextMs = Math.max(nextMs, retryMs ?? 0);
    }
    if (this.polling && !this.stopped && this.pollTimer === null) {
      this.pollTimer = this.later(() => void this.pollOnce(), nextMs);
    }
  }

  /** A status answer that ends the watch (the job is gone, the key revoked): stops. */
  private giveUp(error: unknown): boolean {
    if (error instanceof ApiError && !error.transient && error.status >= 400 && error.status < 500) {
      this.stop();
      this.events.lost(error);
      return true;
    }
    return false;
  }
}
