/*
 * The downloads page: request a file, follow its job live, collect or cancel it.
 *
 * The list follows jobs started elsewhere (downloads/list_watch.js); a card's words come
 * from downloads/wording.js (failures by error code, a queued job's place in line).
 *
 * Each job has one JobController that owns its transport: a WebSocket first (the server
 * sends a snapshot, then events); polling GET /v1/download/status/<id> while the socket is
 * not open within 5 s, errors or drops before a terminal state; the socket reconnects with
 * backoff (1 s, 2 s, 4 s ... 30 s) and polling stops once it is open again. An open socket
 * that sends nothing within 5 s (the snapshot comes at once) counts as dropped, and one that
 * goes quiet for long is reopened for a fresh snapshot, since events are at-most-once hints.
 * A controller holds at most one socket and one poll timer, and drops both when its job is
 * terminal.
 *
 * The socket's URL is the websocket_url the API gave: initiate's, then the newest that a
 * status answer of the active job carried. Its ticket opens the socket for a few minutes
 * only, so a socket refused 4401 with one is retried through the status (a fresh ticket, or
 * a 401 if the session really ended). A job listed after a reload, which came with no URL,
 * opens its socket with the session cookie until a status answer gives one. A socket
 * refused 4429 (too many open for this user) counts as lost: polling, then reconnecting.
 *
 * Hooks for browser tests (stable; ids and data-testid do not change with the wording):
 *   page root       #downloads-page[data-ready="true"] once the list is loaded and watched
 *                   (wait for it, or for window.downloadsPage.ready, before driving the page)
 *   form            #download-form            [data-testid=download-form]
 *   file id input   #file-id                  [data-testid=file-id-input]
 *   its error       #file-id-error            [data-testid=file-id-error]
 *   priority        #priority                 [data-testid=priority-select]  (low|normal|high)
 *   submit          #download-submit          [data-testid=download-submit]
 *   page messages   #page-message             [data-testid=page-message]  aria-live, API errors
 *                   data-kind="error|info"
 *   list            #downloads-list           [data-testid=downloads-list]  newest first
 *   empty note      #downloads-empty          [data-testid=downloads-empty]
 *   "more" note     #downloads-more           [data-testid=downloads-more]  older jobs not shown
 *   one job         li[data-job-id="job_…"]   [data-testid=job-row]
 *                   data-status="queued|processing|completed|failed|cancelled|expired"
 *                   data-progress="0..100"  data-transport="websocket|polling|none"
 *                   data-connection="live|lost"  lost: "Reconnecting…", no countdown
 *   in a job row    [data-testid=job-file-id]  the file id
 *                   [data-testid=job-progress] <progress max=100 value=…>
 *                   [data-testid=job-state]    status text, aria-live polite
 *                   [data-testid=job-error]    error message (inside job-state, failed/retrying)
 *                   [data-testid=job-detail]   %, bytes done/total, ETA; file name when completed
 *                   [data-testid=job-cancel]   button, while queued or processing
 *                   [data-testid=job-download] button, when completed
 *                   [data-testid=job-retry]    button, when failed (a new job, same file and priority)
 *                   [data-testid=job-again]    button, when cancelled or expired (likewise)
 *   sign out        [data-testid=logout-button]
 *
 * window.downloadsPage (debug hook for tests):
 *   ready                 a Promise, resolved once the list has loaded and is being watched
 *   transport(jobId)      "websocket" | "polling" | "none"
 *   transports()          {jobId: transport} of every job on the page
 *   listChecks()          how many times the list was asked for jobs started elsewhere
 *   jobs()                [{job_id, status, progress, transport}] newest first
 *   debug(jobId)          {transport, socketState, polling, pollTimer, reconnectTimer,
 *                          reconnectAttempt, stopped} of one controller
 */

import { ListWatch } from "./downloads/list_watch.js";
import { failure, formatDuration, queuedDetail } from "./downloads/wording.js";

const TERMINAL = new Set(["completed", "failed", "cancelled", "expired"]);
const KNOWN_STATUSES = new Set(["queued", "processing", ...TERMINAL]);
const SOCKET_OPEN_TIMEOUT_MS = 5000;
// The server sends a snapshot as soon as a socket opens; an open socket that says nothing
// this long (a buffering proxy, say) is treated as lost.
const SOCKET_SNAPSHOT_TIMEOUT_MS = 5000;
// A socket still connecting after this long is given up and reconnected.
const SOCKET_CONNECT_GIVE_UP_MS = 20000;
const RECONNECT_BASE_MS = 1000;
const RECONNECT_MAX_MS = 30000;
const DEFAULT_POLLING_INTERVAL_MS = 2000;
// Events are hints delivered at most once: an open socket that stays silent this long is
// reopened for a fresh snapshot, so a lost terminal event never leaves a row stuck.
const SOCKET_SILENCE_MS = { queued: 60000, processing: 20000 };
const RATE_WINDOW_MS = 10000;
// A queued job's place in line changes as the jobs ahead start, which sends no event of
// its own: its status is asked again this often while it waits (on a socket or not).
const QUEUE_PLACE_REFRESH_MS = 5000;
// A second submit of the same file and priority this soon after the first was answered
// (a double click, a click then Enter) sends the same Idempotency-Key: the same job.
const SUBMIT_REPLAY_MS = 3000;

const STATUS_LABELS = {
  queued: "Queued",
  processing: "Processing",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
  expired: "Expired",
};

// --- Formatting ----------------------------------------------------------------------------

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return "";
  const units = ["bytes", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  if (unit === 0) return `${value} ${value === 1 ? "byte" : "bytes"}`;
  return `${value.toFixed(value < 100 ? 1 : 0)} ${units[unit]}`;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function formatWhen(iso) {
  const date = iso ? new Date(iso) : null;
  if (!date || Number.isNaN(date.getTime())) return "";
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay ? timeFormat.format(date) : dateTimeFormat.format(date);
}

// --- API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `Request failed (${status})`);
    this.name = "ApiError";
    this.status = status; // 0 when the server could not be reached
    this.code = error.code || "UNKNOWN";
    this.error = error;
  }
}

function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === "csrftoken") return decodeURIComponent(value.join("="));
  }
  return "";
}

function newIdempotencyKey() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  // randomUUID exists only in secure contexts; getRandomValues everywhere.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Calls the API; resolves to the envelope of a success, throws ApiError otherwise. */
async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json", ...headers },
    signal,
  };
  if (method !== "GET") init.headers["X-CSRFToken"] = csrfToken();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, {
      code: "NETWORK_ERROR",
      message: "Could not reach the server. Check your connection and try again.",
    });
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    // Not JSON: a proxy's error page, for instance.
  }
  if (response.ok && payload && payload.success !== false) return payload;
  const error = { ...(payload && payload.error) };
  if (!error.message) {
    error.code = error.code || `HTTP_${response.status}`;
    error.message = `The server answered ${response.status} ${response.statusText}`.trim();
  }
  if (error.retry_after === undefined && response.headers.get("Retry-After")) {
    error.retry_after = Number(response.headers.get("Retry-After"));
  }
  throw new ApiError(response.status, error);
}

const FIELD_LABELS = { file_id: "File ID", priority: "Priority", metadata: "Metadata" };

/** A sentence a person can act on, from an ApiError. */
function describeError(error) {
  if (!(error instanceof ApiError)) return "Something went wrong. Please try again.";
  const { code, error: body } = error;
  if (code === "RATE_LIMIT_EXCEEDED") {
    const wait = Number(body.retry_after);
    const when = Number.isFinite(wait) && wait > 0 ? ` Try again in ${formatDuration(wait)}.` : "";
    return `${body.message.replace(/\.?$/, ".")}${when}`;
  }
  if (code === "VALIDATION_ERROR" && body.fields) {
    const details = Object.entries(body.fields).map(([field, messages]) => {
      const label = FIELD_LABELS[field] || field;
      return `${label}: ${[].concat(messages).join(" ")}`;
    });
    return `${body.message.replace(/\.?$/, ".")} ${details.join(" ")}`;
  }
  return body.message;
}

function socketUrlFor(jobId) {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${window.location.host}/v1/download/subscribe/${encodeURIComponent(jobId)}`;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

function visuallyHidden(text) {
  return element("span", { class: "visually-hidden" }, text);
}

// --- One job -------------------------------------------------------------------------------

class JobController {
  constructor(page, job, { websocketUrl, pollingInterval, estimatedTime } = {}) {
    this.page = page;
    this.jobId = job.job_id;
    this.job = { ...job };
    this.websocketUrl = websocketUrl || null; // with a ticket, from the API
    this.pollingInterval = pollingInterval || page.pollingInterval;
    this.estimatedTime = estimatedTime; // seconds, from the initiate answer

    this.socket = null;
    this.socketOpenTimer = null;
    this.socketGiveUpTimer = null;
    this.socketSilenceTimer = null;
    this.reconnectTimer = null;
    this.reconnectAttempt = 0;

    this.polling = false;
    this.pollTimer = null;
    this.pollAbort = null;

    this.placeTimer = null;
    // "lost" while neither the socket nor a poll has answered since the connection dropped:
    // the row says "Reconnecting…" and shows no countdown.
    this.connection = "live";

    this.stopped = false;
    this.queuedAttempts = job.attempts || 0;
    this.samples = [];
    this.etaAt = job.estimated_completion ? Date.parse(job.estimated_completion) : null;
    this.busy = false; // a button's request is in flight
    this.view = new JobView(this);
  }

  get status() {
    return this.job.status;
  }

  get transport() {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) return "websocket";
    if (this.polling) return "polling";
    return "none";
  }

  watch() {
    if (TERMINAL.has(this.status)) {
      this.stopped = true;
      return;
    }
    this.connectSocket();
    this.schedulePlaceRefresh();
  }

  /** The connection is down (the browser went offline, the socket dropped, a poll failed). */
  connectionLost() {
    if (this.stopped || this.connection === "lost") return;
    this.connection = "lost";
    this.view.render();
  }

  connectionBack() {
    if (this.connection === "live") return;
    this.connection = "live";
    this.view.render();
  }

  /** The browser says it is offline: the socket cannot be trusted, poll until it is back. */
  offline() {
    if (this.stopped) return;
    this.connectionLost();
    this.socketLost();
  }

  schedulePlaceRefresh() {
    clearTimeout(this.placeTimer);
    this.placeTimer = null;
    if (this.stopped || this.status !== "queued" || this.job.next_retry_at) return;
    this.placeTimer = setTimeout(async () => {
      this.placeTimer = null;
      if (!this.polling) await this.refresh(); // a poll brings the place anyway
      this.schedulePlaceRefresh();
    }, QUEUE_PLACE_REFRESH_MS);
  }

  /** Stops every timer, request and socket of this job for good. */
  stop() {
    this.stopped = true;
    this.connection = "live";
    this.stopPolling();
    this.dropSocket();
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.placeTimer);
    this.reconnectTimer = this.placeTimer = null;
    this.view.renderTransport();
  }

  // WebSocket ---------------------------------------------------------------------------

  connectSocket() {
    if (this.stopped || this.socket) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const url = this.websocketUrl || socketUrlFor(this.jobId);
    const ticketed = url === this.websocketUrl;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch {
      this.startPolling();
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    this.socketOpenTimer = setTimeout(() => {
      this.socketOpenTimer = null;
      if (this.socket === socket) this.startPolling();
    }, SOCKET_OPEN_TIMEOUT_MS);
    this.socketGiveUpTimer = setTimeout(() => {
      this.socketGiveUpTimer = null;
      if (this.socket === socket) this.socketLost();
    }, SOCKET_CONNECT_GIVE_UP_MS);

    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.clearSocketTimers();
      this.stopPolling();
      this.socketSilenceTimer = setTimeout(() => {
        this.socketSilenceTimer = null;
        if (this.socket === socket) this.socketLost();
      }, SOCKET_SNAPSHOT_TIMEOUT_MS);
      this.view.renderTransport();
    };
    socket.onmessage = (event) => {
      if (this.socket !== socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.reconnectAttempt = 0; // the backoff restarts once a socket has really worked
      this.armSilenceTimer();
      this.apply(message);
    };
    socket.onerror = () => {
      if (this.socket !== socket) return;
      this.startPolling(); // the close event follows and schedules the reconnect
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.dropSocket();
      if (this.stopped) return;
      if (event.code === 4401 && ticketed) {
        // Its ticket may have expired: the poll that starts now brings a fresh one, or a 401.
        if (this.websocketUrl === url) this.websocketUrl = null;
        this.socketLost();
      } else if (event.code === 4401) {
        this.page.sessionEnded();
        this.stop();
      } else if (event.code === 4404) {
        this.vanished();
      } else {
        this.socketLost();
      }
    };
  }

  /** The socket dropped or never opened before a terminal state: poll and reconnect. */
  socketLost() {
    this.dropSocket();
    if (this.stopped) return;
    if (!navigator.onLine) this.connectionLost();
    this.startPolling();
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.stopped || this.reconnectTimer || this.socket) return;
    const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** this.reconnectAttempt);
    this.reconnectAttempt += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connectSocket();
    }, delay);
  }

  /** Reconnects now: the network came back. */
  reconnectNow() {
    if (this.stopped || this.socket) return;
    this.reconnectAttempt = 0;
    this.connectSocket();
  }

  armSilenceTimer() {
    clearTimeout(this.socketSilenceTimer);
    this.socketSilenceTimer = null;
    const silenceMs = SOCKET_SILENCE_MS[this.status];
    if (!silenceMs || this.stopped) return;
    this.socketSilenceTimer = setTimeout(() => {
      this.socketSilenceTimer = null;
      if (this.stopped || !this.socket) return;
      this.dropSocket();
      this.connectSocket(); // a fresh snapshot
    }, silenceMs);
  }

  clearSocketTimers() {
    clearTimeout(this.socketOpenTimer);
    clearTimeout(this.socketGiveUpTimer);
    clearTimeout(this.socketSilenceTimer);
    this.socketOpenTimer = this.socketGiveUpTimer = this.socketSilenceTimer = null;
  }

  dropSocket() {
    this.clearSocketTimers();
    const socket = this.socket;
    this.socket = null;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
    if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) {
      socket.close(1000);
    }
  }

  // Polling -----------------------------------------------------------------------------

  startPolling() {
    if (this.stopped || this.polling) return;
    this.polling = true;
    this.pollTimer = setTimeout(() => this.pollOnce(), 0);
    this.view.renderTransport();
  }

  stopPolling() {
    this.polling = false;
    clearTimeout(this.pollTimer);
    this.pollTimer = null;
    if (this.pollAbort) this.pollAbort.abort();
    this.pollAbort = null;
    this.view.renderTransport();
  }

  async pollOnce() {
    this.pollTimer = null;
    const abort = new AbortController();
    this.pollAbort = abort;
    try {
      const payload = await api(`/v1/download/status/${encodeURIComponent(this.jobId)}`, {
        signal: abort.signal,
      });
      if (abort.signal.aborted || !this.polling) return;
      this.apply({ ...payload.data, type: "poll" });
    } catch (error) {
      if (abort.signal.aborted || !this.polling) return;
      if (error.status === 401) {
        this.page.sessionEnded();
        this.stop();
        return;
      }
      if (error.status === 404) {
        this.vanished();
        return;
      }
      // Anything else is transient (network, 5xx, 429): keep polling.
      if (error.status === 0 || error.status >= 500) this.connectionLost();
    } finally {
      if (this.pollAbort === abort) this.pollAbort = null;
    }
    if (this.polling && !this.stopped && !this.pollTimer) {
      this.pollTimer = setTimeout(() => this.pollOnce(), this.pollingInterval);
    }
  }

  // State -------------------------------------------------------------------------------

  /** Takes a status object or an event, from the socket or a poll, and shows it. */
  apply(update) {
    if (this.stopped) return;
    if (update.websocket_url) this.websocketUrl = update.websocket_url; // a fresh ticket
    const previous = this.job;
    const status = update.status || previous.status;
    if (!KNOWN_STATUSES.has(status)) return;

    let next;
    if (status === "queued" && previous.status !== "queued") {
      // Back to queued is a retry after a failed attempt (it carries `attempts`); an
      // answer without a newer attempt count is stale, from before the job started.
      const attempts = update.attempts || 0;
      if (attempts <= this.queuedAttempts) return;
      this.queuedAttempts = attempts;
      next = { ...previous, ...update, progress: update.progress || 0, bytes_done: update.bytes_done || 0 };
      this.samples = [];
      this.etaAt = null;
    } else {
      // A progress event or a heartbeat carries only the numbers; every other message is
      // a whole status.
      const partial = update.type === "progress" || update.type === "heartbeat";
      next = partial ? { ...previous, ...update } : { ...update };
      for (const key of ["file_id", "priority", "created_at"]) {
        if (next[key] === undefined) next[key] = previous[key];
      }
      // Progress never goes backwards on screen within an attempt.
      next.progress = Math.max(previous.progress || 0, update.progress || 0);
      if (previous.bytes_done !== undefined && update.bytes_done !== undefined) {
        next.bytes_done = Math.max(previous.bytes_done, update.bytes_done);
      } else if (next.bytes_done === undefined && status === "processing") {
        next.bytes_done = previous.bytes_done;
      }
      if (next.bytes_total === undefined && status === "processing") next.bytes_total = previous.bytes_total;
      if (status === "completed") next.progress = 100;
    }
    delete next.type;
    delete next.timestamp;
    delete next.websocket_url;
    this.job = next;
    this.connection = "live"; // it answered
    if (status === "processing") this.estimate(update);
    if (TERMINAL.has(status)) {
      this.stop();
      if (!TERMINAL.has(previous.status)) this.page.jobEnded(this);
    } else if (status !== previous.status) {
      if (this.transport === "websocket") this.armSilenceTimer();
      this.schedulePlaceRefresh();
    }
    this.view.render();
  }

  /** ETA: the server's estimated_completion when it sends one, else the observed rate. */
  estimate(update) {
    if (update.estimated_completion) {
      this.etaAt = Date.parse(update.estimated_completion);
    }
    const { bytes_done: done, bytes_total: total } = this.job;
    if (update.bytes_done === undefined || !total) return;
    const now = Date.now();
    this.samples.push({ at: now, bytes: done });
    while (this.samples.length > 2 && now - this.samples[1].at >= RATE_WINDOW_MS) this.samples.shift();
    if (update.estimated_completion) return;
    const first = this.samples[0];
    const elapsedMs = now - first.at;
    if (elapsedMs < 1000 || done <= first.bytes) return;
    const bytesPerMs = (done - first.bytes) / elapsedMs;
    this.etaAt = now + (total - done) / bytesPerMs;
  }

  /** The job is gone on the server (404): say so and stop watching it. */
  vanished() {
    this.stop();
    this.job = { ...this.job, status: "expired", gone: true };
    this.view.render();
  }

  // Actions -----------------------------------------------------------------------------

  async cancel() {
    if (this.busy) return;
    this.busy = true;
    this.view.render();
    try {
      await api(`/v1/download/${encodeURIComponent(this.jobId)}`, { method: "DELETE" });
      this.apply({ type: "cancelled", status: "cancelled", progress: this.job.progress });
      this.page.announce(`Download of file ${this.job.file_id} cancelled.`);
    } catch (error) {
      if (error.code === "JOB_ALREADY_FINISHED") {
        await this.refresh();
        this.page.announce(`File ${this.job.file_id} could not be cancelled: it had already finished.`);
      } else {
        this.page.showError(error);
      }
    } finally {
      this.busy = false;
      this.view.render();
    }
  }

  async refresh() {
    try {
      const payload = await api(`/v1/download/status/${encodeURIComponent(this.jobId)}`);
      this.apply({ ...payload.data, type: "poll" });
    } catch {
      // The next poll or event will tell.
    }
  }

  async download() {
    if (this.busy) return;
    this.busy = true;
    this.view.render();
    try {
      const { data } = await api(`/v1/download/${encodeURIComponent(this.jobId)}`);
      const link = element("a", { href: data.download_url, download: data.file_name || "", hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      const size = data.file_size ? ` (${formatBytes(data.file_size)})` : "";
      this.page.announce(`Saving ${data.file_name || `file ${this.job.file_id}`}${size}.`);
    } catch (error) {
      if (error.code === "DOWNLOAD_EXPIRED") {
        this.job = { ...this.job, status: "expired" };
      }
      this.page.showError(error);
    } finally {
      this.busy = false;
      this.view.render();
    }
  }

  async again() {
    if (this.busy) return;
    this.busy = true;
    this.view.render();
    try {
      this.againKey = this.againKey || newIdempotencyKey();
      await this.page.initiate({ fileId: String(this.job.file_id), priority: this.job.priority }, this.againKey);
      this.againKey = null;
    } catch (error) {
      if (error.status !== 0) this.againKey = null; // same key only when no answer came
      this.page.showError(error);
    } finally {
      this.busy = false;
      this.view.render();
    }
  }
}

// --- One row -------------------------------------------------------------------------------

class JobView {
  constructor(controller) {
    this.controller = controller;
    const { jobId, job } = controller;
    const titleId = `job-title-${jobId}`;
    const fileId = String(job.file_id);

    this.title = element(
      "h3",
      { class: "job-title", id: titleId, tabindex: "-1" },
      "File ",
      element("span", { "data-testid": "job-file-id" }, fileId),
    );
    this.meta = element("p", { class: "job-meta", "data-testid": "job-meta" });
    this.badge = element("span", { class: "job-badge", "aria-hidden": "true" });
    this.progress = element("progress", {
      class: "job-progress",
      max: "100",
      value: "0",
      "aria-label": `Progress of file ${fileId}`,
      "data-testid": "job-progress",
    });
    this.state = element("p", {
      class: "job-state",
      role: "status",
      "aria-live": "polite",
      "aria-atomic": "true",
      "data-testid": "job-state",
    });
    this.detail = element("p", { class: "job-detail", "data-testid": "job-detail" });

    // Visible words first, then hidden context: "Cancel download of file 70000".
    const button = (action, label, context, testid, extraClass = "") =>
      element(
        "button",
        { type: "button", class: `button ${extraClass}`.trim(), "data-action": action, "data-testid": testid },
        label,
        visuallyHidden(context),
      );
    this.cancelButton = button("cancel", "Cancel", ` download of file ${fileId}`, "job-cancel", "button-quiet");
    this.downloadButton = button("download", "Download", ` file ${fileId}`, "job-download", "button-primary");
    this.retryButton = button("again", "Retry", ` file ${fileId}`, "job-retry", "button-primary");
    this.againButton = button("again", "Request again", `: file ${fileId}`, "job-again");
    this.actions = element(
      "div",
      { class: "job-actions" },
      this.downloadButton,
      this.retryButton,
      this.againButton,
      this.cancelButton,
    );
    this.actions.addEventListener("click", (event) => {
      const target = event.target.closest("button[data-action]");
      if (!target || target.getAttribute("aria-disabled") === "true") return;
      controller[target.dataset.action]();
    });

    this.root = element(
      "li",
      { class: "job", "data-job-id": jobId, "data-testid": "job-row", "aria-labelledby": titleId },
      element("div", { class: "job-head" }, this.title, this.badge),
      this.meta,
      this.progress,
      this.state,
      this.detail,
      this.actions,
    );
    this.render();
  }

  renderTransport() {
    this.root.dataset.transport = this.controller.transport;
  }

  render() {
    const { job, busy } = this.controller;
    const status = job.status;
    const progress = Math.max(0, Math.min(100, Math.round(job.progress || 0)));

    this.root.dataset.status = status;
    this.root.dataset.progress = String(progress);
    this.root.dataset.connection = this.controller.connection;
    this.renderTransport();
    this.badge.textContent = STATUS_LABELS[status] || status;
    this.badge.className = `job-badge job-badge-${status}`;

    const priority = job.priority ? `${job.priority[0].toUpperCase()}${job.priority.slice(1)} priority` : "";
    const when = formatWhen(job.created_at);
    this.meta.textContent = [priority, when && `requested ${when}`].filter(Boolean).join(" · ");

    if (this.progress.value !== progress) this.progress.value = progress;
    this.progress.textContent = `${progress}%`;

    this.setState(this.stateContent(job));
    const detail = this.detailText(job, progress);
    if (Array.isArray(detail)) {
      // Each figure on one line: "2 s left" never breaks between its words.
      const content = detail.flatMap((part, i) => [i ? " · " : "", element("span", { class: "nowrap" }, part)]);
      this.detail.replaceChildren(...content);
    } else {
      this.detail.textContent = detail;
    }

    const focused = this.actions.contains(document.activeElement) ? document.activeElement : null;
    this.cancelButton.hidden = TERMINAL.has(status);
    this.downloadButton.hidden = status !== "completed";
    this.retryButton.hidden = !(status === "failed" && failure(job.error).retry);
    this.againButton.hidden = !(status === "cancelled" || status === "expired");
    // aria-disabled, not disabled: a disabled button loses keyboard focus.
    for (const button of this.actions.querySelectorAll("button")) {
      button.setAttribute("aria-disabled", busy ? "true" : "false");
    }
    // A keyboard user whose button just went away keeps their place in the row.
    if (focused && focused.hidden) {
      const visible = [...this.actions.querySelectorAll("button")].find((b) => !b.hidden);
      (visible || this.title).focus();
    }
  }

  /** The live status text: [text, error message or null]. Changes only with the status. */
  stateContent(job) {
    if (this.controller.connection === "lost" && !TERMINAL.has(job.status)) return ["Reconnecting…", null];
    switch (job.status) {
      case "queued":
        if (job.attempts && job.error) {
          return [`Queued for retry after attempt ${job.attempts} failed: `, job.error.message];
        }
        // Not started yet, held back: the origin's circuit breaker is open.
        if (job.error) return ["Waiting: ", job.error.message];
        return ["Queued", null];
      case "processing":
        return ["Processing", null];
      case "completed":
        return ["Completed, ready to download", null];
      case "failed":
        return ["Failed: ", failure(job.error).text];
      case "cancelled":
        return ["Cancelled", null];
      case "expired":
        return [job.gone ? "No longer available" : "Expired: the file was deleted after its retention period", null];
      default:
        return [String(job.status), null];
    }
  }

  setState([text, errorMessage]) {
    const key = `${text}\u0000${errorMessage}`;
    if (this.stateKey === key) return; // unchanged: nothing new for a screen reader
    this.stateKey = key;
    const content = [text];
    if (errorMessage) content.push(element("span", { class: "job-error", "data-testid": "job-error" }, errorMessage));
    this.state.replaceChildren(...content);
  }

  /** The figures under the status: a string, or for processing a list of parts. */
  detailText(job, progress) {
    switch (job.status) {
      case "queued": {
        if (job.next_retry_at) {
          const inS = (Date.parse(job.next_retry_at) - Date.now()) / 1000;
          return inS > 0 ? `Next attempt in about ${formatDuration(inS)}.` : "Next attempt shortly.";
        }
        return queuedDetail(job.queue_position, job.estimated_time || this.controller.estimatedTime);
      }
      case "processing": {
        const parts = [`${progress}%`];
        if (job.bytes_total) parts.push(`${formatBytes(job.bytes_done || 0)} of ${formatBytes(job.bytes_total)}`);
        else if (job.bytes_done) parts.push(`${formatBytes(job.bytes_done)} so far`);
        const etaAt = this.controller.etaAt;
        // No countdown while the connection is lost: nothing says the job moves meanwhile.
        if (etaAt && Number.isFinite(etaAt) && progress < 100 && this.controller.connection !== "lost") {
          const leftS = (etaAt - Date.now()) / 1000;
          parts.push(leftS >= 1 ? `about ${formatDuration(leftS)} left` : "almost done");
        }
        return parts;
      }
      case "completed": {
        const parts = [];
        if (job.file_name) parts.push(job.file_name);
        if (job.file_size) parts.push(formatBytes(job.file_size));
        if (job.expires_at) parts.push(`available until ${formatWhen(job.expires_at)}`);
        return parts.join(" · ");
      }
      case "failed":
        return job.error && job.error.code ? `Error code ${job.error.code}.` : "";
      case "cancelled":
        return progress ? `Stopped at ${progress}%.` : "";
      case "expired":
        return "Request it again to get a fresh copy.";
      default:
        return "";
    }
  }
}

// --- "E-mail me when it's ready" ------------------------------------------------------------

const PREFERENCES_PATH = "/v1/notifications/preferences";

/** The request form's e-mail box: the user's default (GET and PUT PREFERENCES_PATH), and
 * what initiate sends as `notify`. The page works without it if it cannot load. */
class EmailNoticeBox {
  constructor(root, page) {
    this.page = page;
    this.field = root.querySelector("#notify-email-field");
    this.box = root.querySelector("#notify-email");
    this.hint = root.querySelector("#notify-email-hint");
  }

  async start() {
    if (!this.box) return;
    try {
      const { data } = await api(PREFERENCES_PATH);
      this.render(data);
      this.box.addEventListener("change", () => this.save());
    } catch {
      this.field.hidden = true;
    }
  }

  render(data) {
    this.box.checked = data.email_when_finished;
    this.box.disabled = !data.email;
    this.hint.textContent = data.email
      ? `One e-mail to ${data.email} when a download completes or fails; remembered for your next downloads.`
      : "Your account has no e-mail address to send it to.";
    this.field.hidden = false;
  }

  async save() {
    const wanted = this.box.checked;
    this.box.setAttribute("aria-busy", "true");
    try {
      const { data } = await api(PREFERENCES_PATH, {
        method: "PUT",
        body: JSON.stringify({ email_when_finished: wanted }),
      });
      this.render(data);
    } catch (error) {
      this.box.checked = !wanted;
      this.page.showError(error, "Your e-mail choice was not saved: ");
    } finally {
      this.box.removeAttribute("aria-busy");
    }
  }

  /** initiate's `notify`: the box as shown, or undefined (the server's default) without it. */
  notify() {
    if (!this.box || this.field.hidden) return undefined;
    return this.box.checked ? ["email"] : [];
  }
}

// --- The page ------------------------------------------------------------------------------

class DownloadsPage {
  constructor(root) {
    this.root = root;
    this.pollingInterval = Number(root.dataset.pollingInterval) || DEFAULT_POLLING_INTERVAL_MS;
    this.loginUrl = root.dataset.loginUrl || "/accounts/login/";
    this.controllers = new Map();
    this.form = root.querySelector("#download-form");
    this.fileIdInput = root.querySelector("#file-id");
    this.fileIdError = root.querySelector("#file-id-error");
    this.prioritySelect = root.querySelector("#priority");
    this.submitButton = root.querySelector("#download-submit");
    this.message = root.querySelector("#page-message");
    this.list = root.querySelector("#downloads-list");
    this.empty = root.querySelector("#downloads-empty");
    this.more = root.querySelector("#downloads-more");
    this.pending = null; // {intent, key, answeredAt}: the idempotency key of the last submit
    this.submitting = false;
    this.loadFailed = false;
    this.messageEndsWithJob = false; // the message says too many downloads are running
    this.listWatch = new ListWatch({
      fetchList: async () => (await api("/v1/downloads")).data.results,
      onJob: (job) => this.add(job, {}, { prepend: false }),
    });
    this.emailNotice = new EmailNoticeBox(root, this);
  }

  start() {
    this.emailNotice.start();
    this.form.addEventListener("submit", (event) => this.onSubmit(event));
    this.fileIdInput.addEventListener("input", () => this.clearFieldError());
    window.addEventListener("online", () => {
      for (const controller of this.controllers.values()) controller.reconnectNow();
    });
    window.addEventListener("offline", () => {
      for (const controller of this.controllers.values()) controller.offline();
    });
    return this.load().then(() => this.listWatch.start());
  }

  async load() {
    this.list.setAttribute("aria-busy", "true");
    const [recent, active] = await Promise.allSettled([
      api("/v1/downloads"),
      api("/v1/downloads?status=active&page_size=100"),
    ]);
    this.list.removeAttribute("aria-busy");
    const jobs = new Map();
    for (const result of [recent, active]) {
      if (result.status !== "fulfilled") continue;
      for (const job of result.value.data.results) jobs.set(job.job_id, job);
    }
    const failure = [recent, active].find((result) => result.status === "rejected");
    if (failure) {
      this.loadFailed = true;
      if (failure.reason.status === 401) this.sessionEnded();
      else this.showError(failure.reason, "Could not load your downloads: ");
    }
    const newestFirst = [...jobs.values()].sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
    for (const job of newestFirst) this.add(job, {}, { prepend: false });
    this.more.hidden = !(recent.status === "fulfilled" && recent.value.data.next);
    this.renderEmpty();
    this.root.dataset.ready = "true";
  }

  /** Shows a job (once): on top when `prepend`, else in its place, newest first. */
  add(job, options, { prepend }) {
    const existing = this.controllers.get(job.job_id);
    if (existing) return existing;
    const controller = new JobController(this, job, options);
    this.controllers.set(job.job_id, controller);
    const created = Date.parse(job.created_at);
    const before = prepend
      ? this.list.firstElementChild
      : [...this.controllers.values()].find(
          (other) => other !== controller && other.view.root.isConnected && Date.parse(other.job.created_at) < created,
        )?.view.root;
    this.list.insertBefore(controller.view.root, before || null);
    this.renderEmpty();
    controller.watch();
    return controller;
  }

  remove(jobId) {
    const controller = this.controllers.get(jobId);
    if (!controller) return;
    controller.stop();
    controller.view.root.remove();
    this.controllers.delete(jobId);
    this.renderEmpty();
  }

  renderEmpty() {
    this.empty.textContent = this.loadFailed
      ? "Your downloads could not be loaded. Reload the page to try again."
      : "You have no downloads yet. Request a file above.";
    this.empty.hidden = this.controllers.size > 0;
  }

  /** POST /v1/download/initiate; adds the new job on top. Throws ApiError. */
  async initiate({ fileId, priority }, idempotencyKey) {
    // The id is sent as the digits typed, so an id past 2^53 keeps its precision.
    const notify = this.emailNotice.notify();
    const notifyPart = notify === undefined ? "" : `,"notify":${JSON.stringify(notify)}`;
    const body = `{"file_id":${fileId},"priority":${JSON.stringify(priority)}${notifyPart}}`;
    const { data } = await api("/v1/download/initiate", {
      method: "POST",
      body,
      headers: { "Idempotency-Key": idempotencyKey },
    });
    const now = new Date().toISOString();
    let job = {
      job_id: data.job_id,
      status: data.status,
      progress: 0,
      file_id: Number(fileId),
      priority,
      created_at: now,
      updated_at: now,
    };
    if (TERMINAL.has(data.status)) {
      // Ended at once (a stored file reused): no socket follows it, so its whole status
      // (file name, size, expiry) is asked here.
      try {
        job = (await api(`/v1/download/status/${encodeURIComponent(data.job_id)}`)).data;
      } catch {
        // The row shows what initiate said; a reload shows the rest.
      }
    }
    const existed = this.controllers.has(data.job_id);
    const controller = this.add(
      job,
      { websocketUrl: data.websocket_url, pollingInterval: data.polling_interval, estimatedTime: data.estimated_time },
      { prepend: true },
    );
    this.announce(`Download of file ${fileId} requested (${priority} priority).`);
    // On a phone the list is below the form: the new card is brought into view, once the
    // message above it has taken its room.
    if (!existed) requestAnimationFrame(() => controller.view.root.scrollIntoView({ block: "nearest" }));
    return controller;
  }

  validateFileId() {
    const raw = this.fileIdInput.value.trim();
    if (this.fileIdInput.validity.badInput) return "Enter the file ID as digits only.";
    if (raw === "") return "Enter a file ID.";
    if (!/^\d+$/.test(raw) || BigInt(raw) < 1n) return "The file ID is a whole number of 1 or more.";
    return null;
  }

  showFieldError(message) {
    this.fileIdError.textContent = message;
    this.fileIdError.hidden = false;
    this.fileIdInput.setAttribute("aria-invalid", "true");
  }

  clearFieldError() {
    this.fileIdError.textContent = "";
    this.fileIdError.hidden = true;
    this.fileIdInput.removeAttribute("aria-invalid");
  }

  async onSubmit(event) {
    event.preventDefault();
    if (this.submitting) return; // a double click sends one request
    const invalid = this.validateFileId();
    if (invalid) {
      this.showFieldError(invalid);
      this.showMessage(`Check the form: ${invalid}`, "error");
      this.fileIdInput.focus();
      return;
    }
    this.clearFieldError();
    const fileId = BigInt(this.fileIdInput.value.trim()).toString();
    const priority = this.prioritySelect.value;
    const intent = `${fileId}|${priority}`;
    const replay =
      this.pending &&
      this.pending.intent === intent &&
      (this.pending.answeredAt === null || Date.now() - this.pending.answeredAt < SUBMIT_REPLAY_MS);
    if (!replay) this.pending = { intent, key: newIdempotencyKey(), answeredAt: null };

    this.submitting = true;
    this.submitButton.setAttribute("aria-disabled", "true");
    this.submitButton.setAttribute("aria-busy", "true");
    const pending = this.pending;
    try {
      await this.initiate({ fileId, priority }, pending.key);
      pending.answeredAt = Date.now();
    } catch (error) {
      // Without an answer the request may have landed: resubmitting reuses its key.
      if (error.status !== 0) this.pending = null;
      const fieldMessages = error.error && error.error.fields && error.error.fields.file_id;
      if (fieldMessages) this.showFieldError([].concat(fieldMessages).join(" "));
      this.showError(error);
      this.messageEndsWithJob = error.code === "RATE_LIMIT_EXCEEDED";
    } finally {
      this.submitting = false;
      this.submitButton.removeAttribute("aria-disabled");
      this.submitButton.removeAttribute("aria-busy");
    }
  }

  showMessage(text, kind = "info", link = null) {
    const content = [text];
    if (link) content.push(" ", element("a", { href: link.href }, link.text));
    this.message.replaceChildren(...content);
    this.message.dataset.kind = kind;
    this.message.className = `message message-${kind}`;
    this.messageEndsWithJob = false;
  }

  /** A job of the page ended: a "too many downloads" message is out of date. */
  jobEnded() {
    if (!this.messageEndsWithJob) return;
    this.showMessage("A download has ended: you can request another file.", "info");
  }

  announce(text) {
    this.showMessage(text, "info");
  }

  showError(error, prefix = "") {
    if (error instanceof ApiError && error.status === 401) {
      this.sessionEnded();
      return;
    }
    this.showMessage(`${prefix}${describeError(error)}`, "error");
  }

  sessionEnded() {
    this.showMessage("Your session has ended.", "error", { href: this.loginUrl, text: "Sign in again" });
  }

  transport(jobId) {
    const controller = this.controllers.get(jobId);
    return controller ? controller.transport : "none";
  }

  hook() {
    const page = this;
    return {
      ready: null,
      transport: (jobId) => page.transport(jobId),
      transports: () => Object.fromEntries([...page.controllers].map(([id, c]) => [id, c.transport])),
      listChecks: () => page.listWatch.checks,
      jobs: () =>
        [...page.list.querySelectorAll("li[data-job-id]")].map((row) => {
          const controller = page.controllers.get(row.dataset.jobId);
          const { job_id, status, progress } = controller.job;
          return { job_id, status, progress, transport: controller.transport };
        }),
      debug: (jobId) => {
        const c = page.controllers.get(jobId);
        if (!c) return null;
        return {
          transport: c.transport,
          socketState: c.socket ? c.socket.readyState : null,
          polling: c.polling,
          pollTimer: c.pollTimer !== null,
          reconnectTimer: c.reconnectTimer !== null,
          reconnectAttempt: c.reconnectAttempt,
          stopped: c.stopped,
        };
      },
    };
  }
}

const root = document.getElementById("downloads-page");
if (root) {
  const page = new DownloadsPage(root);
  const hook = page.hook();
  window.downloadsPage = hook;
  hook.ready = page.start();
}
