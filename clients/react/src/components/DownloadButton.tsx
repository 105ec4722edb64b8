// components/DownloadButton.tsx: one file's download, from the button to the saved file.
import { useDownload } from "../hooks/useDownload";

export function DownloadButton({ fileId }: { fileId: number }) {
  const { state, startDownload, downloadFile, retry } = useDownload({ fileId });

  const renderContent = () => {
    switch (state.status) {
      case "idle":
        return (
          <button onClick={() => startDownload(fileId)} className="btn-primary" disabled={state.busy}>
            Download File
          </button>
        );

      case "queued":
        return (
          <div className="download-status">
            <div className="spinner" />
            <span>Queued...</span>
          </div>
        );

      case "processing":
        return (
          <div className="download-status">
            <div className="progress-bar">
              <div className="progress-fill" style={{ width: `${state.progress}%` }} />
            </div>
            <span>{state.progress}% Complete</span>
          </div>
        );

      case "completed":
        return (
          <button onClick={downloadFile} className="btn-success" disabled={state.busy}>
            Download Ready! Click to Download
          </button>
        );

      case "failed":
        return (
          <div className="download-error">
            <span className="error-message">{state.error}</span>
            <button onClick={retry} className="btn-retry">
              Retry
            </button>
          </div>
        );

      case "cancelled":
      case "expired":
        return (
          <div className="download-error">
            <span className="error-message">Download {state.status}</span>
            <button onClick={retry} className="btn-retry">
              Retry
            </button>
          </div>
        );
    }
  };

  return (
    <div className="download-container" data-status={state.status} data-transport={state.transport}>
      {renderContent()}
    </div>
  );
}
