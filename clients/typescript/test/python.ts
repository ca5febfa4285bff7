// Runs the Python client's code, the reference these tests compare with.
import { execFileSync } from "node:child_process";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
export const PYTHON = process.env["PARLEY_PYTHON"] ?? path.join(REPO, ".venv", "bin", "python");

/** Runs `code` with the repo's Python (its stdin is `input`) and parses the JSON it prints. */
export function python<T>(code: string, input = ""): T {
  const output = execFileSync(PYTHON, ["-c", code], { cwd: REPO, input, encoding: "utf8" });
  return JSON.parse(output) as T;
}
