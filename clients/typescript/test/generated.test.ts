// Tests of the generated TypeScript code (scripts/generate.sh): it imports, a Flow with every
// field set round-trips through the binary and JSON formats, and the service descriptor has every
// RPC of DESIGN.md. Messages are filled generically through the schema, so fields added to the
// protos later are covered without touching this file.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  create,
  createRegistry,
  equals,
  fromBinary,
  fromJson,
  ScalarType,
  toBinary,
  toJson,
  type DescField,
  type DescMessage,
} from "@bufbuild/protobuf";
import { reflect, type ReflectList, type ReflectMap, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import { anyPack, AnySchema, file_google_protobuf_timestamp, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  FlowSchema,
  FlowStateService,
  FlowStatusSchema,
  googleRpc,
  PhaseState,
  PhaseStateSchema,
  file_flowstate_v1_flow_service,
} from "../src/index.js";

// DESIGN.md section 3: the RPCs of FlowStateService; the two Watch RPCs are server streaming.
const RPCS = [
  "CreateFlow",
  "GetFlow",
  "ListFlows",
  "ValidateTransition",
  "TransitionPhase",
  "UpdatePhaseProgress",
  "Rollback",
  "Retry",
  "GetRecoveryOptions",
  "PauseFlow",
  "ResumeFlow",
  "CancelFlow",
  "ListFlowHistory",
  "GetFlowDefinition",
  "CreateFlowDefinition", // section 9
  "ListFlowDefinitions",
  "SkipPhase",
  "WatchFlow",
  "WatchFlows",
  "Heartbeat", // section 10 (timers)
  "CountFlows", // section 12 (search)
  "StartBulkAction", // section 12 (bulk actions)
  "GetBulkAction",
  "ListBulkActions",
  "ListBulkActionResults",
  "CancelBulkAction",
  "WatchBulkAction",
  "CreateWebhook", // section 12 (webhooks)
  "ListWebhooks",
  "DeleteWebhook",
  "TestWebhook",
  "ReplayWebhook",
  "DecidePhase", // section 10 (approvals)
  "GetRetentionPolicy", // section 12 (retention)
  "SetRetentionPolicy",
  "LinkChildFlow", // issue 21 (child flows)
];
const STREAMING_RPCS = ["WatchFlow", "WatchFlows", "WatchBulkAction"];
// DESIGN.md, "Phase states" and "Flow status", in proto order.
const PHASE_STATES = [
  "PHASE_STATE_UNSPECIFIED",
  ...["NOT_STARTED", "IN_PROGRESS", "WAITING_VALIDATION", "WAITING_APPROVAL", "COMPLETED", "FAILED"],
  ...["RETRY_NEEDED", "ROLLED_BACK", "SKIPPED"],
].map((name) => (name.startsWith("PHASE_STATE_") ? name : `PHASE_STATE_${name}`));
const FLOW_STATUSES = [
  "FLOW_STATUS_UNSPECIFIED",
  ...["INITIALIZED", "ACTIVE", "DATA_GATHERING", "DISCOVERY", "ASSESSMENT_READY", "PLANNING"],
  ...["WAITING_APPROVAL", "RETRY_PENDING", "ERROR_RECOVERY", "COMPLETED", "FAILED", "PAUSED", "CANCELLED"],
].map((name) => (name.startsWith("FLOW_STATUS_") ? name : `FLOW_STATUS_${name}`));

/** A non-default value of a scalar type. */
function scalar(type: ScalarType, name: string): unknown {
  switch (type) {
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return 1.5; // exactly representable as a float32 too
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return 7n;
    case ScalarType.BOOL:
      return true;
    case ScalarType.STRING:
      return `${name}-value`;
    case ScalarType.BYTES:
      return new Uint8Array([0, 1, 255]);
    default:
      return 7; // the 32-bit integer types
  }
}

function lastEnumNumber(field: DescField & { enum?: { values: { number: number }[] } }): number {
  const last = field.enum?.values.at(-1);
  assert.ok(last, `enum of ${field.name} has values`);
  return last.number;
}

/** Every field, except that only the first member of each oneof is chosen. */
function fieldsToSet(desc: DescMessage): DescField[] {
  const seen = new Set<string>();
  return desc.fields.filter((field) => {
    if (field.oneof === undefined) return true;
    if (seen.has(field.oneof.name)) return false;
    seen.add(field.oneof.name);
    return true;
  });
}

/**
 * Fill every field (one per oneof) with a non-default value, recursively. Repeated and map fields
 * get one element, enums their last value; a message type already being filled higher up
 * (recursion such as google.protobuf.Struct) is left empty.
 */
function filled(desc: DescMessage, stack: string[] = []): ReflectMessage {
  if (desc.typeName === AnySchema.typeName) {
    return reflect(AnySchema, anyPack(TimestampSchema, create(TimestampSchema, { seconds: 7n, nanos: 7 })));
  }
  const message = reflect(desc);
  const inner = [...stack, desc.typeName];
  const child = (d: DescMessage) => (inner.includes(d.typeName) ? reflect(d) : filled(d, inner));
  for (const field of fieldsToSet(desc)) {
    switch (field.fieldKind) {
      case "scalar":
        message.set(field, scalar(field.scalar, field.name));
        break;
      case "enum":
        message.set(field, lastEnumNumber(field));
        break;
      case "message":
        message.set(field, child(field.message));
        break;
      case "list": {
        const list = message.get(field) as ReflectList;
        if (field.listKind === "message") list.add(child(field.message));
        else if (field.listKind === "enum") list.add(lastEnumNumber(field));
        else list.add(scalar(field.scalar, field.name));
        break;
      }
      case "map": {
        const map = message.get(field) as ReflectMap;
        const key = scalar(field.mapKey, "key");
        if (field.mapKind === "message") map.set(key, child(field.message));
        else if (field.mapKind === "enum") map.set(key, lastEnumNumber(field));
        else map.set(key, scalar(field.scalar, field.name));
        break;
      }
    }
  }
  return message;
}

/** Paths of the fields that filled() should have set but did not. */
function unsetFields(message: ReflectMessage, path: string): string[] {
  if (message.desc.typeName.startsWith("google.protobuf.")) return [];
  const missing: string[] = [];
  for (const field of fieldsToSet(message.desc)) {
    const where = `${path}.${field.name}`;
    if (!message.isSet(field)) {
      missing.push(where);
    } else if (field.fieldKind === "message") {
      missing.push(...unsetFields(message.get(field) as ReflectMessage, where));
    } else if (field.fieldKind === "list" && field.listKind === "message") {
      for (const item of message.get(field) as ReflectList<ReflectMessage>) {
        missing.push(...unsetFields(item, where));
      }
    }
  }
  return missing;
}

const fullFlow = () => filled(FlowSchema).message as ReturnType<typeof create<typeof FlowSchema>>;

describe("generated code", () => {
  it("imports the flowstate.v1 and google.rpc modules", () => {
    assert.equal(file_flowstate_v1_flow_service.proto.package, "flowstate.v1");
    assert.equal(FlowSchema.typeName, "flowstate.v1.Flow");
    assert.equal(googleRpc.ErrorInfoSchema.typeName, "google.rpc.ErrorInfo");
    assert.equal(googleRpc.RetryInfoSchema.typeName, "google.rpc.RetryInfo");
    assert.equal(googleRpc.BadRequestSchema.typeName, "google.rpc.BadRequest");
    assert.equal(googleRpc.StatusSchema.typeName, "google.rpc.Status");
  });

  it("fills every field of a Flow", () => {
    assert.deepEqual(unsetFields(reflect(FlowSchema, fullFlow()), "Flow"), []);
  });

  it("round-trips a Flow with every field set through toBinary/fromBinary", () => {
    const flow = fullFlow();
    const bytes = toBinary(FlowSchema, flow);
    const decoded = fromBinary(FlowSchema, bytes);
    assert.ok(equals(FlowSchema, decoded, flow));
    assert.deepEqual(toBinary(FlowSchema, decoded), bytes);
    assert.deepEqual(unsetFields(reflect(FlowSchema, decoded), "Flow"), []);
  });

  it("round-trips a Flow with every field set through toJson/fromJson", () => {
    const registry = createRegistry(file_google_protobuf_timestamp);
    const flow = fullFlow();
    const decoded = fromJson(FlowSchema, toJson(FlowSchema, flow, { registry }), { registry });
    assert.ok(equals(FlowSchema, decoded, flow));
  });

  it("has the phase states and flow statuses of DESIGN.md", () => {
    assert.deepEqual(
      PhaseStateSchema.values.map((v) => [v.name, v.number]),
      PHASE_STATES.map((name, i) => [name, i]),
    );
    assert.deepEqual(
      FlowStatusSchema.values.map((v) => [v.name, v.number]),
      FLOW_STATUSES.map((name, i) => [name, i]),
    );
  });

  it("keeps an enum value it does not know (a newer server's) as its number", () => {
    // 42 is no PhaseState of this build: it must survive decoding and re-encoding unchanged.
    const flow = create(FlowSchema, { phases: [{ name: "x", state: 42 as PhaseState }] });
    const decoded = fromBinary(FlowSchema, toBinary(FlowSchema, flow));
    assert.equal(decoded.phases[0]?.state, 42);
    assert.equal(PhaseState[decoded.phases[0]!.state], undefined);
    assert.equal(fromJson(FlowSchema, toJson(FlowSchema, decoded)).phases[0]?.state, 42);
  });

  it("describes every RPC of FlowStateService", () => {
    assert.equal(FlowStateService.typeName, "flowstate.v1.FlowStateService");
    assert.deepEqual(FlowStateService.methods.map((m) => m.name).sort(), [...RPCS].sort());
    const streaming = FlowStateService.methods.filter((m) => m.methodKind === "server_streaming").map((m) => m.name);
    assert.deepEqual(streaming.sort(), [...STREAMING_RPCS].sort());
    assert.ok(FlowStateService.methods.every((m) => m.methodKind === "unary" || m.methodKind === "server_streaming"));
  });

  it("builds a Connect client with a method per RPC (no call is made)", () => {
    const client = createClient(FlowStateService, createGrpcTransport({ baseUrl: "http://127.0.0.1:1" }));
    for (const method of FlowStateService.methods) {
      assert.equal(typeof (client as Record<string, unknown>)[method.localName], "function", method.name);
    }
  });
});
