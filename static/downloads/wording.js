/*
 * What a job card says in words a person acts on: a failure by its error code (the codes of
 * jobs/errors.py), a queued job's place in line.
 */

export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) {
    const rest = s % 60;
    return rest ? `${Math.floor(s / 60)} min ${rest} s` : `${s / 60} min`;
  }
  const minutes = Math.round((s % 3600) / 60);
  return minutes ? `${Math.floor(s / 3600)} h ${minutes} min` : `${Math.floor(s / 3600)} h`;
}

const ordinalRules = new Intl.PluralRules("en", { type: "ordinal" });
const ORDINAL_SUFFIX = { one: "st", two: "nd", few: "rd", other: "th" };

/** "Next in line", "2nd in line", "13th in line". */
export function placeInLine(position) {
  if (position <= 1) return "Next in line";
  return `${position}${ORDINAL_SUFFIX[ordinalRules.select(position)]} in line`;
}

/** The figures under a queued job that waits its turn. */
export function queuedDetail(position, estimateS) {
  const ready = estimateS ? `Ready in about ${formatDuration(estimateS)}.` : "";
  if (position) return [`${placeInLine(position)}.`, ready].filter(Boolean).join(" ");
  return ["Waiting to start.", ready].filter(Boolean).join(" ");
}

// What went wrong and what to do, by error code. `retry`: whether asking again for the
// same file may work, so the card offers Retry. A code not listed falls back on the
// server's message and its `retryable`.
const FAILURES = {
  FILE_NOT_FOUND: { text: "No file with this ID. Check the file ID.", retry: false },
  INVALID_FILE_ID: { text: "This is not a valid file ID. Check the file ID.", retry: false },
  PERMISSION_DENIED: {
    text: "You do not have access to this file. Ask its owner for access, or check the file ID.",
    retry: false,
  },
  FILE_TOO_LARGE: { text: "This file is too large to be prepared here. Contact support to get it.", retry: false },
  ORIGIN_REDIRECT_REFUSED: {
    text: "The file's source sent it from a place this service does not download from. Contact support.",
    retry: false,
  },
  DOWNLOAD_TIMEOUT: { text: "Preparing this file took too long. Try again later.", retry: true },
  STORAGE_FULL: { text: "There is no room to store the file at the moment. Try again later.", retry: true },
  NETWORK_ERROR: { text: "The file's source could not be reached. Try again.", retry: true },
  TEMPORARY_UNAVAILABLE: { text: "The file's source is unavailable at the moment. Try again.", retry: true },
  RATE_LIMIT: { text: "The file's source is busy. Try again in a minute.", retry: true },
  TIMEOUT: { text: "The file's source stopped answering. Try again.", retry: true },
  PROCESSING_ERROR: { text: "The file could not be prepared. Try again.", retry: true },
  STORAGE_ERROR: { text: "The file could not be stored. Try again.", retry: true },
};

/** {text, retry, code} of a failed job's `error` ({code, message, retryable}). */
export function failure(error) {
  const code = (error && error.code) || "";
  const known = FAILURES[code];
  if (known) return { ...known, code };
  const message = (error && error.message) || "The download could not be prepared.";
  return { text: message, retry: Boolean(error && error.retryable), code };
}
