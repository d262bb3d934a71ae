// The errors the fake server answers with, recorded from a real server: each file of
// tests/fixtures/errors holds one error's grpc-status, grpc-message, grpc-status-details-bin and
// trailers as a real Flowstate server sent them (tests/server/error_fixtures.py records them;
// tests/server/test_error_fixtures.py fails when the server's errors drift from the files).
// Nothing here builds a detail by hand: the details are the recorded bytes.
import { readFileSync } from "node:fs";

import { fromBinary } from "@bufbuild/protobuf";
import { type Code, ConnectError } from "@connectrpc/connect";

import { googleRpc } from "../../src/index.js";

const FIXTURES = new URL("../../../../tests/fixtures/errors/", import.meta.url);

/** The recorded errors (the file names of tests/fixtures/errors without `.json`). */
export type ErrorFixtureName =
  | "flow_not_found"
  | "invalid_phase"
  | "invalid_phase_transition"
  | "malformed_request"
  | "max_retries_exceeded"
  | "permission_denied"
  | "phase_order_violation"
  | "rate_limited"
  | "server_shutting_down"
  | "subscriber_too_slow"
  | "temporary_resource_unavailable"
  | "unauthenticated"
  | "unknown_reason"
  | "version_conflict";

/** Every recorded error. */
export const ERROR_FIXTURES: readonly ErrorFixtureName[] = [
  "flow_not_found",
  "invalid_phase",
  "invalid_phase_transition",
  "malformed_request",
  "max_retries_exceeded",
  "permission_denied",
  "phase_order_violation",
  "rate_limited",
  "server_shutting_down",
  "subscriber_too_slow",
  "temporary_resource_unavailable",
  "unauthenticated",
  "unknown_reason",
  "version_conflict",
];

/** One fixture file. */
export interface ErrorFixture {
  name: ErrorFixtureName;
  /** How the recorder provoked it. */
  how: string;
  "grpc-status": number;
  "grpc-message": string;
  /** google.rpc.Status, base64. */
  "grpc-status-details-bin": string;
  trailers: Record<string, string>;
}

const cache = new Map<ErrorFixtureName, ErrorFixture>();

/** The fixture file `name`. */
export function errorFixture(name: ErrorFixtureName): ErrorFixture {
  let fixture = cache.get(name);
  if (fixture === undefined) {
    fixture = JSON.parse(readFileSync(new URL(`${name}.json`, FIXTURES), "utf8")) as ErrorFixture;
    cache.set(name, fixture);
  }
  return fixture;
}

/** The recorded status bytes of `name` (what the fake sends as grpc-status-details-bin). */
export function recordedStatusBytes(name: ErrorFixtureName): Uint8Array {
  return new Uint8Array(Buffer.from(errorFixture(name)["grpc-status-details-bin"], "base64"));
}

/**
 * The recorded error `name`, to throw from a fake handler: Connect sends its code and message
 * as grpc-status and grpc-message, its metadata as trailers, and its details (the recorded
 * google.protobuf.Any messages, byte for byte) in a google.rpc.Status as
 * grpc-status-details-bin, which then equals the recorded one.
 */
export function recordedError(name: ErrorFixtureName): ConnectError {
  const fixture = errorFixture(name);
  const status = fromBinary(googleRpc.StatusSchema, recordedStatusBytes(name));
  const error = new ConnectError(fixture["grpc-message"], fixture["grpc-status"] as Code, fixture.trailers);
  error.details = status.details.map((any) => ({ type: any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1), value: any.value }));
  return error;
}
