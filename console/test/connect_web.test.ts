// The generated TypeScript client over @connectrpc/connect-web's transports (Connect, JSON and
// binary, and gRPC-Web) against a real server's HTTP port: what the console does in a browser,
// here with Node's fetch. Run by tests/web/test_connect_web_ts.py, which starts the server and
// sets FLOWSTATE_HTTP_URL and the tokens.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";

import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";

import {
  FlowErrorSchema,
  FlowStateService,
  FlowStatus,
  PhaseState,
} from "../../clients/typescript/src/gen/flowstate/v1/index.js";
import { ErrorInfoSchema } from "../../clients/typescript/src/gen/google/rpc/error_details_pb.js";

const baseUrl = process.env.FLOWSTATE_HTTP_URL ?? "";
const token = process.env.FLOWSTATE_TEST_TOKEN ?? "";
const readOnly = process.env.FLOWSTATE_TEST_TOKEN_READONLY ?? "";
assert.ok(baseUrl && token && readOnly, "run through tests/web/test_connect_web_ts.py");

const bearer =
  (value: string): Interceptor =>
  (next) =>
  (request) => {
    request.header.set("authorization", `Bearer ${value}`);
    return next(request);
  };

const transports: Record<string, (auth: string) => Transport> = {
  "connect+json": (auth) => createConnectTransport({ baseUrl, interceptors: [bearer(auth)] }),
  "connect+proto": (auth) => createConnectTransport({ baseUrl, useBinaryFormat: true, interceptors: [bearer(auth)] }),
  "grpc-web": (auth) => createGrpcWebTransport({ baseUrl, interceptors: [bearer(auth)] }),
};

for (const [name, transportFor] of Object.entries(transports)) {
  describe(`FlowStateService over ${name}`, () => {
    const client = createClient(FlowStateService, transportFor(token));

    test("unary calls: create, transition, read", async () => {
      const { flow } = await client.createFlow({ requestId: randomUUID(), displayName: name });
      assert.ok(flow);
      assert.equal(flow.status, FlowStatus.INITIALIZED);
      const moved = await client.transitionPhase({
        requestId: randomUUID(),
        flowId: flow.flowId,
        phase: "data_import",
        targetState: PhaseState.IN_PROGRESS,
        expectedVersion: flow.version,
      });
      assert.equal(moved.flow?.progress, 6);
      const { flow: read } = await client.getFlow({ flowId: flow.flowId });
      assert.equal(read?.version, flow.version + 1n);
    });

    test("a refusal carries ErrorInfo and FlowError", async () => {
      const { flow } = await client.createFlow({ requestId: randomUUID() });
      const refused = await client
        .transitionPhase({ requestId: randomUUID(), flowId: flow!.flowId, phase: "data_import", targetState: PhaseState.COMPLETED })
        .then(
          () => assert.fail("expected a refusal"),
          (err: unknown) => ConnectError.from(err),
        );
      assert.equal(refused.code, Code.FailedPrecondition);
      const [info] = refused.findDetails(ErrorInfoSchema);
      assert.equal(info?.reason, "INVALID_PHASE_TRANSITION");
      assert.equal(info?.domain, "flowstate.v1");
      const [error] = refused.findDetails(FlowErrorSchema);
      assert.deepEqual(error?.validTransitions, [PhaseState.IN_PROGRESS]);
    });

    test("scopes are enforced", async () => {
      const reader = createClient(FlowStateService, transportFor(readOnly));
      await reader.listFlows({});
      const denied = await reader.createFlow({ requestId: randomUUID() }).then(
        () => assert.fail("expected PERMISSION_DENIED"),
        (err: unknown) => ConnectError.from(err),
      );
      assert.equal(denied.code, Code.PermissionDenied);
    });

    test("a server stream: WatchFlow to the terminal event", async () => {
      const { flow } = await client.createFlow({ requestId: randomUUID() });
      await client.transitionPhase({ requestId: randomUUID(), flowId: flow!.flowId, phase: "data_import", targetState: PhaseState.IN_PROGRESS });
      await client.cancelFlow({ requestId: randomUUID(), flowId: flow!.flowId, reason: "done" });
      const versions: bigint[] = [];
      let last: FlowStatus | undefined;
      for await (const { event } of client.watchFlow({ flowId: flow!.flowId, afterVersion: 0n })) {
        versions.push(event!.flowVersion);
        last = event!.status;
      }
      assert.deepEqual(versions, [1n, 2n, 3n]); // every change after version 0, in order
      assert.equal(last, FlowStatus.CANCELLED);
    });
  });
}
