/*
 * Keeps the page's list in step with the user's jobs wherever they were started (another
 * tab, the API, the command-line client): GET /v1/downloads (its first page) every
 * LIST_POLL_MS while the tab is visible, and at once when it becomes visible again, gets
 * the focus or comes back online. A hidden tab asks nothing. Each job that the page does not
 * show yet is handed to `onJob`; the page follows it from there on its own socket.
 *
 * The cost is one list request per visible tab every LIST_POLL_MS (bench/status.py measures
 * that request), whatever the number of jobs.
 */

export const LIST_POLL_MS = 10000;

export class ListWatch {
  constructor({ fetchList, onJob, intervalMs = LIST_POLL_MS }) {
    this.fetchList = fetchList; // () => Promise of the list's `results`, newest first
    this.onJob = onJob;
    this.intervalMs = intervalMs;
    this.timer = null;
    this.inFlight = false;
    this.checks = 0; // lists fetched, for tests and the debug hook
  }

  start() {
    const now = () => this.checkSoon(0);
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) this.pause();
      else now();
    });
    window.addEventListener("focus", now);
    window.addEventListener("online", now);
    this.checkSoon(this.intervalMs);
  }

  pause() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  checkSoon(delayMs) {
    this.pause();
    if (document.hidden) return;
    this.timer = setTimeout(() => this.check(), delayMs);
  }

  async check() {
    this.timer = null;
    if (this.inFlight) return;
    this.inFlight = true;
    try {
      const jobs = await this.fetchList();
      this.checks += 1;
      // Oldest first, so each new one lands above the ones before it.
      for (const job of [...jobs].reverse()) this.onJob(job);
    } catch {
      // The next check tells; the rows already shown follow their own jobs meanwhile.
    } finally {
      this.inFlight = false;
      if (!this.timer) this.checkSoon(this.intervalMs);
    }
  }
}
