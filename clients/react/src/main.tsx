// A tiny app around the package. Its settings come from the page's fragment, which the
// browser never sends to a server:
//   http://localhost:5173/#api=http://127.0.0.1:8000&token=<API key>&file_id=70000
//   http://localhost:5173/#api=http://127.0.0.1:8000&token=<API key>&view=list
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";

import { configureApi } from "./api";
import { DownloadButton } from "./components/DownloadButton";
import { DownloadList } from "./components/DownloadList";
import "./styles.css";

const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
configureApi({ baseUrl: params.get("api") ?? "", token: params.get("token") });
const fileId = Number(params.get("file_id") ?? "70000");

/** The button, and a switch that unmounts it (its socket and timers go with it). */
function ButtonDemo() {
  const [shown, setShown] = useState(true);
  return (
    <main>
      <h1>Download file {fileId}</h1>
      {shown ? <DownloadButton fileId={fileId} /> : <p className="demo-note">The button is closed.</p>}
      <button className="demo-toggle" onClick={() => setShown(!shown)}>
        {shown ? "Close" : "Open again"}
      </button>
    </main>
  );
}

function ListDemo() {
  return (
    <main>
      <h1>Your downloads</h1>
      <DownloadList />
    </main>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>{params.get("view") === "list" ? <ListDemo /> : <ButtonDemo />}</StrictMode>,
);
