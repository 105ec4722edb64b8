// The package's public interface.
export { ApiError, apiConfig, configureApi, downloadCancel, downloadInitiate, downloadLink, downloadsList, downloadStatus } from "./api";
export type { ApiConfig, DownloadsPage, InitiateOptions } from "./api";
export { backoffDelayMs, RECONNECT_BACKOFF, REQUEST_BACKOFF } from "./backoff";
export type { BackoffPolicy } from "./backoff";
export { DownloadButton } from "./components/DownloadButton";
export { DownloadList } from "./components/DownloadList";
export { useDownload } from "./hooks/useDownload";
export type { DownloadState, UseDownloadOptions } from "./hooks/useDownload";
export { useDownloads } from "./hooks/useDownloads";
export type { UseDownloadsOptions } from "./hooks/useDownloads";
export { forgetJob, persistedJobs } from "./persist";
export type { PersistedJob } from "./persist";
export { isTerminal, jobMerge, TERMINAL_STATUSES } from "./types";
export type { DownloadLink, Initiated, Job, JobError, JobStatus, JobUpdate } from "./types";
export { FINAL_CLOSE_CODES, JobWatcher } from "./watcher";
export type { Transport, WatcherEvents } from "./watcher";
