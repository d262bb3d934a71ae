// End-to-end tests of the wrapper against a real `flowstate serve` started by
// scripts/with_test_server.py (see support/env.ts for what happens without one).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, describe, it } from "node:test";

import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

import { randomUUID } from "node:crypto";

import { timestampFromDate } from "@bufbuild/protobuf/wkt";

import {
  AlertKind,
  ApprovalDecision,
  BulkActionNotFoundError,
  BulkActionState,
  BulkActionType,
  BulkFlowOutcome,
  ChildFlowNotLinkableError,
  createFlowstateClient,
  DefinitionNotFoundError,
  DefinitionShadowsBuiltinError,
  DependentPhasesActiveError,
  ErrorCode,
  FlowNotFoundError,
  FlowPausedError,
  FlowStatus,
  FlowTerminalError,
  HistoryEventKind,
  InvalidPhaseError,
  InvalidPhaseTransitionError,
  MalformedRequestError,
  MaxRetriesExceededError,
  ParentCancelPolicy,
  PermissionDeniedError,
  PhaseFollowsChildFlowError,
  PhaseKind,
  PhaseOrderViolationError,
  PhaseState,
  RecoveryAction,
  RequestIdReusedError,
  RetryNotAllowedError,
  UnauthenticatedError,
  VersionConflictError,
  WebhookNotFoundError,
  WatchRelation,
  WebhookState,
  type FlowEvent,
  type FlowstateClient,
  type FlowstateClientOptions,
  FlowstateError,
} from "../src/index.js";
import { harness, inCI, testServer } from "./support/env.js";

const PHASES = ["data_import", "field_mapping", "data_cleansing", "asset_inventory", "dependency_analysis"];
// DESIGN.md "Progress" and "Flow status": each phase started (x 0.3) then completed.
const PROGRESS = [6, 20, 26, 40, 46, 60, 66, 80, 86, 100];
const STATUSES = [
  FlowStatus.DATA_GATHERING,
  FlowStatus.DATA_GATHERING,
  FlowStatus.DISCOVERY,
  FlowStatus.DISCOVERY,
  FlowStatus.DISCOVERY,
  FlowStatus.DISCOVERY,
  FlowStatus.ASSESSMENT_READY,
  FlowStatus.ASSESSMENT_READY,
  FlowStatus.PLANNING,
  FlowStatus.COMPLETED,
];
const FAST = { initialBackoffMs: 50, maxBackoffMs: 1_000, deadlineMs: 60_000 };
const TIMEOUT = { timeout: 60_000 };
const RESTART_TIMEOUT = { timeout: 180_000 };

if (testServer === undefined) {
  if (inCI) {
    it("has a test server (FLOWSTATE_TEST_ADDRESS is set under CI)", () => {
      assert.fail("CI=true but FLOWSTATE_TEST_ADDRESS is not set: run the tests through scripts/with_test_server.py");
    });
  } else {
    describe("end-to-end against a real server", { skip: "FLOWSTATE_TEST_ADDRESS is not set" }, () => {});
  }
} else {
  const server = testServer;
  const clients: FlowstateClient[] = [];
  after(() => {
    for (const client of clients) client.close();
  });

  const connect = (token: string = server.token, options: Partial<FlowstateClientOptions> = {}): FlowstateClient => {
    const client = createFlowstateClient({ address: server.address, token, retry: FAST, watchRetry: FAST, ...options });
    clients.push(client);
    return client;
  };
  const writer = connect();

  async function newFlow(client = writer): Promise<string> {
    const { flow } = await client.createFlow({ definitionName: "discovery", displayName: "sdk-ts e2e" });
    assert.ok(flow);
    return flow.flowId;
  }

  async function refusal<T>(promise: Promise<T>): Promise<FlowstateError> {
    return promise.then(
      () => assert.fail("expected the server to refuse"),
      (err: FlowstateError) => err,
    );
  }

  async function move(flowId: string, phase: string, targetState: PhaseState, client = writer) {
    return client.transitionPhase({ flowId, phase, targetState, reason: "e2e" });
  }

  /** Runs every phase of a flow to COMPLETED; returns the progress and status after each step. */
  async function runToCompletion(flowId: string, from = 0, client = writer): Promise<Array<[number, FlowStatus, bigint]>> {
    const steps: Array<[number, FlowStatus, bigint]> = [];
    for (const phase of PHASES.slice(from)) {
      for (const target of [PhaseState.IN_PROGRESS, PhaseState.COMPLETED]) {
        const { flow } = await move(flowId, phase, target, client);
        assert.ok(flow);
        steps.push([flow.progress, flow.status, flow.version]);
      }
    }
    return steps;
  }

  describe("flows end to end", TIMEOUT, () => {
    it("creates a flow and runs it to completion with the exact progress of every step", async () => {
      const created = await writer.createFlow({ definitionName: "discovery", labels: { suite: "ts" } });
      const flow = created.flow;
      assert.ok(flow);
      assert.equal(flow.status, FlowStatus.INITIALIZED);
      assert.equal(flow.version, 1n);
      assert.equal(flow.progress, 0);
      assert.deepEqual(flow.phases.map((p) => p.name), PHASES);
      assert.ok(flow.phases.every((p) => p.state === PhaseState.NOT_STARTED));
      assert.equal(created.historyEntries[0]?.kind, HistoryEventKind.CREATED);

      const steps = await runToCompletion(flow.flowId);
      assert.deepEqual(steps.map(([progress]) => progress), PROGRESS);
      assert.deepEqual(steps.map(([, status]) => status), STATUSES);
      assert.deepEqual(steps.map(([, , version]) => version), [2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n, 10n, 11n]);

      const { flow: done } = await writer.getFlow({ flowId: flow.flowId });
      assert.equal(done?.status, FlowStatus.COMPLETED);
      assert.equal(done?.progress, 100);
      const history = [];
      for await (const entry of writer.history(flow.flowId, { pageSize: 4 })) history.push(entry);
      assert.deepEqual(history.map((e) => e.flowVersion), Array.from({ length: 11 }, (_, i) => BigInt(i + 1)));
      assert.deepEqual(history.map((e) => e.progressAfter), [0, ...PROGRESS]);
      assert.ok(history.slice(1).every((e) => e.userId === "writer" && e.requestId !== ""));
    });

    it("reports in-phase progress smoothly (0.3 + 0.4 f)", async () => {
      const flowId = await newFlow();
      await move(flowId, "data_import", PhaseState.IN_PROGRESS);
      const { flow } = await writer.updatePhaseProgress({ flowId, phase: "data_import", progress: 0.5 });
      assert.equal(flow?.progress, 10);
      assert.equal(flow?.phases[0]?.progress, 0.5);
    });

    it("lists the caller's flows and serves the definition", async () => {
      const flowId = await newFlow();
      const { flows } = await writer.listFlows({ pageSize: 500 });
      assert.ok(flows.some((f) => f.flowId === flowId));
      const { definition } = await writer.getFlowDefinition({ name: "discovery" });
      assert.deepEqual(definition?.phases.map((p) => [p.name, p.weight]), PHASES.map((name) => [name, 20]));
    });

    it("answers a dry run without changing anything", async () => {
      const flowId = await newFlow();
      const answer = await writer.validateTransition({
        flowId,
        transition: { case: "phaseTransition", value: { phase: "field_mapping", toState: PhaseState.IN_PROGRESS } },
      });
      assert.equal(answer.allowed, false);
      assert.equal(answer.error?.errorCode, ErrorCode.PHASE_ORDER_VIOLATION);
      assert.deepEqual(answer.blockingPhases, ["data_import"]);
      const { flow } = await writer.getFlow({ flowId });
      assert.equal(flow?.version, 1n);
    });
  });

  describe("filters, counts and bulk actions", TIMEOUT, () => {
    it("counts with a filter, retries in bulk, watches the progress and reads the refusals", async () => {
      const run = randomUUID();
      const labels = { run };
      const failed: string[] = [];
      for (const errorCode of [ErrorCode.EXTERNAL_SERVICE_ERROR, ErrorCode.EXTERNAL_SERVICE_ERROR, ErrorCode.DATA_VALIDATION_FAILED]) {
        const { flow } = await writer.createFlow({ definitionName: "discovery", labels });
        assert.ok(flow);
        await move(flow.flowId, "data_import", PhaseState.IN_PROGRESS);
        await writer.transitionPhase({
          flowId: flow.flowId,
          phase: "data_import",
          targetState: PhaseState.FAILED,
          failure: { errorCode, message: "down" },
        });
        failed.push(flow.flowId);
      }
      await writer.createFlow({ definitionName: "discovery", labels });
      const filter = `labels.run = "${run}"`;
      const counted = await writer.countFlows({ filter, groupBy: "status" });
      assert.equal(counted.totalCount, 4n);
      assert.deepEqual(counted.groups.map((g) => [g.key, g.count]), [["FAILED", 3n], ["INITIALIZED", 1n]]);
      const bad = await refusal(writer.countFlows({ filter: "status =" }));
      assert.ok(bad instanceof MalformedRequestError, String(bad));
      assert.equal(bad.details.position, 8);

      const admin = connect(server.adminToken);
      const { bulkAction } = await admin.startBulkAction({
        action: BulkActionType.RETRY,
        filter: `${filter} AND status = FAILED`,
        reason: "ts e2e",
      });
      assert.ok(bulkAction);
      assert.equal(bulkAction.totalCount, 3n);
      let last = bulkAction;
      for await (const update of admin.watchBulkAction(bulkAction.bulkActionId)) last = update;
      assert.equal(last.state, BulkActionState.SUCCEEDED);
      assert.deepEqual([last.appliedCount, last.refusedCount, last.skippedCount], [2n, 1n, 0n]);
      const refused = [];
      for await (const result of admin.bulkActionResults({
        bulkActionId: bulkAction.bulkActionId,
        outcome: BulkFlowOutcome.REFUSED,
      })) {
        refused.push(result);
      }
      assert.deepEqual(refused.map((r) => [r.flowId, r.error?.errorCode]), [[failed[2], ErrorCode.RETRY_NOT_ALLOWED]]);
      const { bulkActions } = await admin.listBulkActions({ pageSize: 50 });
      assert.ok(bulkActions.some((a) => a.bulkActionId === bulkAction.bulkActionId));
      const missing = await refusal(admin.getBulkAction({ bulkActionId: randomUUID() }));
      assert.ok(missing instanceof BulkActionNotFoundError, String(missing));
    });
  });

  describe("typed errors from the real server", TIMEOUT, () => {
    it("INVALID_PHASE_TRANSITION lists the valid transitions", async () => {
      const flowId = await newFlow();
      const err = await refusal(move(flowId, "data_import", PhaseState.COMPLETED));
      assert.ok(err instanceof InvalidPhaseTransitionError, String(err));
      assert.equal(err.code, "INVALID_PHASE_TRANSITION");
      assert.equal(err.grpcCode, Code.FailedPrecondition);
      assert.deepEqual(err.validTransitions, [PhaseState.IN_PROGRESS]);
      assert.equal(err.phase, "data_import");
      assert.equal(err.retryAllowed, false);
      assert.ok(err.correlationId, "a correlation id");
      assert.ok(err.flowError, "the FlowError detail is decoded");
    });

    it("PHASE_ORDER_VIOLATION names the blocking phases", async () => {
      const flowId = await newFlow();
      const err = await refusal(move(flowId, "field_mapping", PhaseState.IN_PROGRESS));
      assert.ok(err instanceof PhaseOrderViolationError, String(err));
      assert.deepEqual(err.blockingPhases, ["data_import"]);
    });

    it("VERSION_CONFLICT carries the current version", async () => {
      const flowId = await newFlow();
      await move(flowId, "data_import", PhaseState.IN_PROGRESS);
      const err = await refusal(
        writer.transitionPhase({ flowId, phase: "data_import", targetState: PhaseState.COMPLETED, expectedVersion: 1n }),
      );
      assert.ok(err instanceof VersionConflictError, String(err));
      assert.equal(err.grpcCode, Code.Aborted);
      assert.equal(err.currentVersion, 2n);
    });

    it("FLOW_NOT_FOUND for another tenant's flow, for reads and writes alike", async () => {
      const flowId = await newFlow();
      const intruder = connect(server.otherTenantToken);
      const read = await refusal(intruder.getFlow({ flowId }));
      assert.ok(read instanceof FlowNotFoundError, String(read));
      assert.equal(read.grpcCode, Code.NotFound);
      const write = await refusal(move(flowId, "data_import", PhaseState.IN_PROGRESS, intruder));
      assert.ok(write instanceof FlowNotFoundError, String(write));
      const { flows } = await intruder.listFlows({ pageSize: 500 });
      assert.ok(!flows.some((f) => f.flowId === flowId));
    });

    it("UNAUTHENTICATED without a token or with a forged one", async () => {
      const anonymous = await refusal(connect("").getFlowDefinition({ name: "discovery" }));
      assert.ok(anonymous instanceof UnauthenticatedError, String(anonymous));
      assert.equal(anonymous.code, "UNAUTHENTICATED");
      const forged = `${server.token.slice(0, -4)}AAAA`;
      const bad = await refusal(connect(forged).getFlowDefinition({ name: "discovery" }));
      assert.ok(bad instanceof UnauthenticatedError, String(bad));
    });

    it("PERMISSION_DENIED for a read-only token that writes; it may still read", async () => {
      const flowId = await newFlow();
      const reader = connect(server.readonlyToken);
      const err = await refusal(reader.createFlow());
      assert.ok(err instanceof PermissionDeniedError, String(err));
      assert.equal(err.code, "PERMISSION_DENIED");
      const mutation = await refusal(move(flowId, "data_import", PhaseState.IN_PROGRESS, reader));
      assert.ok(mutation instanceof PermissionDeniedError, String(mutation));
      const { flow } = await reader.getFlow({ flowId });
      assert.equal(flow?.flowId, flowId);
    });

    it("INVALID_PHASE and MALFORMED_REQUEST (with the field)", async () => {
      const flowId = await newFlow();
      const phase = await refusal(move(flowId, "no_such_phase", PhaseState.IN_PROGRESS));
      assert.ok(phase instanceof InvalidPhaseError, String(phase));
      assert.equal(phase.grpcCode, Code.InvalidArgument);
      const malformed = await refusal(writer.getFlow({ flowId: "not-a-uuid" }));
      assert.ok(malformed instanceof MalformedRequestError, String(malformed));
      assert.deepEqual(malformed.fieldViolations.map((v) => v.field), ["flow_id"]);
    });

    it("FLOW_PAUSED, then FLOW_TERMINAL after cancel", async () => {
      const flowId = await newFlow();
      const paused = await writer.pauseFlow({ flowId, reason: "maintenance" });
      assert.equal(paused.flow?.status, FlowStatus.PAUSED);
      const err = await refusal(move(flowId, "data_import", PhaseState.IN_PROGRESS));
      assert.ok(err instanceof FlowPausedError, String(err));
      const resumed = await writer.resumeFlow({ flowId });
      assert.equal(resumed.flow?.status, FlowStatus.INITIALIZED);
      const cancelled = await writer.cancelFlow({ flowId, reason: "done" });
      assert.equal(cancelled.flow?.status, FlowStatus.CANCELLED);
      const terminal = await refusal(move(flowId, "data_import", PhaseState.IN_PROGRESS));
      assert.ok(terminal instanceof FlowTerminalError, String(terminal));
    });

    it("DEPENDENT_PHASES_ACTIVE for a rollback without cascade; cascade rolls dependents back", async () => {
      const flowId = await newFlow();
      await move(flowId, "data_import", PhaseState.IN_PROGRESS);
      await move(flowId, "data_import", PhaseState.COMPLETED);
      await move(flowId, "field_mapping", PhaseState.IN_PROGRESS);
      const err = await refusal(writer.rollback({ flowId, phase: "data_import", cascade: false }));
      assert.ok(err instanceof DependentPhasesActiveError, String(err));
      assert.deepEqual(err.dependentPhases, ["field_mapping"]);
      const rolled = await writer.rollback({ flowId, phase: "data_import", reason: "bad import" });
      assert.deepEqual(rolled.flow?.phases.slice(0, 2).map((p) => p.state), [PhaseState.ROLLED_BACK, PhaseState.ROLLED_BACK]);
      assert.deepEqual(rolled.historyEntries.map((e) => e.kind), [HistoryEventKind.ROLLBACK, HistoryEventKind.CASCADE_ROLLBACK]);
    });

    it("MAX_RETRIES_EXCEEDED after the phase's retries; RETRY_NOT_ALLOWED unless an admin forces it", async () => {
      const flowId = await newFlow();
      await move(flowId, "data_import", PhaseState.IN_PROGRESS);
      const fail = (errorCode: ErrorCode) =>
        writer.transitionPhase({
          flowId,
          phase: "data_import",
          targetState: PhaseState.FAILED,
          failure: { errorCode, message: "boom", details: { attempt: 1 } },
        });
      await fail(ErrorCode.PHASE_EXECUTION_FAILED);
      for (let attempt = 1; attempt <= 3; attempt += 1) {
        await writer.retry({ flowId, phase: "data_import" }); // FAILED -> RETRY_NEEDED
        const { flow } = await writer.retry({ flowId, phase: "data_import" }); // -> IN_PROGRESS
        assert.equal(flow?.phases[0]?.retryCount, attempt);
        await fail(ErrorCode.PHASE_EXECUTION_FAILED);
      }
      // Every retry step is gated, FAILED -> RETRY_NEEDED too: refused, and refused again.
      for (let refusedTwice = 0; refusedTwice < 2; refusedTwice += 1) {
        const exhausted = await refusal(writer.retry({ flowId, phase: "data_import" }));
        assert.ok(exhausted instanceof MaxRetriesExceededError, String(exhausted));
        assert.equal(exhausted.attemptsRemaining, 0);
      }
      const { flow: still } = await writer.getFlow({ flowId });
      assert.equal(still?.phases[0]?.state, PhaseState.FAILED);
      assert.equal(still?.phases[0]?.retryCount, 3);

      const other = await newFlow();
      await move(other, "data_import", PhaseState.IN_PROGRESS);
      await writer.transitionPhase({
        flowId: other,
        phase: "data_import",
        targetState: PhaseState.FAILED,
        failure: { errorCode: ErrorCode.DATA_VALIDATION_FAILED, message: "bad rows" },
      });
      const refused = await refusal(writer.retry({ flowId: other, phase: "data_import" }));
      assert.ok(refused instanceof RetryNotAllowedError, String(refused));
      const notAdmin = await refusal(writer.retry({ flowId: other, phase: "data_import", force: true }));
      assert.ok(notAdmin instanceof PermissionDeniedError, String(notAdmin));
      const forced = await connect(server.adminToken).retry({ flowId: other, phase: "data_import", force: true });
      assert.equal(forced.flow?.phases[0]?.state, PhaseState.RETRY_NEEDED);
    });
  });

  describe("recovery options", TIMEOUT, () => {
    it("GetRecoveryOptions lists the options, and executeRecovery of the rollback option rolls back", async () => {
      const flowId = await newFlow();
      await move(flowId, "data_import", PhaseState.IN_PROGRESS);
      await move(flowId, "data_import", PhaseState.COMPLETED);
      await move(flowId, "field_mapping", PhaseState.IN_PROGRESS);
      await writer.transitionPhase({
        flowId,
        phase: "field_mapping",
        targetState: PhaseState.FAILED,
        failure: { errorCode: ErrorCode.DATA_VALIDATION_FAILED, message: "bad rows" },
      });
      const { flow, options } = await writer.getRecoveryOptions({ flowId });
      assert.equal(flow?.version, 5n);
      // The core's ranking (tests/core/test_recovery_golden.py); force_retry is offered as an
      // admin would send it.
      assert.deepEqual(
        options.map((o) => [o.action, o.phase, o.allowed, o.blockedBy, o.targetStatus]),
        [
          [RecoveryAction.FORCE_RETRY, "field_mapping", true, ErrorCode.UNSPECIFIED, FlowStatus.RETRY_PENDING],
          [RecoveryAction.ROLLBACK, "field_mapping", true, ErrorCode.UNSPECIFIED, FlowStatus.DISCOVERY],
          [RecoveryAction.ROLLBACK, "data_import", true, ErrorCode.UNSPECIFIED, FlowStatus.DISCOVERY],
          [RecoveryAction.CANCEL, "", true, ErrorCode.UNSPECIFIED, FlowStatus.CANCELLED],
          [RecoveryAction.RETRY, "field_mapping", false, ErrorCode.RETRY_NOT_ALLOWED, FlowStatus.UNSPECIFIED],
        ],
      );
      const rollback = options[1];
      assert.ok(rollback && rollback.request.case === "rollback", String(rollback?.request.case));
      assert.equal(rollback.request.value.flowId, flowId);
      assert.equal(rollback.request.value.phase, "field_mapping");
      // An option that is not allowed is sent all the same: the server refuses it with its blockedBy.
      const notAllowed = await refusal(writer.executeRecovery(options[4]!));
      assert.ok(notAllowed instanceof RetryNotAllowedError, String(notAllowed));
      await assert.rejects(writer.executeRecovery({ ...rollback, request: { case: undefined } }), TypeError);
      const done = await writer.executeRecovery(rollback);
      assert.equal(rollback.request.value.requestId, "", "executeRecovery modified the option");
      assert.deepEqual(
        done.flow?.phases.slice(0, 2).map((p) => p.state),
        [PhaseState.COMPLETED, PhaseState.ROLLED_BACK],
      );
      assert.equal(done.flow?.status, rollback.targetStatus);
      assert.deepEqual(done.historyEntries.map((e) => e.kind), [HistoryEventKind.ROLLBACK]);
      const after = await writer.getRecoveryOptions({ flowId });
      assert.equal(after.options[0]?.action, RecoveryAction.RESTART);
    });
  });

  describe("definitions: a diamond with parallel branches and an optional phase", TIMEOUT, () => {
    // a -> b, a -> c (optional), b + c -> d. The admin token has definitions:write.
    const diamond = {
      name: "ts_diamond",
      phases: [
        { name: "a", weight: 25, statusGroup: FlowStatus.DATA_GATHERING },
        { name: "b", dependsOn: ["a"], weight: 25, statusGroup: FlowStatus.DISCOVERY },
        { name: "c", dependsOn: ["a"], weight: 25, optional: true },
        { name: "d", dependsOn: ["b", "c"], weight: 25, statusGroup: FlowStatus.PLANNING },
      ],
    };

    it("registers, runs b and c in parallel, skips c, and reads progress and status", async () => {
      const admin = connect(server.adminToken);
      const first = await admin.createFlowDefinition({ definition: diamond });
      const again = await admin.createFlowDefinition({ definition: diamond });
      assert.equal(first.definition?.version, again.definition?.version);
      assert.equal(again.created, false);
      assert.equal(first.definition?.phases[2]?.optional, true);
      const names: string[] = [];
      for await (const definition of writer.definitions({ pageSize: 1 })) names.push(definition.name);
      assert.ok(names.includes("ts_diamond") && names.includes("discovery"), names.join(","));

      const { flow } = await writer.createFlow({ definitionName: "ts_diamond" });
      const flowId = flow!.flowId;
      const move = (phase: string, targetState: PhaseState) => writer.transitionPhase({ flowId, phase, targetState });
      await move("a", PhaseState.IN_PROGRESS);
      const a = await move("a", PhaseState.COMPLETED);
      assert.deepEqual([a.flow?.status, a.flow?.progress], [FlowStatus.DATA_GATHERING, 25]);
      await move("b", PhaseState.IN_PROGRESS);
      const both = await move("c", PhaseState.IN_PROGRESS);
      assert.deepEqual(
        both.flow?.phases.slice(1, 3).map((p) => p.state),
        [PhaseState.IN_PROGRESS, PhaseState.IN_PROGRESS],
      );
      assert.deepEqual([both.flow?.status, both.flow?.progress], [FlowStatus.ACTIVE, 40]);
      const blocked = await refusal(move("d", PhaseState.IN_PROGRESS));
      assert.ok(blocked instanceof PhaseOrderViolationError, String(blocked));
      assert.deepEqual(blocked.blockingPhases, ["b", "c"]);
      await writer.transitionPhase({
        flowId,
        phase: "c",
        targetState: PhaseState.FAILED,
        failure: { errorCode: ErrorCode.AGENT_TIMEOUT, message: "slow" },
      });
      const notOptional = await refusal(writer.skipPhase({ flowId, phase: "b" }));
      assert.ok(notOptional instanceof InvalidPhaseTransitionError, String(notOptional));
      // The failed optional phase's recovery options offer the skip, executed as offered.
      const { options } = await writer.getRecoveryOptions({ flowId });
      const skip = options.find((o) => o.action === RecoveryAction.SKIP && o.phase === "c");
      assert.ok(skip, String(options.map((o) => o.action)));
      const skipped = await writer.executeRecovery(skip);
      assert.equal(skipped.flow?.phases[2]?.state, PhaseState.SKIPPED);
      assert.deepEqual(skipped.historyEntries.map((e) => e.kind), [HistoryEventKind.SKIP]);
      assert.equal(skipped.flow?.progress, 57.5);
      await move("b", PhaseState.COMPLETED);
      await move("d", PhaseState.IN_PROGRESS);
      const done = await move("d", PhaseState.COMPLETED);
      assert.deepEqual([done.flow?.status, done.flow?.progress], [FlowStatus.COMPLETED, 100]);
    });

    it("refuses a definition with every problem, another tenant never sees it, shadowing is explicit", async () => {
      const admin = connect(server.adminToken);
      const broken = await refusal(
        admin.createFlowDefinition({ definition: { ...diamond, phases: diamond.phases.slice(0, 3) } }),
      );
      assert.ok(broken instanceof MalformedRequestError, String(broken));
      const shadow = await refusal(admin.createFlowDefinition({ definition: { ...diamond, name: "discovery" } }));
      assert.ok(shadow instanceof DefinitionShadowsBuiltinError, String(shadow));
      await admin.createFlowDefinition({ definition: diamond });
      const hidden = await refusal(connect(server.otherTenantToken).getFlowDefinition({ name: "ts_diamond" }));
      assert.ok(hidden instanceof DefinitionNotFoundError, String(hidden));
      const denied = await refusal(writer.createFlowDefinition({ definition: { ...diamond, name: "ts_other" } }));
      assert.ok(denied instanceof PermissionDeniedError, String(denied));
    });
  });

  describe("webhooks", TIMEOUT, () => {
    it("creates, lists, replays and deletes a webhook; refuses a private target", async () => {
      const admin = connect(server.adminToken); // flows:admin implies webhooks:admin
      const refused = await refusal(admin.createWebhook({ url: "https://169.254.169.254/latest" }));
      assert.ok(refused instanceof MalformedRequestError, String(refused));
      // A public address literal (no DNS lookup); nothing is delivered without flow changes.
      const badFilter = await refusal(admin.createWebhook({ url: "https://93.184.216.34/ts-hook", filter: "status = NOPE" }));
      assert.ok(badFilter instanceof MalformedRequestError, String(badFilter));
      assert.equal(badFilter.details["position"], 9);
      const filter = 'labels.team = "core" AND phase.data_import = COMPLETED';
      const created = await admin.createWebhook({ url: "https://93.184.216.34/ts-hook", statuses: [FlowStatus.COMPLETED], filter });
      assert.match(created.secret, /^whsec_/);
      assert.equal(created.webhook?.filter, filter);
      const id = created.webhook?.webhookId ?? "";
      const listed = await admin.listWebhooks();
      assert.ok(listed.webhooks.some((w) => w.webhookId === id));
      const replayed = await admin.replayWebhook({ webhookId: id });
      assert.equal(replayed.webhook?.state, WebhookState.ACTIVE);
      await admin.deleteWebhook({ webhookId: id });
      const gone = await refusal(admin.deleteWebhook({ webhookId: id }));
      assert.ok(gone instanceof WebhookNotFoundError, String(gone));
    });
  });

  describe("retention policy (docs/retention.md)", TIMEOUT, () => {
    it("sets, reads and clears the tenant's policy with retention:admin; flows:admin is not enough", async () => {
      const retention = connect(server.retentionToken);
      const stored = await retention.setRetentionPolicy({ retainDays: 90 });
      assert.equal(stored.policy?.retainDays, 90);
      assert.equal(stored.policy?.updatedBy, "retention-admin");
      assert.ok(stored.policy?.updateTime, "update time set");
      const read = await retention.getRetentionPolicy();
      assert.equal(read.policy?.retainDays, 90);
      assert.deepEqual(read.policy?.updateTime, stored.policy?.updateTime);
      for (const retainDays of [-1, 36501]) {
        const bad = await refusal(retention.setRetentionPolicy({ retainDays }));
        assert.ok(bad instanceof MalformedRequestError, String(bad));
        assert.deepEqual(bad.fieldViolations.map((v) => v.field), ["retain_days"]);
      }
      assert.equal((await retention.getRetentionPolicy()).policy?.retainDays, 90); // unchanged
      const admin = connect(server.adminToken);
      const denied = await refusal(admin.setRetentionPolicy({ retainDays: 1 }));
      assert.ok(denied instanceof PermissionDeniedError, String(denied));
      assert.ok((await refusal(admin.getRetentionPolicy())) instanceof PermissionDeniedError);
      const cleared = await retention.setRetentionPolicy({ retainDays: 0 });
      assert.equal(cleared.policy?.retainDays, 0);
      assert.equal(cleared.policy?.updateTime, undefined);
      assert.equal((await retention.getRetentionPolicy()).policy?.retainDays, 0);
    });
  });

  describe("child flows (docs/child_flows.md)", TIMEOUT, () => {
    const child = { name: "ts_child", phases: [{ name: "work", weight: 100 }] };
    const master = {
      name: "ts_master",
      phases: ["left", "right"].map((name) => ({
        name,
        weight: 50,
        kind: PhaseKind.CHILD_FLOW,
        childFlow: { definitionName: "ts_child", onParentCancel: ParentCancelPolicy.CASCADE },
      })),
    };

    it("creates and links children, reads the tree, and the parent follows them", async () => {
      const admin = connect(server.adminToken);
      await admin.createFlowDefinition({ definition: child });
      await admin.createFlowDefinition({ definition: master });
      const parentId = (await writer.createFlow({ definitionName: "ts_master" })).flow!.flowId;
      const started = await writer.transitionPhase({ flowId: parentId, phase: "left", targetState: PhaseState.IN_PROGRESS });
      const created = started.flow!.phases[0]!.childFlowId;
      assert.ok(created);
      const existing = (await writer.createFlow({ definitionName: "ts_child" })).flow!.flowId;
      const linked = await writer.linkChildFlow({ flowId: parentId, phase: "right", childFlowId: existing });
      assert.equal(linked.flow?.phases[1]?.childFlowId, existing);
      const worker = await refusal(writer.updatePhaseProgress({ flowId: parentId, phase: "left", progress: 0.5 }));
      assert.ok(worker instanceof PhaseFollowsChildFlowError, String(worker));
      const again = await refusal(writer.linkChildFlow({ flowId: parentId, phase: "right", childFlowId: existing }));
      assert.ok(again instanceof ChildFlowNotLinkableError, String(again));

      const tree = await writer.getFlow({ flowId: parentId, childrenDepth: 2 });
      assert.deepEqual(tree.descendants.map((f) => f.flowId).sort(), [created, existing].sort());
      assert.ok(tree.descendants.every((f) => f.parentFlowId === parentId));
      const listed = await writer.listFlows({ parentFlowId: parentId });
      assert.equal(listed.flows.length, 2);

      for (const flowId of [created, existing]) {
        await writer.transitionPhase({ flowId, phase: "work", targetState: PhaseState.IN_PROGRESS });
        await writer.transitionPhase({ flowId, phase: "work", targetState: PhaseState.COMPLETED });
      }
      const done = await writer.getFlow({ flowId: parentId });
      assert.equal(done.flow?.status, FlowStatus.COMPLETED);
    });

    it("watches a tree with its dependencies, resumes by cursor, and reads it with getFlowTree", async () => {
      const admin = connect(server.adminToken);
      await admin.createFlowDefinition({ definition: child });
      await admin.createFlowDefinition({ definition: master });
      const upstream = (await writer.createFlow({ definitionName: "ts_child" })).flow!.flowId;
      const parentId = (
        await writer.createFlow({
          definitionName: "ts_master",
          externalDependencies: [{ phase: "right", flowId: upstream, flowPhase: "work" }],
        })
      ).flow!.flowId;
      const stream = writer.watchTree(parentId, { includeDependencies: true });
      const own = (await stream.next()).value!;
      const dependency = (await stream.next()).value!;
      assert.equal(own.event?.flowId, parentId);
      assert.equal(own.relation, WatchRelation.SELF);
      assert.equal(own.event?.kind.case, "snapshot");
      assert.equal(dependency.relation, WatchRelation.DEPENDENCY);
      assert.equal(dependency.event?.flowId, upstream);
      assert.deepEqual(
        dependency.waiting.map((w) => [w.flowId, w.phase, w.flowPhase]),
        [[parentId, "right", "work"]],
      );
      assert.ok(dependency.cursor);

      const started = await writer.transitionPhase({ flowId: parentId, phase: "left", targetState: PhaseState.IN_PROGRESS });
      const childId = started.flow!.phases[0]!.childFlowId;
      const seen = [(await stream.next()).value!, (await stream.next()).value!]; // one transaction
      const childEvent = seen.find((r) => r.event?.flowId === childId)!;
      assert.equal(childEvent.relation, WatchRelation.DESCENDANT);
      assert.equal(childEvent.parentFlowId, parentId);
      const cursor = seen[1]!.cursor;
      await stream.return(undefined);

      await writer.transitionPhase({ flowId: childId, phase: "work", targetState: PhaseState.IN_PROGRESS }); // unwatched
      await writer.transitionPhase({ flowId: upstream, phase: "work", targetState: PhaseState.IN_PROGRESS });
      const resumed = writer.watchTree(parentId, { includeDependencies: true, cursor });
      const rest = [(await resumed.next()).value!, (await resumed.next()).value!, (await resumed.next()).value!];
      assert.deepEqual(
        rest.map((r) => `${r.event?.flowId}:${r.relation}`).sort(),
        [`${childId}:${WatchRelation.DESCENDANT}`, `${parentId}:${WatchRelation.SELF}`, `${upstream}:${WatchRelation.DEPENDENCY}`].sort(),
      );
      assert.ok(rest.every((r) => r.event?.kind.case === "change" && r.cursor));
      await resumed.return(undefined);

      const tree = await writer.getFlowTree(parentId, { depth: 1 });
      assert.equal(tree.flow.flowId, parentId);
      assert.deepEqual(tree.children(parentId).map((f) => f.flowId), [childId]);
      assert.equal(tree.truncated, false);
    });
  });

  describe("timers: heartbeats and automatic retries", TIMEOUT, () => {
    const timed = {
      name: "ts_timed",
      phases: [
        {
          name: "work",
          weight: 100,
          maxRetries: 1,
          policy: {
            heartbeatTimeout: { seconds: 30n },
            retryPolicy: {
              initialBackoff: { nanos: 200_000_000 },
              multiplier: 2,
              maxBackoff: { seconds: 1n },
              retryOn: [ErrorCode.EXTERNAL_SERVICE_ERROR],
            },
          },
        },
      ],
    };

    it("heartbeats a running phase, and the server retries a listed failure after its backoff", async () => {
      const admin = connect(server.adminToken);
      await admin.createFlowDefinition({ definition: timed });
      const { flow } = await writer.createFlow({ definitionName: "ts_timed" });
      const flowId = flow!.flowId;
      const idle = await refusal(writer.heartbeat({ flowId, phase: "work" }));
      assert.ok(idle instanceof InvalidPhaseTransitionError, String(idle));
      const started = await writer.transitionPhase({ flowId, phase: "work", targetState: PhaseState.IN_PROGRESS });
      const beat = await writer.heartbeat({ flowId, phase: "work" });
      assert.equal(beat.flowVersion, started.flow?.version);
      assert.ok(beat.heartbeatDeadlineTime);
      const failed = await writer.transitionPhase({
        flowId,
        phase: "work",
        targetState: PhaseState.FAILED,
        failure: { errorCode: ErrorCode.EXTERNAL_SERVICE_ERROR, message: "down" },
      });
      const due = failed.flow?.phases[0]?.nextAttemptTime;
      assert.ok(due);
      assert.deepEqual(failed.historyEntries.at(-1)?.nextAttemptTime, due);
      let state = PhaseState.FAILED;
      for (let i = 0; i < 300 && state !== PhaseState.RETRY_NEEDED; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50)); // bounded polling
        state = (await writer.getFlow({ flowId })).flow?.phases[0]?.state ?? state;
      }
      assert.equal(state, PhaseState.RETRY_NEEDED);
      const entries = [];
      for await (const entry of writer.history(flowId)) entries.push(entry);
      assert.equal(entries.at(-1)?.userId, "system:timer");
    });
  });

  describe("approvals and alerts", TIMEOUT, () => {
    it("decidePhase needs flows:approve and records the approver; a passed deadline's alert reaches watch()", async () => {
      // The harness server scans for alerts every 200 ms (scripts/with_test_server.py).
      const { flow } = await writer.createFlow({
        definitionName: "discovery",
        deadline: timestampFromDate(new Date(Date.now() + 300)),
      });
      assert.ok(flow?.deadline);
      const flowId = flow.flowId;
      await move(flowId, "data_import", PhaseState.IN_PROGRESS);
      await move(flowId, "data_import", PhaseState.WAITING_APPROVAL);
      const denied = await refusal(
        writer.decidePhase({ flowId, phase: "data_import", decision: ApprovalDecision.APPROVE }),
      );
      assert.ok(denied instanceof PermissionDeniedError, String(denied));
      const approver = connect(server.adminToken);
      const decided = await approver.decidePhase({
        flowId,
        phase: "data_import",
        decision: ApprovalDecision.REQUEST_CHANGES,
        comment: "redo the import",
      });
      const phase = decided.flow?.phases[0];
      assert.equal(phase?.state, PhaseState.IN_PROGRESS);
      assert.equal(phase?.approval?.decision, ApprovalDecision.REQUEST_CHANGES);
      assert.equal(phase?.approval?.approver, "admin");
      assert.equal(phase?.approval?.comment, "redo the import");
      assert.deepEqual(decided.historyEntries.map((e) => e.kind), [HistoryEventKind.DECISION]);

      let alert: FlowEvent | undefined;
      for await (const event of writer.watch(flowId, { afterVersion: 1n, keepOpen: true })) {
        if (event.kind.case === "alert") {
          alert = event;
          break;
        }
      }
      assert.equal(alert?.kind.case, "alert");
      assert.equal(alert?.kind.value.kind, AlertKind.DEADLINE_EXCEEDED);
      const alerting = await writer.listFlows({ alerting: true });
      assert.ok(alerting.flows.some((f) => f.flowId === flowId && f.alerts.length === 1));
    });
  });

  describe("retry safety", TIMEOUT, () => {
    it("the same request id twice applies once and returns the first response", async () => {
      const flowId = await newFlow();
      const request = { flowId, phase: "data_import", targetState: PhaseState.IN_PROGRESS, requestId: `ts-${Date.now()}` };
      const first = await writer.transitionPhase(request);
      const second = await writer.transitionPhase(request);
      assert.equal(first.flow?.version, 2n);
      assert.equal(second.flow?.version, 2n);
      assert.deepEqual(
        second.historyEntries.map((e) => e.flowVersion),
        first.historyEntries.map((e) => e.flowVersion),
      );
      const { historyEntries } = await writer.listFlowHistory({ flowId });
      assert.equal(historyEntries.filter((e) => e.requestId === request.requestId).length, 1);
      assert.equal(historyEntries.length, 2);

      const reused = await refusal(writer.transitionPhase({ ...request, targetState: PhaseState.COMPLETED }));
      assert.ok(reused instanceof RequestIdReusedError, String(reused));
    });

    it("a response lost in transit is retried with the same request id and applied once", async () => {
      const flowId = await newFlow();
      const sent: string[] = [];
      const loseFirstResponse: Interceptor = (next) => async (req) => {
        const response = await next(req);
        if (req.method.name === "TransitionPhase") {
          if (!req.stream) sent.push((req.message as unknown as { requestId: string }).requestId);
          if (sent.length === 1) throw new ConnectError("response lost in transit", Code.Unavailable);
        }
        return response;
      };
      const flaky = connect(server.token, { interceptors: [loseFirstResponse] });
      const { flow, historyEntries } = await flaky.transitionPhase({ flowId, phase: "data_import", targetState: PhaseState.IN_PROGRESS });
      assert.equal(sent.length, 2);
      assert.equal(sent[0], sent[1]);
      assert.equal(flow?.version, 2n);
      assert.equal(historyEntries[0]?.requestId, sent[0]);
      const history = await writer.listFlowHistory({ flowId });
      assert.equal(history.historyEntries.length, 2, "created + one transition, not two");
    });
  });

  describe("retries across a server outage", RESTART_TIMEOUT, () => {
    it(
      "a mutation sent while the server is down goes through once it is back, applied once",
      { skip: server.stopCmd && server.startCmd ? false : "the harness has no stop/start commands", timeout: 180_000 },
      async () => {
        const client = connect(server.token, { retry: { maxAttempts: Infinity, initialBackoffMs: 100, maxBackoffMs: 500, deadlineMs: 120_000 } });
        const flowId = await newFlow(client);
        await harness(server.stopCmd);
        let pending: Promise<unknown> | undefined;
        try {
          pending = client.transitionPhase({ flowId, phase: "data_import", targetState: PhaseState.IN_PROGRESS });
          pending.catch(() => undefined); // awaited below
          await new Promise((resolve) => setTimeout(resolve, 1_000)); // a few attempts fail meanwhile
        } finally {
          await harness(server.startCmd);
        }
        const response = (await pending) as Awaited<ReturnType<FlowstateClient["transitionPhase"]>>;
        assert.equal(response.flow?.version, 2n);
        const { historyEntries } = await client.listFlowHistory({ flowId });
        assert.equal(historyEntries.length, 2, "created + one transition");
      },
    );
  });

  describe("watch", TIMEOUT, () => {
    async function watchAll(client: FlowstateClient, flowId: string, options: Parameters<FlowstateClient["watch"]>[1] = {}) {
      const events: FlowEvent[] = [];
      for await (const event of client.watch(flowId, options)) events.push(event);
      return events;
    }

    it("streams the snapshot, then every change, and ends after the terminal event", async () => {
      const flowId = await newFlow();
      const reader = connect(server.readonlyToken);
      const events = reader.watch(flowId);
      const first = await events.next();
      assert.equal(first.value?.kind.case, "snapshot");
      assert.equal(first.value?.flowVersion, 1n);
      const changes = (async () => {
        const rest: FlowEvent[] = [];
        for await (const event of events) rest.push(event);
        return rest;
      })();
      await runToCompletion(flowId);
      const rest = await changes;
      assert.deepEqual(rest.map((e) => e.flowVersion), Array.from({ length: 10 }, (_, i) => BigInt(i + 2)));
      assert.deepEqual(rest.map((e) => e.progress), PROGRESS);
      assert.ok(rest.every((e) => e.kind.case === "change"));
      assert.equal(rest.at(-1)?.status, FlowStatus.COMPLETED);
    });

    it("a watch opened late starts from a snapshot of the current state", async () => {
      const flowId = await newFlow();
      await runToCompletion(flowId);
      const events = await watchAll(writer, flowId);
      assert.deepEqual(events.map((e) => [e.kind.case, e.flowVersion, e.status]), [["snapshot", 11n, FlowStatus.COMPLETED]]);
    });

    it("resumes after a version: replays exactly the later changes", async () => {
      const flowId = await newFlow();
      await runToCompletion(flowId);
      const events = await watchAll(writer, flowId, { afterVersion: 7n });
      assert.deepEqual(events.map((e) => e.flowVersion), [8n, 9n, 10n, 11n]);
      assert.ok(events.every((e) => e.kind.case === "change"));
    });

    it("FLOW_NOT_FOUND for another tenant's flow", async () => {
      const flowId = await newFlow();
      await assert.rejects(watchAll(connect(server.otherTenantToken), flowId), FlowNotFoundError);
    });

    it("keeps watching the tenant's flows with watchFlows", async () => {
      const flowId = await newFlow();
      const controller = new AbortController();
      const seen: bigint[] = [];
      let snapshotted: () => void = () => undefined;
      const subscribed = new Promise<void>((resolve) => {
        snapshotted = resolve;
      });
      const watching = (async () => {
        for await (const { event, cursor } of writer.watchFlows({ flowIds: [flowId], signal: controller.signal })) {
          assert.equal(event.flowId, flowId);
          assert.ok(cursor);
          seen.push(event.flowVersion);
          snapshotted();
          if (event.flowVersion === 3n) return;
        }
      })();
      // The snapshot (version 1) first: a stream that opens after the changes starts from a
      // snapshot of version 3 and sees no change (seen once on a loaded machine).
      await subscribed;
      await move(flowId, "data_import", PhaseState.IN_PROGRESS);
      await move(flowId, "data_import", PhaseState.COMPLETED);
      await watching;
      assert.deepEqual(seen, [1n, 2n, 3n]);
    });

    it("watchFlows with a filter expression delivers exactly the changes that match it", async () => {
      // matching already matches (its snapshot says the stream is live); a matches from its
      // third version on; b's change never matches.
      const [matching, a, b] = [await newFlow(), await newFlow(), await newFlow()];
      await move(matching, "data_import", PhaseState.IN_PROGRESS);
      await move(matching, "data_import", PhaseState.COMPLETED);
      const controller = new AbortController();
      const seen: string[] = [];
      let snapshotted: () => void = () => undefined;
      const subscribed = new Promise<void>((resolve) => {
        snapshotted = resolve;
      });
      const options = { flowIds: [matching, a, b], filter: "phase.data_import = COMPLETED", signal: controller.signal };
      const watching = (async () => {
        for await (const { event } of writer.watchFlows(options)) {
          seen.push(`${event.flowId}@${event.flowVersion}`);
          snapshotted();
          if (event.flowId === a && event.flowVersion === 4n) return;
        }
      })();
      await subscribed;
      await move(b, "data_import", PhaseState.IN_PROGRESS);
      await move(a, "data_import", PhaseState.IN_PROGRESS);
      await move(a, "data_import", PhaseState.COMPLETED);
      await move(a, "field_mapping", PhaseState.IN_PROGRESS);
      await watching;
      assert.deepEqual(seen, [`${matching}@3`, `${a}@3`, `${a}@4`]);
    });

    it("watchFlows with a filter that does not parse rejects with MALFORMED_REQUEST", async () => {
      const events = writer.watchFlows({ filter: "status = NOPE" });
      const bad = await refusal(events.next());
      assert.ok(bad instanceof MalformedRequestError, String(bad));
      assert.deepEqual([bad.details.field, bad.details.position], ["filter", 9]);
    });
  });

  describe("watch across server restarts", RESTART_TIMEOUT, () => {
    // [name, harness command, the first reason to reconnect]
    const variants: Array<[string, string | undefined, string]> = [
      ["a graceful restart (SERVER_SHUTTING_DOWN)", server.restartCmd, "SERVER_SHUTTING_DOWN/UNAVAILABLE"],
      ["a hard restart (SIGKILL: the connection just breaks)", server.hardRestartCmd, "TEMPORARY_RESOURCE_UNAVAILABLE/UNAVAILABLE"],
    ];
    for (const [name, command, firstReason] of variants) {
      it(`resumes after ${name} without missing or repeating a version`, { skip: command ? false : "the harness has no restart command", timeout: 180_000 }, async () => {
        const client = connect(server.token);
        const flowId = await newFlow(client);
        const reconnects: string[] = [];
        const seen: bigint[] = [];
        let reachedThree: () => void = () => undefined;
        const three = new Promise<void>((resolve) => {
          reachedThree = resolve;
        });
        const events = client.watch(flowId, { onReconnect: ({ error }) => reconnects.push(`${error.code}/${error.grpcCodeName}`) });
        const first = await events.next(); // the snapshot, before anything changes
        seen.push(first.value?.flowVersion ?? -1n);
        const watching = (async () => {
          for await (const event of events) {
            seen.push(event.flowVersion);
            if (event.flowVersion === 3n) reachedThree();
          }
        })();
        await move(flowId, "data_import", PhaseState.IN_PROGRESS, client);
        await move(flowId, "data_import", PhaseState.COMPLETED, client);
        await three;
        await harness(command);
        // The server is back; these changes may commit before the watch has reconnected, and
        // must then be replayed from history.
        await runToCompletion(flowId, 1, client);
        await watching;
        assert.deepEqual(seen, Array.from({ length: 11 }, (_, i) => BigInt(i + 1)));
        assert.equal(reconnects[0], firstReason, "why the watch reconnected");
        console.log(`reconnected after ${name}: ${reconnects.join(", ")}`);
      });
    }

    it("watchFlows resumes by its cursor after a hard restart, for every flow of the tenant", { skip: server.hardRestartCmd ? false : "the harness has no restart command", timeout: 180_000 }, async () => {
      const client = connect(server.token);
      const [a, b] = [await newFlow(client), await newFlow(client)];
      const seen = new Map<string, bigint[]>();
      const reconnects: string[] = [];
      let reached: () => void = () => undefined;
      const progressed = new Promise<void>((resolve) => {
        reached = resolve;
      });
      let snapshotted: () => void = () => undefined;
      const subscribed = new Promise<void>((resolve) => {
        snapshotted = resolve;
      });
      const last = (id: string) => seen.get(id)?.at(-1);
      const controller = new AbortController();
      const watching = (async () => {
        const options = { flowIds: [a, b], signal: controller.signal, onReconnect: ({ error }: { error: FlowstateError }) => reconnects.push(error.grpcCodeName) };
        for await (const { event } of client.watchFlows(options)) {
          seen.set(event.flowId, [...(seen.get(event.flowId) ?? []), event.flowVersion]);
          if (seen.has(a) && seen.has(b)) snapshotted();
          if (last(a) === 2n && last(b) === 2n) reached();
          if (last(a) === 11n && last(b) === 3n) return;
        }
      })();
      await subscribed; // both snapshots (version 1) before anything changes
      await move(a, "data_import", PhaseState.IN_PROGRESS, client);
      await move(b, "data_import", PhaseState.IN_PROGRESS, client);
      await progressed;
      await harness(server.hardRestartCmd);
      // Changes right after the restart may commit before the stream is back: replayed.
      await move(b, "data_import", PhaseState.COMPLETED, client);
      await move(a, "data_import", PhaseState.COMPLETED, client);
      await runToCompletion(a, 1, client);
      await watching;
      const versions = (n: number) => Array.from({ length: n }, (_, i) => BigInt(i + 1));
      assert.deepEqual(seen.get(a), versions(11));
      assert.deepEqual(seen.get(b), versions(3));
      assert.ok(reconnects.length >= 1, "the stream reconnected");
    });
  });

  describe("TLS and client certificates (the harness's mTLS server)", TIMEOUT, () => {
    const tls = server.tls;
    if (tls === undefined) {
      it("has an mTLS test server under CI", { skip: !inCI }, () => {
        assert.fail("CI=true but FLOWSTATE_TEST_TLS_ADDRESS is not set: run the harness with --tls");
      });
      return;
    }
    const ca = readFileSync(tls.caFile);
    const cert = readFileSync(tls.clientCertFile);
    const key = readFileSync(tls.clientKeyFile);

    it("creates and reads a flow over TLS, presenting the client certificate", async () => {
      const client = connect(tls.token, { address: tls.address, tls: { ca, cert, key } });
      const { flow } = await client.createFlow({ definitionName: "discovery" });
      assert.ok(flow);
      const read = await client.getFlow({ flowId: flow.flowId });
      assert.equal(read.flow?.version, flow.version);
    });

    // A connection the server ends during the handshake is UNAVAILABLE (retryable); a server
    // certificate the client cannot verify is Connect's INTERNAL, not retried.
    const handshakeFailure =
      (reason: RegExp, grpcCodeName = "UNAVAILABLE") =>
      (error: unknown) => {
        assert.ok(error instanceof FlowstateError, String(error));
        assert.equal(error.grpcCodeName, grpcCodeName, error.message);
        assert.equal(error.retryAllowed, grpcCodeName === "UNAVAILABLE");
        assert.match(error.message, reason);
        return true;
      };

    it("is refused without a client certificate", async () => {
      const client = connect(tls.token, { address: tls.address, tls: { ca }, retry: false });
      await assert.rejects(client.createFlow({ definitionName: "discovery" }), handshakeFailure(/./));
    });

    it("does not trust a server its CA did not sign", async () => {
      // The system roots do not include the harness's throwaway CA.
      const client = connect(tls.token, { address: tls.address, tls: { cert, key }, retry: false });
      await assert.rejects(client.getFlowDefinition({ name: "discovery" }), handshakeFailure(/unable to verify/i, "INTERNAL"));
    });

    it("refuses plaintext to a TLS server", async () => {
      const client = connect(tls.token, { address: tls.address, retry: false });
      await assert.rejects(client.getFlowDefinition({ name: "discovery" }), handshakeFailure(/./));
    });
  });
}
