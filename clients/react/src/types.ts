// The wire types of the service (docs/api.md, "The status object" and "WebSocket").

export type JobStatus = "queued" | "processing" | "completed" | "failed" | "cancelled" | "expired";

export const TERMINAL_STATUSES: ReadonlySet<string> = new Set(["completed", "failed", "cancelled", "expired"]);

export interface JobError {
  code: string;
  message: string;
  retryable?: boolean;
}

/** A job as GET /v1/download/status/<job_id> and GET /v1/downloads describe it. */
export interface Job {
  job_id: string;
  file_id: number;
  status: JobStatus;
  progress: number;
  priority?: string;
  created_at?: string;
  updated_at?: string;
  bytes_done?: number;
  bytes_total?: number | null;
  estimated_completion?: string | null;
  download_url?: string;
  expires_at?: string;
  file_name?: string;
  file_size?: number;
  error?: JobError | null;
  attempts?: number;
  next_retry_at?: string | null;
  websocket_url?: string;
}

/** A message of the job's socket, or a status answer (`type` "poll"). */
export type JobUpdate = Partial<Job> & { status: JobStatus; type?: string };

/** POST /v1/download/initiate's `data`. */
export interface Initiated {
  job_id: string;
  status: JobStatus;
  estimated_time: number;
  polling_interval: number;
  websocket_url: string;
}

export interface DownloadLink {
  download_url: string;
  expires_at: string;
  file_name: string;
  file_size: number;
  content_type: string;
  sha256: string;
}

export function isTerminal(status: string | undefined): boolean {
  return status !== undefined && TERMINAL_STATUSES.has(status);
}

/**
 * The job after `update`, as a client should show it: a progress or heartbeat message
 * carries only numbers; every other message is a whole status object. Progress never goes
 * back within an attempt, an ended job never comes back to life from a stale answer, and
 * `queued` after another status counts only with a newer attempt count (a retry): an
 * answer without one is older than what is shown.
 */
export function jobMerge(previous: Job, update: JobUpdate): Job {
  if (isTerminal(previous.status) && !isTerminal(update.status)) return previous;
  const { type, websocket_url: _url, ...fields } = update as JobUpdate & { timestamp?: string };
  delete (fields as { timestamp?: string }).timestamp;
  if (update.status === "queued" && previous.status !== "queued") {
    if ((update.attempts ?? 0) <= (previous.attempts ?? 0)) return previous;
    return { ...previous, ...fields, progress: update.progress ?? 0 } as Job;
  }
  const partial = type === "progress" || type === "heartbeat";
  const next = (partial ? { ...previous, ...fields } : { ...fields }) as Job;
  next.job_id = previous.job_id;
  next.file_id = next.file_id ?? previous.file_id;
  next.priority = next.priority ?? previous.priority;
  next.created_at = next.created_at ?? previous.created_at;
  next.attempts = next.attempts ?? previous.attempts;
  next.progress =
    next.status === "completed" ? 100 : Math.max(previous.progress ?? 0, update.progress ?? 0);
  return next;
}
