// The user's downloads: the list GET /v1/downloads gives (plus the jobs this browser kept
// that are past its first page), each active one watched live, any number at once.
import { useCallback, useEffect, useRef, useState } from "react";

import {
  ApiError,
  downloadCancel,
  downloadInitiate,
  downloadSave,
  downloadsList,
  downloadStatus,
  isAbort,
  type InitiateOptions,
} from "../api";
import { forgetJob, persistedJobs, persistJob } from "../persist";
import { isTerminal, jobMerge, type Job, type JobStatus } from "../types";
import { JobWatcher, type Transport } from "../watcher";

export interface UseDownloadsOptions {
  /** Jobs asked for from GET /v1/downloads (newest first), 1 to 100; default 20. */
  pageSize?: number;
}

type JobsById = Record<string, Job>;

function newestFirst(jobs: JobsById): Job[] {
  return Object.values(jobs).sort((a, b) => (b.created_at ?? "").localeCompare(a.created_at ?? ""));
}

export function useDownloads(options: UseDownloadsOptions = {}) {
  const pageSize = options.pageSize ?? 20;
  const [jobs, setJobs] = useState<JobsById>(() =>
    Object.fromEntries(persistedJobs().map((kept) => [kept.job_id, { ...kept } as Job])),
  );
  const [transports, setTransports] = useState<Record<string, Transport>>({});
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<ApiError | null>(null);
  const watchers = useRef(new Map<string, JobWatcher>());
  const abortRef = useRef<AbortController>(new AbortController());

  const apply = useCallback((jobId: string, update: Parameters<typeof jobMerge>[1]) => {
    setJobs((previous) => {
      const current = previous[jobId];
      if (!current) return previous;
      const next = jobMerge(current, update);
      if (next.status !== current.status) persistJob(next);
      return { ...previous, [jobId]: next };
    });
  }, []);

  const drop = useCallback((jobId: string) => {
    forgetJob(jobId);
    setJobs((previous) => {
      const { [jobId]: _gone, ...rest } = previous;
      return rest;
    });
  }, []);

  const watch = useCallback(
    (jobId: string, init: { websocketUrl?: string; pollingIntervalMs?: number; status: string }) => {
      if (watchers.current.get(jobId)?.active) return;
      const watcher = new JobWatcher(
        jobId,
        {
          update: (update) => apply(jobId, update),
          lost: (lostError) => {
            if (lostError.status === 404) drop(jobId);
            else setError(lostError);
          },
          transport: (now) => setTransports((previous) => ({ ...previous, [jobId]: now })),
        },
        init,
      );
      watchers.current.set(jobId, watcher);
      watcher.start();
    },
    [apply, drop],
  );

  const load = useCallback(
    async (signal: AbortSignal) => {
      setLoading(true);
      try {
        const page = await downloadsList(pageSize, signal);
        const listed = new Map(page.results.map((job) => [job.job_id, job]));
        for (const kept of persistedJobs()) {
          if (listed.has(kept.job_id)) continue;
          try {
            listed.set(kept.job_id, await downloadStatus(kept.job_id, signal));
          } catch (statusError) {
            if (statusError instanceof ApiError && statusError.status === 404) drop(kept.job_id);
            else throw statusError;
          }
        }
        setJobs((previous) => {
          const next = { ...previous };
          for (const [jobId, job] of listed) {
            next[jobId] = previous[jobId] ? jobMerge(previous[jobId], { ...job, type: "poll" }) : job;
          }
          return next;
        });
        for (const job of listed.values()) {
          if (!isTerminal(job.status)) watch(job.job_id, { status: job.status });
        }
        setError(null);
      } catch (loadError) {
        if (isAbort(loadError)) return;
        setError(loadError instanceof ApiError ? loadError : null);
      }
      setLoading(false);
    },
    [pageSize, watch, drop],
  );

  useEffect(() => {
    const controller = new AbortController();
    abortRef.current = controller;
    const running = watchers.current;
    void load(controller.signal);
    return () => {
      controller.abort();
      for (const watcher of running.values()) watcher.stop();
      running.clear();
    };
  }, [load]);

  /** Starts a job (as many at once as the service allows); resolves to its id. */
  const start = useCallback(
    async (fileId: number, initiate: Omit<InitiateOptions, "signal"> = {}): Promise<string> => {
      const data = await downloadInitiate(fileId, { ...initiate, signal: abortRef.current.signal });
      const job: Job = {
        job_id: data.job_id,
        file_id: fileId,
        status: data.status,
        progress: data.status === "completed" ? 100 : 0,
        priority: initiate.priority ?? "normal",
        created_at: new Date().toISOString(),
      };
      setJobs((previous) => ({ ...previous, [job.job_id]: previous[job.job_id] ?? job }));
      persistJob(job);
      watch(job.job_id, { websocketUrl: data.websocket_url, pollingIntervalMs: data.polling_interval, status: data.status });
      return job.job_id;
    },
    [watch],
  );

  const cancel = useCallback(
    async (jobId: string): Promise<void> => {
      try {
        await downloadCancel(jobId);
        apply(jobId, { status: "cancelled" });
      } catch (cancelError) {
        const status = cancelError instanceof ApiError ? cancelError.body.status : undefined;
        if (typeof status !== "string" || !isTerminal(status)) throw cancelError;
        apply(jobId, { status: status as JobStatus });
      }
      watchers.current.get(jobId)?.stop();
    },
    [apply],
  );

  const download = useCallback(
    async (jobId: string): Promise<void> => {
      try {
        await downloadSave(jobId);
      } catch (saveError) {
        if (saveError instanceof ApiError && saveError.code === "DOWNLOAD_EXPIRED") apply(jobId, { status: "expired" });
        throw saveError;
      }
    },
    [apply],
  );

  const refresh = useCallback(() => load(abortRef.current.signal), [load]);

  return { jobs: newestFirst(jobs), transports, loading, error, start, cancel, download, refresh };
}
