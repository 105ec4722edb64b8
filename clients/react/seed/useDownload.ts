// hooks/useDownload.ts
import { useState, useEffect, useRef } from "react";
import { io, Socket } from "socket.io-client";

interface DownloadState {
  jobId: string | null;
  status: "idle" | "queued" | "processing" | "completed" | "failed";
  progress: number;
  downloadUrl: string | null;
  error: string | null;
}

export function useDownload() {
  const [state, setState] = useState<DownloadState>({
    jobId: null,
    status: "idle",
    progress: 0,
    downloadUrl: null,
    error: null,
  });

  const wsRef = useRef<WebSocket | null>(null);
  const pollingRef = useRef<NodeJS.Timeout | null>(null);

  // Initiate download
  const startDownload = async (fileId: number) => {
    try {
      const response = await fetch("/v1/download/initiate", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ file_id: fileId }),
      });

      const data = await response.json();

      if (!data.success) {
        throw new Error(data.error.message);
      }

      const { job_id, websocket_url, polling_interval } = data.data;

      setState({
        jobId: job_id,
        status: "queued",
        progress: 0,
        downloadUrl: null,
        error: null,
      });

      // Try WebSocket first
      connectWebSocket(websocket_url, job_id);

      // Fallback to polling after 5 seconds if WS fails
      setTimeout(() => {
        if (!wsRef.current || wsRef.current.readyState !== WebSocket.OPEN) {
          startPolling(job_id, polling_interval);
        }
      }, 5000);
    } catch (error) {
      setState((prev) => ({
        ...prev,
        status: "failed",
        error: error instanceof Error ? error.message : "Unknown error",
      }));
    }
  };

  // WebSocket connection
  const connectWebSocket = (url: string, jobId: string) => {
    try {
      const ws = new WebSocket(url);
      wsRef.current = ws;

      ws.onopen = () => {
        console.log("WebSocket connected");
        // Stop polling if it started
        if (pollingRef.current) {
          clearInterval(pollingRef.current);
          pollingRef.current = null;
        }
      };

      ws.onmessage = (event) => {
        const message = JSON.parse(event.data);
        handleStatusUpdate(message);
      };

      ws.onerror = (error) => {
        console.error("WebSocket error:", error);
        // Fallback to polling
        startPolling(jobId, 2000);
      };

      ws.onclose = () => {
        console.log("WebSocket closed");
        wsRef.current = null;
      };
    } catch (error) {
      console.error("Failed to connect WebSocket:", error);
      startPolling(jobId, 2000);
    }
  };

  // Polling fallback
  const startPolling = (jobId: string, interval: number) => {
    if (pollingRef.current) return; // Already polling

    console.log("Starting polling fallback");

    pollingRef.current = setInterval(async () => {
      try {
        const response = await fetch(`/v1/download/status/${jobId}`);
        const data = await response.json();

        if (data.success) {
          handleStatusUpdate(data.data);

          // Stop polling when done
          if (["completed", "failed"].includes(data.data.status)) {
            if (pollingRef.current) {
              clearInterval(pollingRef.current);
              pollingRef.current = null;
            }
          }
        }
      } catch (error) {
        console.error("Polling error:", error);
      }
    }, interval);
  };

  // Handle status updates (from WS or polling)
  const handleStatusUpdate = (update: any) => {
    setState((prev) => ({
      ...prev,
      status: update.status,
      progress: update.progress || prev.progress,
      downloadUrl: update.download_url || prev.downloadUrl,
      error: update.error?.message || null,
    }));
  };

  // Download file
  const downloadFile = async () => {
    if (!state.jobId || state.status !== "completed") return;

    try {
      const response = await fetch(`/v1/download/${state.jobId}`);
      const data = await response.json();

      if (data.success) {
        // Trigger download
        window.location.href = data.data.download_url;
      }
    } catch (error) {
      setState((prev) => ({
        ...prev,
        error: "Failed to download file",
      }));
    }
  };

  // Retry failed download
  const retry = () => {
    if (state.jobId) {
      setState({
        jobId: null,
        status: "idle",
        progress: 0,
        downloadUrl: null,
        error: null,
      });
    }
  };

  // Cleanup on unmount
  useEffect(() => {
    return () => {
      if (wsRef.current) {
        wsRef.current.close();
      }
      if (pollingRef.current) {
        clearInterval(pollingRef.current);
      }
    };
  }, []);

  return {
    state,
    startDownload,
    downloadFile,
    retry,
  };
}
