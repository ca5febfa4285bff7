import { defineConfig } from "vite";

// Relative asset paths: dist/ can be served from any directory.
export default defineConfig({ base: "./" });
