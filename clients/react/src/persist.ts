// The jobs this browser started or watched, kept in localStorage so that a reload (or a new
// tab of the same app) finds them and watches them again. One list per API base URL.
// Storage that is full or switched off only costs the feature: nothing throws.
import { apiConfig } from "./api";
import type { Job } from "./types";

/** What is kept of a job: enough to show it at once after a reload, until its status comes. */
export interface PersistedJob {
  job_id: string;
  file_id: number;
  status: Job["status"];
  progress: number;
}

const KEY_PREFIX = "downloads-client:jobs:";
/** The newest jobs kept; older ones are still listed by GET /v1/downloads. */
export const PERSISTED_JOBS_MAX = 50;

function storageKey(): string {
  return `${KEY_PREFIX}${apiConfig.baseUrl}`;
}

export function persistedJobs(): PersistedJob[] {
  try {
    const parsed: unknown = JSON.parse(window.localStorage.getItem(storageKey()) ?? "[]");
    return Array.isArray(parsed) ? parsed.filter((entry) => typeof entry?.job_id === "string") : [];
  } catch {
    return [];
  }
}

function persistedJobsWrite(jobs: PersistedJob[]): void {
  try {
    window.localStorage.setItem(storageKey(), JSON.stringify(jobs.slice(0, PERSISTED_JOBS_MAX)));
  } catch {
    // Full, or switched off: the jobs are still on the server's list.
  }
}

/** Keeps (or updates) a job; a new one goes first. */
export function persistJob(job: Pick<Job, "job_id" | "file_id" | "status" | "progress">): void {
  const entry: PersistedJob = { job_id: job.job_id, file_id: job.file_id, status: job.status, progress: job.progress };
  const jobs = persistedJobs();
  const index = jobs.findIndex((kept) => kept.job_id === job.job_id);
  if (index >= 0) jobs[index] = entry;
  else jobs.unshift(entry);
  persistedJobsWrite(jobs);
}

export function forgetJob(jobId: string): void {
  persistedJobsWrite(persistedJobs().filter((kept) => kept.job_id !== jobId));
}

/** The newest job kept for a file, if any. */
export function persistedJobOfFile(fileId: number): PersistedJob | undefined {
  return persistedJobs().find((kept) => kept.file_id === fileId);
}
