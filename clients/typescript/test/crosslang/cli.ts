// The TypeScript side of the cross-language test (tests/crosslang): watches a flow and makes a
// fixed set of bad requests with the TypeScript client, printing JSON that the test compares
// with what the Go and Python clients see.
//
//   tsx test/crosslang/cli.ts watch FLOW_ID    one JSON line per event {version, kind, status, progress};
//                                              the first line is the snapshot; exits after the terminal event
//   tsx test/crosslang/cli.ts errors FLOW_ID   {"case": {code, grpcCode, message, details, ...}, ...}
//
// Settings come from the environment: FLOWSTATE_ADDRESS, FLOWSTATE_TOKEN (tenant A, write),
// FLOWSTATE_TOKEN_READONLY (tenant A, read), FLOWSTATE_TOKEN_OTHER_TENANT (tenant B, write).
import {
  createFlowstateClient,
  FlowStatus,
  isFlowstateError,
  PhaseState,
  type FlowstateClient,
} from "../../src/index.js";

const address = process.env["FLOWSTATE_ADDRESS"] ?? "";

function connect(tokenVariable: string | undefined): FlowstateClient {
  const token = tokenVariable === undefined ? "" : (process.env[tokenVariable] ?? "");
  return createFlowstateClient({ address, token, retry: false });
}

function describe(error: unknown): unknown {
  if (error === undefined) return null;
  if (!isFlowstateError(error)) return { unexpected: String(error) };
  const json = error.toJSON();
  let currentVersion: number | null = null;
  if ("currentVersion" in error && typeof error.currentVersion === "bigint") currentVersion = Number(error.currentVersion);
  return {
    ...json,
    validTransitions: "validTransitions" in error ? (error.validTransitions as PhaseState[]).map((s) => PhaseState[s]) : [],
    blockingPhases: "blockingPhases" in error ? error.blockingPhases : [],
    currentVersion,
    fieldViolations: error.fieldViolations.map((v) => [v.field, v.description]),
  };
}

async function failure(call: () => Promise<unknown>): Promise<unknown> {
  try {
    await call();
    return undefined;
  } catch (error) {
    return error;
  }
}

async function badRequests(flowId: string): Promise<Record<string, unknown>> {
  const writer = connect("FLOWSTATE_TOKEN");
  const other = connect("FLOWSTATE_TOKEN_OTHER_TENANT");
  const anonymous = connect(undefined);
  const reader = connect("FLOWSTATE_TOKEN_READONLY");
  const move = (phase: string, targetState: PhaseState, expectedVersion?: bigint) => () =>
    writer.transitionPhase({ flowId, phase, targetState, expectedVersion });
  const cases: Record<string, () => Promise<unknown>> = {
    invalid_phase_transition: move("data_import", PhaseState.COMPLETED),
    phase_order_violation: move("field_mapping", PhaseState.IN_PROGRESS),
    version_conflict: move("data_import", PhaseState.IN_PROGRESS, 99n),
    invalid_phase: move("no_such_phase", PhaseState.IN_PROGRESS),
    flow_not_found: () => writer.getFlow({ flowId: "00000000-0000-4000-8000-000000000000" }),
    malformed_request: () => writer.getFlow({ flowId: "not-a-uuid" }),
    other_tenant: () => other.getFlow({ flowId }),
    unauthenticated: () => anonymous.getFlowDefinition({ name: "discovery" }),
    permission_denied: () => reader.createFlow({ definitionName: "discovery" }),
  };
  const result: Record<string, unknown> = {};
  try {
    for (const [name, call] of Object.entries(cases)) result[name] = describe(await failure(call));
  } finally {
    for (const client of [writer, other, anonymous, reader]) client.close();
  }
  return result;
}

async function watch(flowId: string): Promise<void> {
  const client = connect("FLOWSTATE_TOKEN_READONLY");
  try {
    for await (const event of client.watch(flowId)) {
      const line = {
        version: Number(event.flowVersion),
        kind: event.kind.case,
        status: FlowStatus[event.status],
        progress: event.progress,
      };
      process.stdout.write(`${JSON.stringify(line)}\n`);
    }
  } finally {
    client.close();
  }
}

async function main(args: string[]): Promise<void> {
  const [command, flowId] = args;
  if (command === "watch" && flowId) return watch(flowId);
  if (command === "errors" && flowId) {
    process.stdout.write(`${JSON.stringify(await badRequests(flowId))}\n`);
    return;
  }
  throw new Error("usage: cli.ts watch FLOW_ID | errors FLOW_ID");
}

const timer = setTimeout(() => {
  console.error("crosslang cli: timed out after 60 s");
  process.exit(2);
}, 60_000);
main(process.argv.slice(2)).then(
  () => clearTimeout(timer),
  (error: unknown) => {
    console.error("crosslang cli:", error);
    process.exit(1);
  },
);
