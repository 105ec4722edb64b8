// Where the API is, how to authenticate, and every call of the service, each answered with
// the envelope's `data` or an ApiError. Calls that a transient fault may fail (the network,
// 429, 502-504) are retried with backoff; a 4xx other than 429 never is.
import { backoffDelayMs, REQUEST_BACKOFF, RETRY_AFTER_MAX_MS, retryAfterDelayMs, sleep } from "./backoff";
import type { DownloadLink, Initiated, Job } from "./types";

export interface ApiConfig {
  baseUrl: string; // e.g. "https://downloads.example.com"; "" = the page's own origin
  token: string | null; // an API key (`manage.py api_key_create USER`)
  requestAttempts: number; // tries of one call, the first included
  random: () => number; // the jitter's source
}

export const apiConfig: ApiConfig = { baseUrl: "", token: null, requestAttempts: 5, random: Math.random };

export function configureApi(config: Partial<ApiConfig>): void {
  Object.assign(apiConfig, config);
}

/** An error answer of the API (its envelope's `error`), or `status` 0 when none came. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly retryAfterS: number | null;
  readonly body: Record<string, unknown>;

  constructor(status: number, body: Record<string, unknown>, retryAfterS: number | null) {
    super(typeof body.message === "string" ? body.message : `Request failed (${status})`);
    this.name = "ApiError";
    this.status = status;
    this.code = typeof body.code === "string" ? body.code : `HTTP_${status}`;
    this.body = body;
    this.retryAfterS = retryAfterS;
  }

  /** A fault that may pass: no answer, the rate limits, the service or its edge down. */
  get transient(): boolean {
    return [0, 429, 502, 503, 504].includes(this.status);
  }
}

export function isAbort(error: unknown): boolean {
  return error instanceof DOMException && error.name === "AbortError";
}

export function apiFetch(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  headers.set("Accept", "application/json");
  if (apiConfig.token) {
    headers.set("Authorization", `Token ${apiConfig.token}`);
  }
  return fetch(`${apiConfig.baseUrl.replace(/\/+$/, "")}${path}`, { ...init, headers });
}

/** One request: the envelope's `data` (or the whole envelope when it has none). */
export async function apiRequest<T>(path: string, init: RequestInit = {}): Promise<T> {
  let response: Response;
  try {
    response = await apiFetch(path, init);
  } catch (error) {
    if (isAbort(error)) throw error;
    const reason = error instanceof Error ? error.message : String(error);
    throw new ApiError(0, { code: "NETWORK_ERROR", message: `Could not reach the download service (${reason})` }, null);
  }
  let payload: { success?: boolean; data?: T; error?: Record<string, unknown> } | null = null;
  try {
    payload = await response.json();
  } catch (error) {
    if (isAbort(error)) throw error;
    // Not JSON: an edge's own error page, say.
  }
  if (response.ok && payload && payload.success !== false) {
    return (payload.data ?? payload) as T;
  }
  const body = { ...(payload?.error ?? {}) };
  if (typeof body.message !== "string") {
    body.message = `The download service answered ${response.status} ${response.statusText}`.trim();
  }
  const header = Number(response.headers.get("Retry-After") ?? Number.NaN);
  const retryAfterS = Number.isFinite(header) ? header : typeof body.retry_after === "number" ? body.retry_after : null;
  throw new ApiError(response.status, body, retryAfterS);
}

/**
 * `apiRequest`, tried again after a transient fault: after Retry-After when the answer
 * gave one (429, 503), else with exponential backoff and jitter, at most
 * `apiConfig.requestAttempts` tries in all. Any other error is thrown at once.
 */
export async function apiRequestWithRetry<T>(path: string, init: RequestInit = {}): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await apiRequest<T>(path, init);
    } catch (error) {
      const delayMs = error instanceof ApiError ? retryDelayMs(error, attempt) : null;
      if (delayMs === null || attempt + 1 >= apiConfig.requestAttempts) throw error;
      await sleep(delayMs, init.signal ?? undefined);
    }
  }
}

/** How long to wait before trying again after `error`, or null when it must not be retried. */
export function retryDelayMs(error: ApiError, attempt: number): number | null {
  if (!error.transient) return null;
  if (error.retryAfterS !== null) {
    const delayMs = retryAfterDelayMs(error.retryAfterS, apiConfig.random);
    return delayMs <= RETRY_AFTER_MAX_MS ? delayMs : null;
  }
  return backoffDelayMs(attempt, REQUEST_BACKOFF, apiConfig.random);
}

// --- the service's calls ---------------------------------------------------------------------

export interface InitiateOptions {
  priority?: "low" | "normal" | "high";
  metadata?: Record<string, unknown>;
  signal?: AbortSignal;
}

/** A key for one intended download: a retried initiate whose answer was lost gets the same job. */
export function newIdempotencyKey(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const hex = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0"));
  return hex.join("");
}

export function downloadInitiate(fileId: number, options: InitiateOptions = {}): Promise<Initiated> {
  const body: Record<string, unknown> = { file_id: fileId };
  if (options.priority) body.priority = options.priority;
  if (options.metadata) body.metadata = options.metadata;
  return apiRequestWithRetry<Initiated>("/v1/download/initiate", {
    method: "POST",
    headers: { "Content-Type": "application/json", "Idempotency-Key": newIdempotencyKey() },
    body: JSON.stringify(body),
    signal: options.signal,
  });
}

export function downloadStatus(jobId: string, signal?: AbortSignal, retry = true): Promise<Job> {
  const path = `/v1/download/status/${encodeURIComponent(jobId)}`;
  return retry ? apiRequestWithRetry<Job>(path, { signal }) : apiRequest<Job>(path, { signal });
}

export interface DownloadsPage {
  results: Job[];
  next: string | null;
  previous: string | null;
}

export function downloadsList(pageSize: number, signal?: AbortSignal): Promise<DownloadsPage> {
  return apiRequestWithRetry<DownloadsPage>(`/v1/downloads?page_size=${pageSize}`, { signal });
}

export async function downloadCancel(jobId: string): Promise<void> {
  await apiRequestWithRetry(`/v1/download/${encodeURIComponent(jobId)}`, { method: "DELETE" });
}

export function downloadLink(jobId: string): Promise<DownloadLink> {
  return apiRequestWithRetry<DownloadLink>(`/v1/download/${encodeURIComponent(jobId)}`);
}

/** Fetches a fresh link of a completed job's file and lets the browser save it. */
export async function downloadSave(jobId: string): Promise<DownloadLink> {
  const link = await downloadLink(jobId);
  window.location.href = link.download_url;
  return link;
}
