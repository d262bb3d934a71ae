// A concise node:test reporter: each failure in full (name, file:line, error), then the run's
// summary lines as TAP prints them ("# tests 68", "# pass 68", "# fail 0", ...), so a CI log
// stays short but keeps the counts. Used with the built-in "dot" reporter (npm test).
import { inspect } from "node:util";

export default async function* summaryReporter(source) {
  const failures = [];
  let first = true;
  for await (const { type, data } of source) {
    if (type === "test:fail" && data.details?.type !== "suite") {
      const where = data.file ? ` (${data.file}:${data.line ?? "?"})` : "";
      const error = data.details?.error;
      const cause = error?.cause ?? error;
      failures.push(`not ok - ${data.name}${where}\n${inspect(cause, { depth: 4 }).replace(/^/gm, "    ")}\n`);
    } else if (type === "test:diagnostic" && data.nesting === 0) {
      const before = failures.length ? `\n${failures.splice(0).join("\n")}` : first ? "\n" : "";
      first = false;
      yield `${before}# ${data.message}\n`;
    }
  }
  if (failures.length) yield failures.join("\n");
}
