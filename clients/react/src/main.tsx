// A tiny app around the seed's DownloadButton. Its settings come from the page's fragment,
// which the browser never sends to a server:
//   http://localhost:5173/#api=http://127.0.0.1:8000&token=<DRF token>&file_id=70000
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

import { configureApi } from "./api";
import { DownloadButton } from "./components/DownloadButton";
import "./styles.css";

const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
configureApi({ baseUrl: params.get("api") ?? "", token: params.get("token") });
const fileId = Number(params.get("file_id") ?? "70000");

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <main>
      <h1>Download file {fileId}</h1>
      <DownloadButton fileId={fileId} />
    </main>
  </StrictMode>,
);
