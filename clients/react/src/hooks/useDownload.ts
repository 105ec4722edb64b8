// One download: start it, watch it to the end, save its file. Its job id is kept in
// localStorage (per file), so a reload shows the same job and watches it again.
import { useCallback, useEffect, useRef, useState } from "react";

import { ApiError, downloadCancel, downloadInitiate, downloadSave, downloadStatus, isAbort, type InitiateOptions } from "../api";
import { forgetJob, persistedJobOfFile, persistJob } from "../persist";
import { isTerminal, jobMerge, type Job, type JobStatus } from "../types";
import { JobWatcher, type Transport } from "../watcher";

export interface DownloadState {
  jobId: string | null;
  status: "idle" | JobStatus;
  progress: number;
  downloadUrl: string | null; // the API path to ask for a link (docs/api.md), not a file link
  fileName: string | null;
  error: string | null;
  errorCode: string | null;
  busy: boolean; // a request of the user's (start, save, cancel) is under way
  transport: Transport;
}

export interface UseDownloadOptions {
  /** The file this hook downloads: its job is kept across reloads. */
  fileId?: number;
  /** Keep the job id in localStorage (default true). */
  persist?: boolean;
}

interface Failure {
  code: string;
  message: string;
}

function failureOf(error: unknown): Failure {
  if (error instanceof ApiError) return { code: error.code, message: error.message };
  return { code: "UNKNOWN", message: error instanceof Error ? error.message : "Unknown error" };
}

export function useDownload(options: UseDownloadOptions = {}) {
  const persist = options.persist ?? true;
  const [job, setJob] = useState<Job | null>(() => {
    const kept = persist && options.fileId !== undefined ? persistedJobOfFile(options.fileId) : undefined;
    return kept ? { ...kept } : null;
  });
  const [failure, setFailure] = useState<Failure | null>(null);
  const [busy, setBusy] = useState(false);
  const [transport, setTransport] = useState<Transport>("none");
  const jobRef = useRef(job);
  jobRef.current = job;
  const watcherRef = useRef<JobWatcher | null>(null);
  const abortRef = useRef<AbortController>(new AbortController());

  const watch = useCallback((jobId: string, init: { websocketUrl?: string; pollingIntervalMs?: number; status: string }) => {
    watcherRef.current?.stop();
    const watcher: JobWatcher = new JobWatcher(
      jobId,
      {
        update: (update) => setJob((previous) => (previous?.job_id === jobId ? jobMerge(previous, update) : previous)),
        lost: (error) => {
          if (watcherRef.current !== watcher) return;
          if (error.status === 404) forgetJob(jobId);
          setFailure(failureOf(error));
        },
        transport: (now) => {
          if (watcherRef.current === watcher) setTransport(now);
        },
      },
      init,
    );
    watcherRef.current = watcher;
    watcher.start();
  }, []);

  // Resume the kept job on mount; end every timer, socket and request on unmount.
  useEffect(() => {
    const controller = new AbortController();
    abortRef.current = controller;
    const kept = jobRef.current;
    if (kept && !isTerminal(kept.status)) {
      watch(kept.job_id, { status: kept.status });
    } else if (kept) {
      // Ended: one look, since a completed job's file may have expired since.
      downloadStatus(kept.job_id, controller.signal)
        .then((now) => setJob((previous) => (previous?.job_id === now.job_id ? jobMerge(previous, { ...now, type: "poll" }) : previous)))
        .catch((error: unknown) => {
          if (isAbort(error)) return;
          if (error instanceof ApiError && error.status === 404) {
            forgetJob(kept.job_id);
            setJob(null);
          }
        });
    }
    return () => {
      controller.abort();
      watcherRef.current?.stop();
      watcherRef.current = null;
    };
  }, [watch]);

  useEffect(() => {
    if (job && persist) persistJob(job);
  }, [job, persist]);

  const startDownload = async (fileId: number, initiate: Omit<InitiateOptions, "signal"> = {}) => {
    watcherRef.current?.stop();
    watcherRef.current = null;
    setFailure(null);
    setBusy(true);
    try {
      const data = await downloadInitiate(fileId, { ...initiate, signal: abortRef.current.signal });
      const started: Job = {
        job_id: data.job_id,
        file_id: fileId,
        status: data.status,
        progress: data.status === "completed" ? 100 : 0,
      };
      setJob(started);
      watch(data.job_id, { websocketUrl: data.websocket_url, pollingIntervalMs: data.polling_interval, status: data.status });
    } catch (error) {
      if (!isAbort(error)) setFailure(failureOf(error));
    } finally {
      setBusy(false);
    }
  };

  const downloadFile = async () => {
    const current = jobRef.current;
    if (!current || current.status !== "completed") return;
    setBusy(true);
    try {
      await downloadSave(current.job_id);
    } catch (error) {
      if (error instanceof ApiError && error.code === "DOWNLOAD_EXPIRED") {
        setJob({ ...current, status: "expired" });
      } else {
        setFailure(failureOf(error));
      }
    } finally {
      setBusy(false);
    }
  };

  const cancel = async () => {
    const current = jobRef.current;
    if (!current || isTerminal(current.status)) return;
    setBusy(true);
    try {
      await downloadCancel(current.job_id);
      setJob((previous) => previous && jobMerge(previous, { status: "cancelled" }));
      watcherRef.current?.stop();
    } catch (error) {
      const status = error instanceof ApiError ? error.body.status : undefined;
      if (typeof status === "string" && isTerminal(status)) {
        setJob((previous) => previous && jobMerge(previous, { status: status as JobStatus }));
      } else {
        setFailure(failureOf(error));
      }
    } finally {
      setBusy(false);
    }
  };

  // Back to the start: the job is forgotten here (it stays on the server's list).
  const retry = () => {
    watcherRef.current?.stop();
    watcherRef.current = null;
    if (jobRef.current) forgetJob(jobRef.current.job_id);
    setJob(null);
    setFailure(null);
    setTransport("none");
  };

  const state: DownloadState = {
    jobId: job?.job_id ?? null,
    status: failure ? "failed" : (job?.status ?? "idle"),
    progress: job?.progress ?? 0,
    downloadUrl: job?.download_url ?? null,
    fileName: job?.file_name ?? null,
    error: failure?.message ?? (job?.status === "failed" ? (job.error?.message ?? "Download failed") : null),
    errorCode: failure?.code ?? (job?.status === "failed" ? (job.error?.code ?? null) : null),
    busy,
    transport,
  };

  return { state, startDownload, downloadFile, cancel, retry };
}
