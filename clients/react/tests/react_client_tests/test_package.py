"""clients/react as an npm package: `npm pack` (whose prepack builds it: vite's library
mode and `tsc --emitDeclarationOnly`) makes a tarball of ES module JavaScript and .d.ts
types with React as a peer, and an app written in TypeScript can import it: a consumer
file type-checks against the unpacked package, and Node imports its module."""

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from .support import CLIENT_DIR, npm_ci_if_needed

CONSUMER_TSX = """
import { useState } from "react";
import {
  ApiError, configureApi, DownloadButton, DownloadList, useDownload, useDownloads,
  type DownloadState, type Job, type JobStatus,
} from "downloads-react";

configureApi({ baseUrl: "https://downloads.example.com", token: "dlk_example" });

export function Panel(): JSX.Element {
  const { state, startDownload, cancel } = useDownload({ fileId: 70000 });
  const { jobs, start } = useDownloads({ pageSize: 50 });
  const [last, setLast] = useState<string | null>(null);
  const status: DownloadState["status"] = state.status;
  const first: Job | undefined = jobs[0];
  const ended: JobStatus[] = ["completed", "failed"];
  void startDownload(70000, { priority: "high" });
  void cancel();
  start(70001).then(setLast, (error: unknown) => error instanceof ApiError && setLast(error.code));
  // @ts-expect-error: a file id is a number (the package's types are checked, not `any`)
  useDownload({ fileId: "70000" });
  return (
    <div title={`${status} ${first?.progress ?? 0} ${ended.length} ${last}`}>
      <DownloadButton fileId={70000} />
      <DownloadList />
    </div>
  );
}
"""

CONSUMER_TSCONFIG = {
    "compilerOptions": {
        "target": "ES2020",
        "lib": ["ES2020", "DOM"],
        "module": "ESNext",
        "moduleResolution": "bundler",
        "jsx": "react-jsx",
        "strict": True,
        "noEmit": True,
    },
    "files": ["consumer.tsx"],
}


def test_npm_pack_makes_a_package_that_a_typescript_app_imports(tmp_path: Path) -> None:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("no `npm`/`node` on PATH: packing the React client needs Node.js 20+")
    npm_ci_if_needed()
    packed = subprocess.run(
        ["npm", "pack", "--json", "--pack-destination", str(tmp_path)],
        cwd=CLIENT_DIR, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    # The prepack build's output comes first, and may hold brackets of its own ("[vite]",
    # colours): npm's JSON is the array that starts on a line of its own.
    array = re.search(r"^\[\s*$", packed.stdout, re.M)
    assert array is not None, packed.stdout
    (info,) = json.loads(packed.stdout[array.start() :])
    tarball = tmp_path / info["filename"]

    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("package/package.json"))  # type: ignore[arg-type]
        module = tar.extractfile("package/dist/lib/index.js").read().decode()  # type: ignore[union-attr]
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert {
        "package/package.json",
        "package/README.md",
        "package/dist/lib/index.js",
        "package/dist/lib/index.d.ts",
        "package/dist/lib/hooks/useDownload.d.ts",
        "package/dist/lib/hooks/useDownloads.d.ts",
        "package/dist/lib/components/DownloadButton.d.ts",
    } <= names, sorted(names)
    assert not [
        name for name in names if name.startswith(("package/src/", "package/seed/", "package/tests/"))
    ]
    assert manifest["name"] == "downloads-react"
    assert manifest["type"] == "module"
    assert manifest["exports"]["."] == {"types": "./dist/lib/index.d.ts", "import": "./dist/lib/index.js"}
    assert manifest["types"] == "./dist/lib/index.d.ts"
    assert "react" in manifest["peerDependencies"]
    assert "react" not in manifest.get("dependencies", {})
    # React is imported, not bundled: the app's own React runs the hooks.
    assert 'from "react"' in module
    assert "react.production" not in module
    assert "__SECRET_INTERNALS" not in module

    consumer = tmp_path / "consumer"
    modules = consumer / "node_modules"
    (modules / "@types").mkdir(parents=True)
    (tmp_path / "unpacked" / "package").rename(modules / "downloads-react")
    for name in ("react", "@types/react", "@types/prop-types", "csstype"):
        if (CLIENT_DIR / "node_modules" / name).exists():
            (modules / name).symlink_to(CLIENT_DIR / "node_modules" / name)
    (consumer / "package.json").write_text(
        json.dumps({"name": "consumer", "private": True, "type": "module"})
    )
    (consumer / "consumer.tsx").write_text(CONSUMER_TSX)
    (consumer / "tsconfig.json").write_text(json.dumps(CONSUMER_TSCONFIG))
    checked = subprocess.run(
        [str(CLIENT_DIR / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"],
        cwd=consumer, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr

    imported = subprocess.run(
        ["node", "--input-type=module", "-e",
         "const m = await import('downloads-react'); console.log(JSON.stringify(Object.keys(m).sort()));"],
        cwd=consumer, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    exported = set(json.loads(imported.stdout))
    assert {"useDownload", "useDownloads", "DownloadButton", "DownloadList", "configureApi"} <= exported
