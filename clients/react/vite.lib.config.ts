// The npm package: src/index.ts as one ES module, React left to the app that uses it
// (a peer dependency). Its types come from `tsc -p tsconfig.lib.json`.
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "dist/lib",
    emptyOutDir: true,
    sourcemap: true,
    minify: false, // readable in an app's node_modules; the app's bundler minifies
    lib: { entry: "src/index.ts", formats: ["es"], fileName: "index" },
    rolldownOptions: { external: ["react", "react-dom", "react/jsx-runtime"] },
  },
});
