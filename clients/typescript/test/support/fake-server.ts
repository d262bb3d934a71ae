// An in-process gRPC server (Connect's Node adapter, gRPC protocol over h2c on 127.0.0.1) with
// handlers chosen by each test: for deterministic tests of retries, error decoding and watch
// resumption that a real server cannot easily provoke. The end-to-end tests use the real one.
// The errors it answers with are recorded from a real server (./error-fixtures.ts).
import * as http2 from "node:http2";
import type { AddressInfo, Socket } from "node:net";

import type { ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import { FlowStateService } from "../../src/index.js";

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
