// The lifecycle of a flow, as an orchestrator drives it, with @flowstate/client.
//
// create -> start a phase -> report progress -> complete it; fail a phase -> retry -> complete;
// watch every change meanwhile. Settings come from the environment: FLOWSTATE_ADDRESS (default
// 127.0.0.1:50051) and FLOWSTATE_TOKEN (mint one with `flowstate token`).
//
//   npm install && npm start
import assert from "node:assert/strict";

import {
  createFlowstateClient,
  ErrorCode,
  FlowStatus,
  HistoryEventKind,
  PhaseOrderViolationError,
  PhaseState,
  type FlowEvent,
} from "@flowstate/client";

const PHASES = ["data_import", "field_mapping", "data_cleansing", "asset_inventory", "dependency_analysis"];

const client = createFlowstateClient(); // FLOWSTATE_ADDRESS, FLOWSTATE_TOKEN
try {
  const { flow } = await client.createFlow({ definitionName: "discovery", displayName: "example" });
  const flowId = flow!.flowId;
  console.log("created", flowId, FlowStatus[flow!.status]);

  // Every change, in order; resumes by itself after disconnects; ends after the terminal event.
  const watching = (async () => {
    const events: FlowEvent[] = [];
    for await (const event of client.watch(flowId)) {
      console.log(`  v${event.flowVersion} ${FlowStatus[event.status]} ${event.progress.toFixed(0)}%`);
      events.push(event);
    }
    return events;
  })();

  try {
    // A refusal is a typed error carrying the server's structured details.
    await client.transitionPhase({ flowId, phase: "field_mapping", targetState: PhaseState.IN_PROGRESS });
  } catch (err) {
    if (!(err instanceof PhaseOrderViolationError)) throw err;
    console.log("refused:", err.code, "blocked by", err.blockingPhases);
  }

  let status = FlowStatus.UNSPECIFIED;
  for (const phase of PHASES) {
    await client.transitionPhase({ flowId, phase, targetState: PhaseState.IN_PROGRESS });
    await client.updatePhaseProgress({ flowId, phase, progress: 0.5 });
    if (phase === "field_mapping") {
      // The agent failed: report it, then retry the phase.
      await client.transitionPhase({
        flowId,
        phase,
        targetState: PhaseState.FAILED,
        failure: { errorCode: ErrorCode.AGENT_TIMEOUT, message: "the mapping agent did not answer" },
      });
      await client.retry({ flowId, phase }); // FAILED -> RETRY_NEEDED
      await client.retry({ flowId, phase }); // RETRY_NEEDED -> IN_PROGRESS
    }
    const result = await client.transitionPhase({ flowId, phase, targetState: PhaseState.COMPLETED });
    status = result.flow!.status;
  }
  assert.equal(status, FlowStatus.COMPLETED);
  const events = await watching;
  assert.equal(events.at(-1)?.status, FlowStatus.COMPLETED);

  for await (const entry of client.history(flowId)) {
    // Pages are fetched lazily; enums print by name.
    console.log(entry.flowVersion, HistoryEventKind[entry.kind], entry.phase, PhaseState[entry.toState]);
  }
} finally {
  client.close();
}
