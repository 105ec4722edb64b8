// components/DownloadList.tsx: the user's downloads, live, and a form to start more.
import { type FormEvent, useState } from "react";

import { ApiError } from "../api";
import { useDownloads } from "../hooks/useDownloads";
import { isTerminal, type Job } from "../types";

const STATUS_LABELS: Record<Job["status"], string> = {
  queued: "Queued",
  processing: "Processing",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
  expired: "Expired",
};

function messageOf(error: unknown): string {
  return error instanceof ApiError || error instanceof Error ? error.message : "Something went wrong";
}

export function DownloadList({ pageSize }: { pageSize?: number }) {
  const { jobs, transports, loading, error, start, cancel, download } = useDownloads({ pageSize });
  const [fileId, setFileId] = useState("");
  const [message, setMessage] = useState<string | null>(null);

  const submit = (event: FormEvent) => {
    event.preventDefault();
    const parsed = Number(fileId);
    if (!Number.isSafeInteger(parsed) || parsed < 1) {
      setMessage("A file ID is a whole number from 1");
      return;
    }
    setMessage(null);
    start(parsed).catch((startError: unknown) => setMessage(messageOf(startError)));
  };

  const act = (action: () => Promise<void>) => {
    action().catch((actionError: unknown) => setMessage(messageOf(actionError)));
  };

  return (
    <section className="download-list" aria-busy={loading}>
      <form onSubmit={submit}>
        <label>
          File ID <input name="file_id" inputMode="numeric" value={fileId} onChange={(e) => setFileId(e.target.value)} />
        </label>
        <button type="submit" className="btn-primary">
          Start download
        </button>
      </form>
      {(message ?? error?.message) && (
        <p className="error-message" role="alert">
          {message ?? error?.message}
        </p>
      )}
      <ul>
        {jobs.map((job) => (
          <li
            key={job.job_id}
            data-job-id={job.job_id}
            data-status={job.status}
            data-progress={job.progress}
            data-transport={transports[job.job_id] ?? "none"}
          >
            <span className="job-file">File {job.file_id}</span>{" "}
            <span className="job-state">
              {STATUS_LABELS[job.status]}
              {job.status === "processing" ? ` ${job.progress}%` : ""}
              {job.status === "failed" && job.error ? `: ${job.error.message}` : ""}
            </span>{" "}
            <progress max={100} value={job.progress} />
            {!isTerminal(job.status) && (
              <button className="btn-retry" onClick={() => act(() => cancel(job.job_id))}>
                Cancel
              </button>
            )}
            {job.status === "completed" && (
              <button className="btn-success" onClick={() => act(() => download(job.job_id))}>
                Save
              </button>
            )}
          </li>
        ))}
      </ul>
    </section>
  );
}
