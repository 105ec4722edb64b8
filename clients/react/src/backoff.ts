// How long to wait before trying again: exponential backoff with jitter, capped, or what
// the server asked for in Retry-After.

export interface BackoffPolicy {
  baseMs: number; // the first wait's ceiling
  maxMs: number; // no wait is longer
}

export const RECONNECT_BACKOFF: BackoffPolicy = { baseMs: 1000, maxMs: 30_000 };
export const REQUEST_BACKOFF: BackoffPolicy = { baseMs: 500, maxMs: 10_000 };
/** A Retry-After longer than this is not waited for: the error is shown instead. */
export const RETRY_AFTER_MAX_MS = 60_000;

/**
 * The wait before retry number `attempt` (0 first): "equal jitter", between half and all
 * of min(maxMs, baseMs * 2^attempt), so that many clients dropped at once (a deploy, an
 * edge restart) do not come back in step, while each still waits a known minimum.
 */
export function backoffDelayMs(attempt: number, policy: BackoffPolicy, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + (random() * ceiling) / 2;
}

/** The server's Retry-After (seconds), plus up to a fifth more so that retries spread. */
export function retryAfterDelayMs(retryAfterS: number, random: () => number = Math.random): number {
  return retryAfterS * 1000 * (1 + random() / 5);
}

/** Resolves after `ms`, or rejects with an AbortError as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new DOMException("Aborted", "AbortError"));
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new DOMException("Aborted", "AbortError"));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
