// The end-to-end tests' view of the test server started by scripts/with_test_server.py.
//
// Policy: with FLOWSTATE_TEST_ADDRESS unset, the end-to-end suites FAIL under CI=true (a CI run
// that silently tests nothing is worse than a red one) and are SKIPPED with a loud banner when
// run by hand. To run them by hand: `make test`, or from clients/typescript
// `npm run test:e2e` (= ../../scripts/with_test_server.py -- npm test).
import { execFile } from "node:child_process";
import { promisify } from "node:util";

export interface TestServerEnv {
  address: string;
  token: string;
  adminToken: string;
  otherTenantToken: string;
  readonlyToken: string;
  /** Tenant A, scope `retention:admin` (which `flows:admin` does not imply). */
  retentionToken: string;
  /** Shell commands of the harness: graceful restart, hard (SIGKILL) restart, stop, start. */
  restartCmd?: string;
  hardRestartCmd?: string;
  stopCmd?: string;
  startCmd?: string;
  /** The harness's second server, requiring TLS and client certificates (`--tls`). */
  tls?: TlsTestServerEnv;
}

export interface TlsTestServerEnv {
  address: string;
  token: string;
  caFile: string;
  clientCertFile: string;
  clientKeyFile: string;
}

/** `env[name]`, which must be set when `given` is (the harness sets them together). */
function need(env: NodeJS.ProcessEnv, given: string, name: string): string {
  const value = env[name];
  if (!value) throw new Error(`${given} is set but ${name} is not (use scripts/with_test_server.py)`);
  return value;
}

function loadTls(env: NodeJS.ProcessEnv): TlsTestServerEnv | undefined {
  const address = env["FLOWSTATE_TEST_TLS_ADDRESS"];
  if (!address) return undefined;
  const required = (name: string): string => need(env, "FLOWSTATE_TEST_TLS_ADDRESS", name);
  return {
    address,
    token: required("FLOWSTATE_TEST_TLS_TOKEN"),
    caFile: required("FLOWSTATE_TEST_TLS_CA_FILE"),
    clientCertFile: required("FLOWSTATE_TEST_TLS_CLIENT_CERT_FILE"),
    clientKeyFile: required("FLOWSTATE_TEST_TLS_CLIENT_KEY_FILE"),
  };
}

function load(): TestServerEnv | undefined {
  const env = process.env;
  const address = env["FLOWSTATE_TEST_ADDRESS"];
  if (!address) return undefined;
  const required = (name: string): string => need(env, "FLOWSTATE_TEST_ADDRESS", name);
  return {
    address,
    token: required("FLOWSTATE_TEST_TOKEN"),
    adminToken: required("FLOWSTATE_TEST_TOKEN_ADMIN"),
    otherTenantToken: required("FLOWSTATE_TEST_TOKEN_OTHER_TENANT"),
    readonlyToken: required("FLOWSTATE_TEST_TOKEN_READONLY"),
    retentionToken: required("FLOWSTATE_TEST_TOKEN_RETENTION"),
    restartCmd: env["FLOWSTATE_TEST_RESTART_CMD"] || undefined,
    hardRestartCmd: env["FLOWSTATE_TEST_HARD_RESTART_CMD"] || undefined,
    stopCmd: env["FLOWSTATE_TEST_STOP_CMD"] || undefined,
    startCmd: env["FLOWSTATE_TEST_START_CMD"] || undefined,
    tls: loadTls(env),
  };
}

export const testServer = load();
export const inCI = process.env["CI"] === "true" || process.env["CI"] === "1";

if (testServer === undefined && !inCI) {
  const line = "!".repeat(100);
  console.warn(
    `\n${line}\n!! FLOWSTATE_TEST_ADDRESS is not set: the end-to-end tests against a real server are SKIPPED.\n` +
      `!! Run them with \`make test\` or \`npm run test:e2e\` (scripts/with_test_server.py). Under CI=true they fail.\n${line}\n`,
  );
}

/** Runs one of the harness's shell commands (restart, stop, start); resolves once it is done. */
export async function harness(command: string | undefined, timeoutMs = 120_000): Promise<string> {
  if (!command) throw new Error("the harness gave no such command");
  const { stdout } = await promisify(execFile)("/bin/sh", ["-c", command], { timeout: timeoutMs });
  return stdout.trim();
}
