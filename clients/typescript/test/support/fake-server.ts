// An in-process gRPC server (Connect's Node adapter, gRPC protocol over h2c on 127.0.0.1) with
// handlers chosen by each test: for deterministic tests of retries, error decoding and watch
// resumption that a real server cannot easily provoke. The end-to-end tests use the real one.
import * as http2 from "node:http2";
import type { AddressInfo, Socket } from "node:net";

import type { JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import { ErrorCode, FlowErrorSchema, FlowStateService, googleRpc, type FlowError } from "../../src/index.js";

export interface FakeServer {
  address: string;
  /** Request headers of every call, in order. */
  headers: Headers[];
  /** Stops accepting and destroys every open connection (like a killed server). */
  kill(): Promise<void>;
  close(): Promise<void>;
}

export async function startFakeServer(
  impl: Partial<ServiceImpl<typeof FlowStateService>>,
  port = 0,
): Promise<FakeServer> {
  const headers: Headers[] = [];
  const handler = connectNodeAdapter({
    grpc: true,
    connect: false,
    grpcWeb: false,
    routes: (router) => router.service(FlowStateService, impl),
    interceptors: [
      (next) => async (req) => {
        headers.push(req.header);
        return next(req);
      },
    ],
  });
  const server = http2.createServer(handler);
  const sockets = new Set<Socket>();
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  const bound = (server.address() as AddressInfo).port;
  const close = (): Promise<void> =>
    new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    });
  return { address: `127.0.0.1:${bound}`, headers, kill: close, close };
}

/** A rich Flowstate refusal, shaped like the real server's (ErrorInfo + FlowError [+ RetryInfo] [+ BadRequest]). */
export function flowstateError(
  grpcCode: Code,
  reason: keyof typeof ErrorCode,
  message: string,
  flowError: Partial<Omit<FlowError, "$typeName" | "errorCode" | "message">> = {},
  options: { retryDelaySeconds?: number; fieldViolations?: { field: string; description: string }[] } = {},
): ConnectError {
  const details = (flowError.details ?? {}) as JsonObject;
  const metadata: Record<string, string> = { correlation_id: flowError.correlationId ?? "corr-1" };
  for (const [key, value] of Object.entries(details)) {
    metadata[key] = Array.isArray(value) ? value.join(",") : typeof value === "string" ? value : JSON.stringify(value);
  }
  const outgoing: ConstructorParameters<typeof ConnectError>[3] = [
    { desc: googleRpc.ErrorInfoSchema, value: { reason, domain: "flowstate.v1", metadata } },
    {
      desc: FlowErrorSchema,
      value: { ...flowError, details, errorCode: ErrorCode[reason], message, correlationId: metadata["correlation_id"] },
    },
  ];
  if (options.retryDelaySeconds !== undefined) {
    outgoing.push({ desc: googleRpc.RetryInfoSchema, value: { retryDelay: { seconds: BigInt(options.retryDelaySeconds) } } });
  }
  if (options.fieldViolations) {
    outgoing.push({ desc: googleRpc.BadRequestSchema, value: { fieldViolations: options.fieldViolations } });
  }
  return new ConnectError(message, grpcCode, { "x-correlation-id": metadata["correlation_id"] ?? "" }, outgoing);
}
