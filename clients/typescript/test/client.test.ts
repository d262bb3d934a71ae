// Unit tests of the wrapper against an in-process fake server (test/support/fake-server.ts):
// token interceptor, request ids and retries, error decoding, resumable watches. Deterministic
// and fast; the behaviour against the real server is in e2e.test.ts.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, describe, it } from "node:test";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";

import {
  createFlowstateClient,
  FlowEventSchema,
  FlowNotFoundError,
  FlowStatus,
  FlowstateError,
  InternalError,
  InvalidPhaseTransitionError,
  isFlowstateError,
  MalformedRequestError,
  PermissionDeniedError,
  PhaseOrderViolationError,
  PhaseState,
  resolveRetryPolicy,
  RetryState,
  backoffMs,
  ServerShuttingDownError,
  UnauthenticatedError,
  UnavailableError,
  VersionConflictError,
  WatchRelation,
  FailedPreconditionError,
  InvalidPhaseError,
  MaxRetriesExceededError,
  RateLimitedError,
  type FlowEvent,
  type FlowstateClient,
  type FlowstateClientOptions,
  type WatchFlowRequest,
  type WatchFlowsRequest,
  VERSION,
  withEnvironment,
} from "../src/index.js";
import { ERROR_FIXTURES, errorFixture, recordedError, recordedStatusBytes } from "./support/error-fixtures.js";
import { startFakeServer, type FakeServer } from "./support/fake-server.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const FAST_RETRY = { initialBackoffMs: 1, maxBackoffMs: 5, jitter: 0 };

const cleanups: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

function clientFor(server: FakeServer, options: Partial<FlowstateClientOptions> = {}): FlowstateClient {
  const client = createFlowstateClient({ address: server.address, token: "t0k3n", retry: FAST_RETRY, watchRetry: FAST_RETRY, ...options });
  cleanups.push(() => client.close());
  return client;
}

async function serve(impl: Parameters<typeof startFakeServer>[0], port = 0): Promise<FakeServer> {
  const server = await startFakeServer(impl, port);
  cleanups.push(() => server.close());
  return server;
}

function event(flowVersion: number, status = FlowStatus.DATA_GATHERING, kind: "snapshot" | "change" | "heartbeat" = "change"): FlowEvent {
  const version = BigInt(flowVersion);
  const base = { flowId: "f1", flowVersion: kind === "heartbeat" ? 0n : version, status, progress: flowVersion };
  switch (kind) {
    case "snapshot":
      return create(FlowEventSchema, { ...base, kind: { case: "snapshot", value: { flowId: "f1", version, status } } });
    case "heartbeat":
      return create(FlowEventSchema, { ...base, kind: { case: "heartbeat", value: {} } });
    default:
      return create(FlowEventSchema, {
        ...base,
        kind: { case: "change", value: { flowId: "f1", flowVersion: version, statusAfter: status } },
      });
  }
}

async function collect<T>(iterable: AsyncIterable<T>, limit = 100): Promise<T[]> {
  const items: T[] = [];
  for await (const item of iterable) {
    items.push(item);
    if (items.length >= limit) break;
  }
  return items;
}

describe("unary calls", () => {
  it("sends the bearer token from a provider on every attempt", async () => {
    let attempts = 0;
    const server = await serve({
      getFlow() {
        attempts += 1;
        if (attempts < 3) throw recordedError("temporary_resource_unavailable");
        return { flow: { flowId: "f1" } };
      },
    });
    let n = 0;
    const client = clientFor(server, { token: undefined, tokenProvider: async () => `tok-${++n}` });
    const response = await client.getFlow({ flowId: "f1" });
    assert.equal(response.flow?.flowId, "f1");
    assert.deepEqual(
      server.headers.map((h) => h.get("authorization")),
      ["Bearer tok-1", "Bearer tok-2", "Bearer tok-3"],
    );
  });

  it("gives a mutation one request id, reused on every retry", async () => {
    const ids: string[] = [];
    const server = await serve({
      transitionPhase(request) {
        ids.push(request.requestId);
        if (ids.length < 3) throw recordedError("temporary_resource_unavailable");
        return { flow: { flowId: request.flowId, version: 2n } };
      },
      createFlow(request) {
        ids.push(request.requestId);
        return { flow: { flowId: "new" } };
      },
    });
    const client = clientFor(server);
    await client.transitionPhase({ flowId: "f1", phase: "data_import", targetState: PhaseState.IN_PROGRESS });
    assert.equal(ids.length, 3);
    assert.match(ids[0] ?? "", UUID);
    assert.equal(new Set(ids).size, 1, "the same request id on every attempt");

    await client.createFlow();
    await client.createFlow({ requestId: "mine-1" });
    assert.match(ids[3] ?? "", UUID);
    assert.notEqual(ids[3], ids[0], "a new call gets a new id");
    assert.equal(ids[4], "mine-1", "an explicit request id is kept");
  });

  it("retries a RATE_LIMITED refusal after the server's delay, with the same request id", async () => {
    const ids: string[] = [];
    const server = await serve({
      transitionPhase(request) {
        ids.push(request.requestId);
        if (ids.length === 1) {
          throw recordedError("rate_limited");
        }
        return { flow: { flowId: request.flowId, version: 2n } };
      },
    });
    const client = clientFor(server);
    await client.transitionPhase({ flowId: "f1", phase: "data_import", targetState: PhaseState.IN_PROGRESS });
    assert.equal(ids.length, 2);
    assert.equal(new Set(ids).size, 1, "the same request id on both attempts");
  });

  it("does not retry a refusal, and decodes it", async () => {
    let calls = 0;
    const server = await serve({
      transitionPhase() {
        calls += 1;
        throw recordedError("invalid_phase_transition");
      },
    });
    const client = clientFor(server);
    const err = await client
      .transitionPhase({ flowId: "f1", phase: "data_import", targetState: PhaseState.COMPLETED })
      .then(() => assert.fail("expected a refusal"), (e: unknown) => e);
    assert.equal(calls, 1);
    assert.ok(err instanceof InvalidPhaseTransitionError);
    assert.ok(err instanceof FailedPreconditionError);
    assert.ok(err instanceof FlowstateError);
    assert.ok(isFlowstateError(err));
    // What the real server said (tests/fixtures/errors/invalid_phase_transition.json).
    const message = "Cannot transition phase 'data_import' from 'not_started' to 'completed'";
    const details = { phase: "data_import", from_state: "not_started", to_state: "completed", valid_transitions: ["in_progress"] };
    assert.equal(err.code, "INVALID_PHASE_TRANSITION");
    assert.equal(err.grpcCode, Code.FailedPrecondition);
    assert.equal(err.grpcCodeName, "FAILED_PRECONDITION");
    assert.equal(err.message, message);
    assert.deepEqual(err.validTransitions, [PhaseState.IN_PROGRESS]);
    assert.equal(err.phase, "data_import");
    assert.equal(err.correlationId, "fixture-correlation-id");
    assert.equal(err.retryAllowed, false);
    assert.equal(err.retryDelayMs, undefined);
    assert.deepEqual(err.details, details);
    assert.equal(err.name, "InvalidPhaseTransitionError");
    assert.deepEqual(err.toJSON(), {
      code: "INVALID_PHASE_TRANSITION",
      grpcCode: "FAILED_PRECONDITION",
      message,
      details,
      retryAllowed: false,
      correlationId: "fixture-correlation-id",
      phase: "data_import",
    });
  });

  it("gives up after maxAttempts with an UnavailableError", async () => {
    let calls = 0;
    const server = await serve({
      getFlow() {
        calls += 1;
        throw recordedError("temporary_resource_unavailable");
      },
    });
    const client = clientFor(server, { retry: { ...FAST_RETRY, maxAttempts: 4 } });
    await assert.rejects(client.getFlow({ flowId: "f1" }), (err: unknown) => {
      assert.ok(err instanceof UnavailableError);
      assert.equal(err.code, "TEMPORARY_RESOURCE_UNAVAILABLE");
      assert.equal(err.retryAllowed, true);
      assert.equal(err.retryDelayMs, 1_000); // the server's RetryInfo: a second at least
      return true;
    });
    assert.equal(calls, 4);
  });

  it("retries nothing with retry: false, per client or per call", async () => {
    let calls = 0;
    const server = await serve({
      getFlow() {
        calls += 1;
        throw recordedError("temporary_resource_unavailable");
      },
    });
    await assert.rejects(clientFor(server, { retry: false }).getFlow({ flowId: "f1" }), UnavailableError);
    assert.equal(calls, 1);
    await assert.rejects(clientFor(server).getFlow({ flowId: "f1" }, { retry: false }), UnavailableError);
    assert.equal(calls, 2);
  });

  it("reports a refused connection as UNAVAILABLE after retrying", async () => {
    const server = await serve({});
    const address = server.address;
    await server.close();
    const client = createFlowstateClient({ address, retry: { ...FAST_RETRY, maxAttempts: 3 } });
    cleanups.push(() => client.close());
    await assert.rejects(client.getFlow({ flowId: "f1" }), (err: unknown) => {
      assert.ok(err instanceof UnavailableError, String(err));
      assert.equal(err.grpcCode, Code.Unavailable);
      assert.equal(err.code, "TEMPORARY_RESOURCE_UNAVAILABLE");
      assert.equal(err.flowError, undefined);
      return true;
    });
  });

  it("retries a mutation whose connection broke mid-call, with the same request id", async () => {
    const ids: string[] = [];
    const impl = {
      async transitionPhase(request: { requestId: string }, context: HandlerContext) {
        ids.push(request.requestId);
        if (ids.length === 1) {
          // The first attempt hangs until its server is killed under it.
          await new Promise<void>((resolve) => context.signal.addEventListener("abort", () => resolve()));
        }
        return { flow: { flowId: "f1", version: 2n } };
      },
    };
    const first = await serve(impl);
    const port = Number(first.address.split(":")[1]);
    const client = clientFor(first, { retry: { ...FAST_RETRY, initialBackoffMs: 50, maxAttempts: 20 } });
    const pending = client.transitionPhase({ flowId: "f1", phase: "data_import", targetState: PhaseState.IN_PROGRESS });
    for (let i = 0; i < 2_000 && ids.length === 0; i += 1) await new Promise((r) => setTimeout(r, 5));
    assert.equal(ids.length, 1, "the first attempt reached the server");
    await first.kill();
    await serve(impl, port);
    const response = await pending;
    assert.equal(response.flow?.version, 2n);
    assert.equal(ids.length, 2);
    assert.equal(ids[0], ids[1]);
  });

  // A backoff of ten minutes and a 30 s test timeout: the call can only end in time if the
  // abort ends the wait. The abort comes when the server has answered the first attempt.
  it("stops retrying when the caller aborts", { timeout: 30_000 }, async () => {
    const controller = new AbortController();
    let calls = 0;
    const server = await serve({
      getFlow() {
        calls += 1;
        setImmediate(() => controller.abort(new Error("caller gave up")));
        throw recordedError("temporary_resource_unavailable");
      },
    });
    const client = clientFor(server, { retry: { initialBackoffMs: 600_000, maxBackoffMs: 600_000, maxAttempts: 5, deadlineMs: 3_600_000 } });
    await assert.rejects(client.getFlow({ flowId: "f1" }, { signal: controller.signal }), /caller gave up/);
    assert.equal(calls, 1);
  });

  it("an abort surfaces the same way during a call and during the backoff", async () => {
    let calls = 0;
    const server = await serve({
      async getFlow(_request, context) {
        calls += 1;
        if (calls === 1) throw recordedError("temporary_resource_unavailable");
        await new Promise<void>((resolve) => context.signal.addEventListener("abort", () => resolve()));
        return {};
      },
    });
    const client = clientFor(server, { retry: { initialBackoffMs: 60_000, maxBackoffMs: 60_000, deadlineMs: 600_000 } });
    const errors: unknown[] = [];
    for (const phase of ["backoff", "call"]) {
      const controller = new AbortController();
      const pending = client.getFlow({ flowId: "f1" }, { signal: controller.signal }).catch((e: unknown) => e);
      while (calls < (phase === "backoff" ? 1 : 2)) await new Promise((r) => setTimeout(r, 5));
      controller.abort(new Error(`gave up in the ${phase}`));
      errors.push(await pending);
    }
    for (const [i, err] of errors.entries()) {
      assert.ok(err instanceof FlowstateError, String(err));
      assert.equal(err.grpcCode, Code.Canceled, `${i}: ${String(err)}`);
      assert.match(err.message, i === 0 ? /gave up in the backoff/ : /gave up in the call/);
    }
  });

  it("refuses plaintext to a non-loopback host unless allowed", () => {
    assert.throws(() => createFlowstateClient({ address: "flowstate.example.com:443" }), /plaintext/);
    createFlowstateClient({ address: "flowstate.example.com:443", allowInsecure: true }).close();
    createFlowstateClient({ address: "flowstate.example.com:443", tls: true }).close();
    createFlowstateClient({ address: "localhost:50051" }).close();
    createFlowstateClient({ address: "[::1]:50051" }).close();
  });

  it("leaves a call without timeout to the caller; the server's RetryInfo is a minimum", () => {
    const state = new RetryState(resolveRetryPolicy({ maxBackoffMs: 1_000, jitter: 0, deadlineMs: 60_000 }));
    assert.equal(state.attemptTimeoutMs(0), undefined);
    assert.equal(state.attemptTimeoutMs(undefined), undefined);
    assert.ok((state.attemptTimeoutMs(3_600_000) ?? Infinity) <= 60_000);
    state.begin();
    const busy = new UnavailableError({ code: "TEMPORARY_RESOURCE_UNAVAILABLE", grpcCode: Code.Unavailable, message: "busy", retryDelayMs: 7_000 });
    assert.equal(state.nextDelayMs(busy), 7_000);
    const later = new UnavailableError({ code: "TEMPORARY_RESOURCE_UNAVAILABLE", grpcCode: Code.Unavailable, message: "busy", retryDelayMs: 120_000 });
    assert.equal(state.nextDelayMs(later), undefined);
  });

  it("computes exponential backoff with jitter, capped", () => {
    const policy = resolveRetryPolicy({ initialBackoffMs: 100, maxBackoffMs: 1000, multiplier: 2, jitter: 0.5 });
    assert.equal(backoffMs(policy, 1, () => 0.5), 100);
    assert.equal(backoffMs(policy, 3, () => 0.5), 400);
    assert.equal(backoffMs(policy, 10, () => 0.5), 1000);
    assert.equal(backoffMs(policy, 1, () => 0), 50);
    assert.equal(backoffMs(policy, 1, () => 1), 150);
    assert.throws(() => resolveRetryPolicy({ maxAttempts: 0 }), RangeError);
    assert.throws(() => resolveRetryPolicy({ jitter: 2 }), RangeError);
  });
});

describe("error decoding", () => {
  const cases: Array<{
    name: string;
    error: () => Error;
    cls: new (...args: never[]) => FlowstateError;
    check?: (err: FlowstateError) => void;
  }> = [
    {
      name: "PHASE_ORDER_VIOLATION",
      error: () => recordedError("phase_order_violation"),
      cls: PhaseOrderViolationError,
      check: (err) => assert.deepEqual((err as PhaseOrderViolationError).blockingPhases, ["data_import"]),
    },
    {
      name: "VERSION_CONFLICT",
      error: () => recordedError("version_conflict"),
      cls: VersionConflictError,
      check: (err) => assert.equal((err as VersionConflictError).currentVersion, 2n),
    },
    { name: "FLOW_NOT_FOUND", error: () => recordedError("flow_not_found"), cls: FlowNotFoundError },
    {
      name: "UNAUTHENTICATED",
      error: () => recordedError("unauthenticated"),
      cls: UnauthenticatedError,
      check: (err) => assert.equal(err.message, "missing bearer token (authorization: Bearer <token>)"),
    },
    {
      name: "PERMISSION_DENIED",
      error: () => recordedError("permission_denied"),
      cls: PermissionDeniedError,
      check: (err) => assert.deepEqual(err.details, { granted_scopes: ["flows:read"], required_scope: "flows:write" }),
    },
    {
      name: "MALFORMED_REQUEST",
      error: () => recordedError("malformed_request"),
      cls: MalformedRequestError,
      check: (err) =>
        assert.deepEqual(
          err.fieldViolations.map((v) => [v.field, v.description]),
          [["flow_id", "must be a UUID (8-4-4-4-12 hex digits)"]],
        ),
    },
    {
      name: "INVALID_PHASE",
      error: () => recordedError("invalid_phase"),
      cls: InvalidPhaseError,
      check: (err) => assert.equal(err.message, "Unknown phase 'no_such_phase' in flow definition 'discovery'"),
    },
    {
      name: "MAX_RETRIES_EXCEEDED",
      error: () => recordedError("max_retries_exceeded"),
      cls: MaxRetriesExceededError,
      check: (err) => {
        assert.equal((err as MaxRetriesExceededError).attemptsRemaining, 0);
        assert.deepEqual(err.recovery, ["abandon", "cancel"]);
      },
    },
    {
      name: "SERVER_SHUTTING_DOWN",
      error: () => recordedError("server_shutting_down"),
      cls: ServerShuttingDownError,
      check: (err) => {
        assert.equal(err.retryAllowed, true);
        assert.equal(err.retryDelayMs, 1_000); // the server asks for a second before reconnecting
      },
    },
    {
      name: "RATE_LIMITED",
      error: () => recordedError("rate_limited"),
      cls: RateLimitedError,
      check: (err) => {
        assert.equal(err.retryDelayMs, 1_000);
      },
    },
    {
      name: "an unknown reason falls back to the class of the gRPC code",
      error: () => recordedError("unknown_reason"),
      cls: FailedPreconditionError,
      check: (err) => assert.equal(err.message, "Cannot transition phase 'data_import' from 'not_started' to 'completed'"),
    },
    {
      name: "a status without details is classified by its gRPC code",
      error: () => new Error("boom"),
      cls: InternalError,
      check: (err) => {
        assert.equal(err.code, "INTERNAL");
        assert.equal(err.grpcCode, Code.Internal); // what Connect sends for an uncaught exception
      },
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const server = await serve({
        getFlow() {
          throw c.error();
        },
      });
      const err = await clientFor(server, { retry: false })
        .getFlow({ flowId: "f1" })
        .then(() => assert.fail("expected an error"), (e: unknown) => e);
      assert.ok(err instanceof c.cls, `${String(err)} is a ${c.cls.name}`);
      c.check?.(err);
    });
  }

  // The fake replays the recorded errors exactly: the client receives the recorded status bytes.
  for (const name of ERROR_FIXTURES) {
    it(`replays ${name} byte for byte`, async () => {
      const server = await serve({
        getFlow() {
          throw recordedError(name);
        },
      });
      const err = await clientFor(server, { retry: false })
        .getFlow({ flowId: "f1" })
        .then(() => assert.fail("expected an error"), (e: unknown) => e);
      assert.ok(err instanceof FlowstateError && err.cause instanceof ConnectError, String(err));
      const fixture = errorFixture(name);
      assert.equal(err.grpcCode, fixture["grpc-status"]);
      assert.equal(err.cause.rawMessage, fixture["grpc-message"]);
      const received = err.cause.metadata.get("grpc-status-details-bin") ?? "";
      assert.deepEqual(new Uint8Array(Buffer.from(received, "base64")), recordedStatusBytes(name));
      assert.equal(err.cause.metadata.get("x-correlation-id"), fixture.trailers["x-correlation-id"]);
    });
  }
});

describe("watch", () => {
  it("resumes after UNAVAILABLE and SUBSCRIBER_TOO_SLOW from the last version, without duplicates", async () => {
    const requests: WatchFlowRequest[] = [];
    const server = await serve({
      async *watchFlow(request) {
        requests.push(request);
        switch (requests.length) {
          case 1:
            yield { event: event(1, FlowStatus.INITIALIZED, "snapshot") };
            yield { event: event(2) };
            yield { event: event(3) };
            throw recordedError("server_shutting_down");
          case 2:
            yield { event: event(3) }; // replayed again: must not be delivered twice
            yield { event: event(4) };
            throw recordedError("subscriber_too_slow");
          default:
            yield { event: event(0, FlowStatus.DATA_GATHERING, "heartbeat") };
            yield { event: event(5, FlowStatus.COMPLETED) };
            yield { event: event(6, FlowStatus.COMPLETED) }; // never read: the watch ends at the terminal event
        }
      },
    });
    const reconnects: string[] = [];
    const client = clientFor(server);
    const events = await collect(client.watch("f1", { onReconnect: ({ error }) => reconnects.push(error.code) }));
    assert.deepEqual(events.map((e) => e.flowVersion), [1n, 2n, 3n, 4n, 5n]);
    assert.equal(events[0]?.kind.case, "snapshot");
    assert.deepEqual(requests.map((r) => r.afterVersion), [undefined, 3n, 4n]);
    assert.deepEqual(reconnects, ["SERVER_SHUTTING_DOWN", "SUBSCRIBER_TOO_SLOW"]);
  });

  it("starts after afterVersion, passes keepOpen, and delivers heartbeats when asked", async () => {
    const requests: WatchFlowRequest[] = [];
    const server = await serve({
      async *watchFlow(request) {
        requests.push(request);
        yield { event: event(0, FlowStatus.PLANNING, "heartbeat") };
        yield { event: event(8, FlowStatus.COMPLETED) };
        yield { event: event(9, FlowStatus.COMPLETED) };
      },
    });
    const client = clientFor(server);
    const events = await collect(client.watch("f1", { afterVersion: 7, keepOpen: true, includeHeartbeats: true }), 3);
    assert.deepEqual(events.map((e) => [e.kind.case, e.flowVersion]), [["heartbeat", 0n], ["change", 8n], ["change", 9n]]);
    assert.equal(requests[0]?.afterVersion, 7n);
    assert.equal(requests[0]?.keepOpen, true);
  });

  it("throws a refusal that resuming cannot fix", async () => {
    const server = await serve({
      // eslint-disable-next-line require-yield
      async *watchFlow() {
        throw recordedError("flow_not_found");
      },
    });
    await assert.rejects(collect(clientFor(server).watch("f1")), FlowNotFoundError);
  });

  it("resumes across a server that was killed and restarted on the same port", async () => {
    let connections = 0;
    const requests: WatchFlowRequest[] = [];
    const impl = {
      async *watchFlow(request: WatchFlowRequest, context: HandlerContext) {
        requests.push(request);
        connections += 1;
        if (connections === 1) {
          yield { event: event(1, FlowStatus.INITIALIZED, "snapshot") };
          yield { event: event(2) };
          // Hang until the server is killed under us.
          await new Promise<void>((resolve) => context.signal.addEventListener("abort", () => resolve()));
          return;
        }
        yield { event: event(2) };
        yield { event: event(3, FlowStatus.CANCELLED) };
      },
    };
    const first = await serve(impl);
    const port = Number(first.address.split(":")[1]);
    const client = clientFor(first);
    const seen: bigint[] = [];
    let second: FakeServer | undefined;
    for await (const e of client.watch("f1")) {
      seen.push(e.flowVersion);
      if (e.flowVersion === 2n && second === undefined) {
        await first.kill();
        second = await serve(impl, port);
      }
    }
    assert.deepEqual(seen, [1n, 2n, 3n]);
    assert.deepEqual(requests.map((r) => r.afterVersion), [undefined, 2n]);
  });

  it("gives up reconnecting when the policy's deadline runs out", async () => {
    const server = await serve({});
    const address = server.address;
    await server.close();
    const client = createFlowstateClient({ address, watchRetry: { ...FAST_RETRY, deadlineMs: 200 } });
    cleanups.push(() => client.close());
    await assert.rejects(collect(client.watch("f1")), UnavailableError);
  });

  it("stops on abort, and cancels the server's stream when the consumer breaks", async () => {
    let serverSawCancel = false;
    const server = await serve({
      async *watchFlow(_request, context) {
        context.signal.addEventListener("abort", () => {
          serverSawCancel = true;
        });
        yield { event: event(1, FlowStatus.INITIALIZED, "snapshot") };
        await new Promise<void>((resolve) => context.signal.addEventListener("abort", () => resolve()));
      },
    });
    const client = clientFor(server);
    for await (const e of client.watch("f1")) {
      assert.equal(e.flowVersion, 1n);
      break;
    }
    for (let i = 0; i < 50 && !serverSawCancel; i += 1) await new Promise((r) => setTimeout(r, 10));
    assert.ok(serverSawCancel, "breaking out of the loop cancels the stream");

    const controller = new AbortController();
    const iterator = client.watch("f1", { signal: controller.signal });
    assert.equal((await iterator.next()).value?.flowVersion, 1n);
    const pending = iterator.next();
    controller.abort(new Error("done watching"));
    await assert.rejects(pending, /done watching/);
  });
});

describe("settings and interop", () => {
  it("names the SDK and its version (package.json's) in every call", async () => {
    const server = await serve({ getFlow: () => ({ flow: { flowId: "f1" } }) });
    await clientFor(server).getFlow({ flowId: "f1" });
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
    assert.equal(VERSION, pkg.version);
    assert.equal(server.headers[0]?.get("x-flowstate-client"), `typescript/${pkg.version}`);
  });

  it("takes unset settings from the environment; explicit options win", async () => {
    const server = await serve({ getFlow: () => ({ flow: { flowId: "f1" } }) });
    const env = { FLOWSTATE_ADDRESS: server.address, FLOWSTATE_TOKEN: "env-token" };
    const client = createFlowstateClient({ env, retry: false });
    cleanups.push(() => client.close());
    await client.getFlow({ flowId: "f1" });
    assert.equal(server.headers[0]?.get("authorization"), "Bearer env-token");
    const explicit = withEnvironment({ env: { ...env, FLOWSTATE_TLS: "1" }, address: "127.0.0.1:9", token: "mine", tls: false });
    assert.deepEqual([explicit.address, explicit.token, explicit.tls], ["127.0.0.1:9", "mine", false]);
    assert.equal(withEnvironment({ env: { FLOWSTATE_TLS: "true" } }).tls, true);
    assert.equal(withEnvironment({ env: false }).address, undefined);
    assert.throws(() => withEnvironment({ env: { FLOWSTATE_TLS_CA_FILE: "/nonexistent/ca.pem" } }), /FLOWSTATE_TLS_CA_FILE=\/nonexistent\/ca\.pem/);
  });

  it("errors interoperate with Connect and with a duplicate copy of the package", async () => {
    const server = await serve({
      getFlow() {
        throw recordedError("flow_not_found");
      },
    });
    const err = await clientFor(server).getFlow({ flowId: "f1" }).catch((e: unknown) => e);
    assert.ok(err instanceof FlowNotFoundError);
    const connectError = (err as FlowNotFoundError).toConnectError();
    assert.ok(connectError instanceof ConnectError);
    assert.equal(connectError.code, Code.NotFound);
    // A copy of the classes from another installation of the package: same names, same brand.
    const brand: unique symbol = Symbol.for("@flowstate/client/FlowstateError") as never;
    class FlowstateError extends Error {
      readonly [brand] = true;
    }
    class NotFoundError extends FlowstateError {}
    class FlowNotFoundError2 extends NotFoundError {}
    Object.defineProperty(FlowNotFoundError2, "name", { value: "FlowNotFoundError" });
    const foreign = new FlowNotFoundError2("elsewhere");
    assert.ok(foreign instanceof FlowNotFoundError);
    assert.ok(isFlowstateError(foreign));
    assert.ok(!(foreign instanceof PermissionDeniedError));
    assert.ok(!(new Error("plain") instanceof FlowNotFoundError));
  });
});

describe("paging", () => {
  it("flows() fetches pages lazily, as the loop asks for more", async () => {
    const tokens: string[] = [];
    const server = await serve({
      listFlows(request) {
        tokens.push(request.pageToken);
        const page = tokens.length;
        return { flows: [{ flowId: `f${2 * page - 1}` }, { flowId: `f${2 * page}` }], nextPageToken: `p${page + 1}` };
      },
    });
    const seen: string[] = [];
    for await (const flow of clientFor(server).flows({ statuses: [FlowStatus.ACTIVE] })) {
      seen.push(flow.flowId);
      if (seen.length === 3) break;
    }
    assert.deepEqual(seen, ["f1", "f2", "f3"]);
    assert.deepEqual(tokens, ["", "p2"]);
  });
});

describe("close()", () => {
  it("ends an open watch: the for await finishes", async () => {
    const server = await serve({
      async *watchFlow(_request, context) {
        yield { event: event(1, FlowStatus.INITIALIZED, "snapshot") };
        await new Promise<void>((resolve) => context.signal.addEventListener("abort", () => resolve()));
      },
    });
    const client = clientFor(server);
    const seen: bigint[] = [];
    for await (const e of client.watch("f1")) {
      seen.push(e.flowVersion);
      client.close();
    }
    assert.deepEqual(seen, [1n]);
  });

  it("ends a watch that waits to reconnect, and a watchFlows", async () => {
    let opened = 0;
    const server = await serve({
      async *watchFlow() {
        opened += 1;
        yield { event: event(1, FlowStatus.INITIALIZED, "snapshot") };
        throw recordedError("server_shutting_down");
      },
      async *watchFlows(_request, context) {
        yield { event: event(1), cursor: "c1" };
        await new Promise<void>((resolve) => context.signal.addEventListener("abort", () => resolve()));
      },
    });
    const slow = { initialBackoffMs: 60_000, maxBackoffMs: 60_000, jitter: 0, deadlineMs: 600_000 };
    const client = clientFor(server, { watchRetry: slow });
    const flows = client.watchFlows();
    assert.equal((await flows.next()).value?.cursor, "c1");
    const pendingFlows = flows.next();
    const watch = client.watch("f1");
    assert.equal((await watch.next()).value?.flowVersion, 1n);
    const pending = watch.next(); // fails with UNAVAILABLE, then waits 60 s to reconnect
    await new Promise((r) => setTimeout(r, 50));
    client.close();
    assert.deepEqual(await pending, { done: true, value: undefined });
    assert.deepEqual(await pendingFlows, { done: true, value: undefined });
    assert.equal(opened, 1);
    await assert.rejects(client.getFlow({ flowId: "f1" }), (err: unknown) => isFlowstateError(err) && err.grpcCode === Code.Canceled);
  });
});

describe("watchTree", () => {
  it("resumes by cursor, drops repeats per flow, and ends after a clean end past the watched flow's terminal event", async () => {
    const requests: WatchFlowRequest[] = [];
    const server = await serve({
      async *watchFlow(request) {
        requests.push(request);
        const ev = (flowId: string, version: number, cursor: string, status = FlowStatus.DATA_GATHERING) => ({
          event: { ...event(version, status), flowId },
          cursor,
          relation: flowId === "p" ? WatchRelation.SELF : WatchRelation.DESCENDANT,
          parentFlowId: flowId === "p" ? "" : "p",
        });
        if (requests.length === 1) {
          yield ev("p", 1, "");
          yield ev("k", 1, "c1");
          throw recordedError("server_shutting_down");
        }
        yield ev("k", 1, "c1"); // replayed: not delivered twice
        yield ev("p", 2, "c2", FlowStatus.CANCELLED);
        yield ev("k", 2, "c3", FlowStatus.CANCELLED); // the same transaction: still delivered
      },
    });
    const client = clientFor(server);
    const responses = await collect(client.watchTree("p", { childrenDepth: 1 }), 10);
    assert.deepEqual(
      responses.map((r) => `${r.event?.flowId}@${r.event?.flowVersion}:${r.cursor}`),
      ["p@1:", "k@1:c1", "p@2:c2", "k@2:c3"],
    );
    assert.equal(responses[1]?.parentFlowId, "p");
    assert.deepEqual(
      requests.map((r) => [r.childrenDepth, r.cursor, r.afterVersion]),
      [
        [1, "", undefined],
        [1, "c1", undefined],
      ],
    ); // no third request: the clean end after the terminal event is the end
  });
});

describe("watchFlows", () => {
  it("resumes by cursor and drops versions already delivered per flow", async () => {
    const requests: WatchFlowsRequest[] = [];
    const server = await serve({
      async *watchFlows(request) {
        requests.push(request);
        const ev = (flowId: string, version: number) => ({
          event: { ...event(version), flowId },
          cursor: `c-${flowId}-${version}`,
        });
        if (requests.length === 1) {
          yield ev("a", 1);
          yield ev("b", 1);
          throw recordedError("server_shutting_down");
        }
        yield ev("b", 1);
        yield ev("a", 2);
      },
    });
    const client = clientFor(server);
    const events = await collect(client.watchFlows({ definitionName: "discovery" }), 3);
    assert.deepEqual(events.map((e) => `${e.event.flowId}@${e.event.flowVersion}`), ["a@1", "b@1", "a@2"]);
    assert.deepEqual(requests.map((r) => r.cursor), ["", "c-b-1"]);
    assert.equal(requests[0]?.definitionName, "discovery");
  });
});
