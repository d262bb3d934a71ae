/**
 * Typed errors of the Flowstate client, decoded from the server's rich gRPC status.
 *
 * Every refusal of the server is a gRPC status carrying a `google.rpc.ErrorInfo` (reason = the
 * error code, domain `flowstate.v1`), a `flowstate.v1.FlowError`, a `google.rpc.RetryInfo` when
 * retrying may help, and a `google.rpc.BadRequest` for malformed fields. The client throws one
 * class per error code, grouped under a class per gRPC status code (the same tree as the Python
 * SDK), and every error also carries the code as a string, so both styles work:
 *
 *   try { ... } catch (err) {
 *     if (err instanceof InvalidPhaseTransitionError) console.log(err.validTransitions);
 *     if (isFlowstateError(err) && err.code === "VERSION_CONFLICT") console.log(err.currentVersion);
 *   }
 *
 *   FlowstateError                         every error of a failed call
 *   ├── InvalidArgumentError               INVALID_ARGUMENT
 *   │   ├── InvalidPhaseError
 *   │   ├── MalformedRequestError              .fieldViolations
 *   │   └── RequestIdReusedError
 *   ├── FailedPreconditionError            FAILED_PRECONDITION (.recovery)
 *   │   ├── InvalidPhaseTransitionError        .validTransitions
 *   │   ├── InvalidFlowTransitionError         .validFlowTransitions
 *   │   ├── PhaseOrderViolationError           .blockingPhases
 *   │   ├── DependentPhasesActiveError         .dependentPhases
 *   │   ├── FlowPausedError
 *   │   ├── FlowTerminalError
 *   │   ├── MaxRetriesExceededError            .attemptsRemaining
 *   │   ├── RetryNotAllowedError               .attemptsRemaining
 *   │   ├── DefinitionShadowsBuiltinError      set allowShadowBuiltin
 *   │   ├── ApprovalRequiredError              decide with decidePhase (flows:approve)
 *   │   ├── PhaseFollowsChildFlowError         the phase's outcome comes from its child flow
 *   │   ├── ChildFlowLimitExceededError        too deep, or too many children
 *   │   └── ChildFlowNotLinkableError          already a child, other definition, or a cycle
 *   ├── AbortedError                       ABORTED
 *   │   └── VersionConflictError               .currentVersion
 *   ├── NotFoundError                      NOT_FOUND
 *   │   ├── FlowNotFoundError
 *   │   ├── DefinitionNotFoundError            also another tenant's definition
 *   │   ├── WebhookNotFoundError               also another tenant's webhook
 *   │   └── BulkActionNotFoundError            also another tenant's bulk action
 *   ├── UnauthenticatedError               UNAUTHENTICATED
 *   ├── PermissionDeniedError              PERMISSION_DENIED
 *   ├── ResourceExhaustedError             RESOURCE_EXHAUSTED
 *   │   ├── RateLimitedError                   the tenant's request budget (retried first)
 *   │   └── SubscriberTooSlowError
 *   ├── UnavailableError                   UNAVAILABLE (server, network or database down)
 *   │   └── ServerShuttingDownError
 *   ├── DeadlineExceededError              DEADLINE_EXCEEDED
 *   └── InternalError                      INTERNAL, UNKNOWN, DATA_LOSS (.correlationId)
 *
 * A reason this client does not know (a newer server) falls back to the class of its gRPC code;
 * a status without details (a connection failure) too. Other gRPC codes (CANCELLED,
 * UNIMPLEMENTED...) are a plain `FlowstateError`.
 */
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import { ErrorCode, FlowErrorSchema, type FlowError } from "./gen/flowstate/v1/errors_pb.js";
import { FlowStatus, PhaseState } from "./gen/flowstate/v1/states_pb.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
  type BadRequest_FieldViolation,
  type ErrorInfo,
} from "./gen/google/rpc/error_details_pb.js";

/** `ErrorInfo.domain` of every Flowstate error. */
export const ERROR_DOMAIN = "flowstate.v1";

/** Response trailer carrying the server's correlation id. */
export const CORRELATION_ID_HEADER = "x-correlation-id";

const BRAND = Symbol.for("@flowstate/client/FlowstateError");

/**
 * A Flowstate error code: the `ErrorInfo` reason, i.e. the `flowstate.v1.ErrorCode` name
 * without its `ERROR_CODE_` prefix. `"UNSPECIFIED"` when the status carried none and its gRPC
 * code implies none (e.g. CANCELLED).
 */
export type FlowstateErrorCode = keyof typeof ErrorCode;

/** The upper-case name of a gRPC status code, e.g. `"FAILED_PRECONDITION"`. */
export type GrpcCodeName =
  | "OK"
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED";

const GRPC_CODE_NAMES: Record<number, GrpcCodeName> = {
  0: "OK",
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/** The upper-case name of a gRPC code (`Code.FailedPrecondition` → `"FAILED_PRECONDITION"`). */
export function grpcCodeName(code: Code): GrpcCodeName {
  return GRPC_CODE_NAMES[code] ?? "UNKNOWN";
}

/** What a `FlowstateError` is built from (the client does this for you). */
export interface FlowstateErrorInit {
  code: FlowstateErrorCode;
  grpcCode: Code;
  message: string;
  details?: JsonObject;
  flowError?: FlowError;
  errorInfo?: ErrorInfo;
  fieldViolations?: BadRequest_FieldViolation[];
  retryAllowed?: boolean;
  retryDelayMs?: number;
  correlationId?: string;
  cause?: unknown;
}

/** A call to Flowstate failed: the structured error the server sent, decoded. */
export class FlowstateError extends Error {
  /** The Flowstate error code (the `ErrorInfo` reason), e.g. `"INVALID_PHASE_TRANSITION"`. */
  readonly code: FlowstateErrorCode;
  /** The gRPC status code of the call (Connect's `Code` enum; same numbers as gRPC). */
  readonly grpcCode: Code;
  /** Free-form details of the `FlowError` (`valid_transitions`, `current_version`...). */
  readonly details: JsonObject;
  /** The decoded `flowstate.v1.FlowError`, when the status carried one. */
  readonly flowError: FlowError | undefined;
  /** The decoded `google.rpc.ErrorInfo`, when the status carried one. */
  readonly errorInfo: ErrorInfo | undefined;
  /** The `google.rpc.BadRequest` field violations (malformed requests); empty otherwise. */
  readonly fieldViolations: BadRequest_FieldViolation[];
  /** Whether sending the same request again may succeed. */
  readonly retryAllowed: boolean;
  /** The server's suggested wait before a retry (`google.rpc.RetryInfo`), in milliseconds. */
  readonly retryDelayMs: number | undefined;
  /** The id under which the server logged the request, when it sent one. */
  readonly correlationId: string | undefined;
  /** Marks Flowstate errors across duplicate copies of this package (see `isFlowstateError`). */
  readonly [BRAND] = true;

  constructor(init: FlowstateErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.grpcCode = init.grpcCode;
    this.details = init.details ?? {};
    this.flowError = init.flowError;
    this.errorInfo = init.errorInfo;
    this.fieldViolations = init.fieldViolations ?? [];
    this.retryAllowed = init.retryAllowed ?? init.grpcCode === Code.Unavailable;
    this.retryDelayMs = init.retryDelayMs;
    this.correlationId = init.correlationId || undefined;
  }

  /**
   * `instanceof` that also recognises errors from a duplicate copy of this package (two
   * versions in one node_modules): an object branded as a Flowstate error whose class chain
   * has a class of the same name (`err instanceof FlowNotFoundError` holds for either copy's).
   */
  static override [Symbol.hasInstance](value: unknown): boolean {
    if (Function.prototype[Symbol.hasInstance].call(this, value)) return true;
    if (typeof value !== "object" || value === null || !(BRAND in value)) return false;
    for (let proto = Object.getPrototypeOf(value); proto !== null; proto = Object.getPrototypeOf(proto)) {
      if ((proto as { constructor?: { name?: string } }).constructor?.name === this.name) return true;
    }
    return false;
  }

  /**
   * The error as Connect's `ConnectError` (the one the call threw, when there was one), for code
   * that handles Connect errors: same code, message, metadata and details.
   */
  toConnectError(): ConnectError {
    if (this.cause instanceof ConnectError) return this.cause;
    return new ConnectError(this.message, this.grpcCode, undefined, undefined, this);
  }

  /** The gRPC code's upper-case name, e.g. `"NOT_FOUND"`. */
  get grpcCodeName(): GrpcCodeName {
    return grpcCodeName(this.grpcCode);
  }

  /** The phase the error is about, if any. */
  get phase(): string | undefined {
    return this.flowError?.phase || stringDetail(this.details, "phase");
  }

  /** Recovery actions that remain possible (e.g. `["rollback", "cancel"]`). */
  get recovery(): string[] {
    if (this.flowError?.recovery.length) return [...this.flowError.recovery];
    return stringList(this.details, "recovery");
  }

  /** The error as JSON-able data (the same shape the Go and Python clients produce). */
  toJSON(): {
    code: FlowstateErrorCode;
    grpcCode: GrpcCodeName;
    message: string;
    details: JsonObject;
    retryAllowed: boolean;
    correlationId: string | null;
    phase: string | null;
  } {
    return {
      code: this.code,
      grpcCode: this.grpcCodeName,
      message: this.message,
      details: this.details,
      retryAllowed: this.retryAllowed,
      correlationId: this.correlationId ?? null,
      phase: this.phase ?? null,
    };
  }

  override toString(): string {
    const label = this.code !== "UNSPECIFIED" ? this.code : this.grpcCodeName;
    const suffix = this.correlationId ? ` (correlation id ${this.correlationId})` : "";
    return `${this.name} ${label}: ${this.message}${suffix}`;
  }
}

// --- INVALID_ARGUMENT -------------------------------------------------------------------------

/** The request is invalid whatever the flow's state (INVALID_ARGUMENT). */
export class InvalidArgumentError extends FlowstateError {}
/** The phase name is not part of the flow's definition. */
export class InvalidPhaseError extends InvalidArgumentError {}
/** A field is missing, out of range or malformed (`fieldViolations` names it). */
export class MalformedRequestError extends InvalidArgumentError {}
/** A request id was reused with a different payload; it is never silently replayed. */
export class RequestIdReusedError extends InvalidArgumentError {}

// --- FAILED_PRECONDITION ----------------------------------------------------------------------

/** The request is refused in the flow's current state (FAILED_PRECONDITION). */
export class FailedPreconditionError extends FlowstateError {}

/** The phase cannot move from its state to the target. */
export class InvalidPhaseTransitionError extends FailedPreconditionError {
  /** The legal target states from the phase's current state. */
  get validTransitions(): PhaseState[] {
    if (this.flowError?.validTransitions.length) return [...this.flowError.validTransitions];
    return enumList(this.details, "valid_transitions", PhaseState, "PHASE_STATE_");
  }
}

/** The flow cannot move from its status to the target. */
export class InvalidFlowTransitionError extends FailedPreconditionError {
  /** The legal target statuses from the flow's current status. */
  get validFlowTransitions(): FlowStatus[] {
    if (this.flowError?.validFlowTransitions.length) return [...this.flowError.validFlowTransitions];
    const key = this.details["valid_flow_transitions"] !== undefined ? "valid_flow_transitions" : "valid_transitions";
    return enumList(this.details, key, FlowStatus, "FLOW_STATUS_");
  }
}

/** A dependency of the phase is not COMPLETED, so it may not start. */
export class PhaseOrderViolationError extends FailedPreconditionError {
  /** The dependencies that are not COMPLETED yet. */
  get blockingPhases(): string[] {
    if (this.flowError?.blockingPhases.length) return [...this.flowError.blockingPhases];
    return stringList(this.details, "blocking_phases");
  }
}

/** A rollback with `cascade: false` found downstream phases that have left NOT_STARTED. */
export class DependentPhasesActiveError extends FailedPreconditionError {
  /** The downstream phases that block the rollback. */
  get dependentPhases(): string[] {
    if (this.flowError?.dependentPhases.length) return [...this.flowError.dependentPhases];
    return stringList(this.details, "dependent_phases");
  }
}

/** The flow is PAUSED, so no phase may start until it is resumed. */
export class FlowPausedError extends FailedPreconditionError {}
/** The flow is COMPLETED or CANCELLED; nothing changes it any more. */
export class FlowTerminalError extends FailedPreconditionError {}

/** Base of the two retry refusals. */
export class RetryRefusedError extends FailedPreconditionError {
  /** Retry attempts left for the phase, when the server said. */
  get attemptsRemaining(): number | undefined {
    if (this.flowError?.attemptsRemaining !== undefined) return this.flowError.attemptsRemaining;
    const value = this.details["attempts_remaining"];
    return typeof value === "number" ? value : undefined;
  }
}
/** The phase has used all of its retries (see `recovery` for what remains). */
export class MaxRetriesExceededError extends RetryRefusedError {}
/** The phase failed with a non-retryable code; only an admin may force a retry. */
export class RetryNotAllowedError extends RetryRefusedError {}

// --- ABORTED ----------------------------------------------------------------------------------

/** The request lost a race with another change (ABORTED). */
export class AbortedError extends FlowstateError {}

/** `expectedVersion` is stale: the flow changed since it was read. */
export class VersionConflictError extends AbortedError {
  /** The flow's version now; re-read the flow and decide again. */
  get currentVersion(): bigint | undefined {
    if (this.flowError?.currentVersion) return this.flowError.currentVersion;
    const value = this.details["current_version"];
    return typeof value === "number" || typeof value === "string" ? BigInt(value) : undefined;
  }
}

// --- other codes ------------------------------------------------------------------------------

/** The resource does not exist for the caller (NOT_FOUND). */
export class NotFoundError extends FlowstateError {}
/** No such flow for the caller's tenant (also the answer for another tenant's flow). */
export class FlowNotFoundError extends NotFoundError {}
/** No such flow definition (or version) for the caller's tenant (also another tenant's). */
export class DefinitionNotFoundError extends NotFoundError {}
/** No such bulk action for the caller's tenant (also another tenant's). */
export class BulkActionNotFoundError extends NotFoundError {}
/** No such webhook for the caller's tenant (also another tenant's). */
export class WebhookNotFoundError extends NotFoundError {}
/** The definition's name is a built-in's; register it with `allowShadowBuiltin: true`. */
export class DefinitionShadowsBuiltinError extends FailedPreconditionError {}
/** The phase's policy requires an approval decision: use `decidePhase` (scope flows:approve). */
export class ApprovalRequiredError extends FailedPreconditionError {}
/** The phase is of kind child_flow: its progress and outcome come from its child flow. */
export class PhaseFollowsChildFlowError extends FailedPreconditionError {}
/** A new child flow would be too deep, or its parent has too many children. */
export class ChildFlowLimitExceededError extends FailedPreconditionError {}
/** The flow to link already has a parent, follows another definition, or is an ancestor. */
export class ChildFlowNotLinkableError extends FailedPreconditionError {}
/** The credentials are missing, expired or forged (UNAUTHENTICATED). */
export class UnauthenticatedError extends FlowstateError {}
/** The credentials' scopes are too small for the call (PERMISSION_DENIED). */
export class PermissionDeniedError extends FlowstateError {}
/** A limit was hit (RESOURCE_EXHAUSTED). */
export class ResourceExhaustedError extends FlowstateError {}
/**
 * The tenant spent its request budget for this kind of call (RATE_LIMITED); nothing was applied.
 * The client already retried after the server's RetryInfo delay before throwing this.
 */
export class RateLimitedError extends ResourceExhaustedError {}
/** A status stream was read too slowly; `watch()` resumes by itself from the last version. */
export class SubscriberTooSlowError extends ResourceExhaustedError {}
/** The server, the network or the database is unavailable; already retried with backoff. */
export class UnavailableError extends FlowstateError {}
/** The server is shutting down; reconnect (to another replica) and resume. */
export class ServerShuttingDownError extends UnavailableError {}
/**
 * The call's timeout ran out (DEADLINE_EXCEEDED). A mutation may still have been applied: send
 * it again with the same `requestId` to get its result without applying it twice.
 */
export class DeadlineExceededError extends FlowstateError {}
/** The server failed unexpectedly; report `correlationId` to its operators (INTERNAL). */
export class InternalError extends FlowstateError {}

type ErrorClass = new (init: FlowstateErrorInit) => FlowstateError;

const BY_REASON: Partial<Record<FlowstateErrorCode, ErrorClass>> = {
  INVALID_PHASE: InvalidPhaseError,
  MALFORMED_REQUEST: MalformedRequestError,
  REQUEST_ID_REUSED: RequestIdReusedError,
  INVALID_PHASE_TRANSITION: InvalidPhaseTransitionError,
  INVALID_FLOW_TRANSITION: InvalidFlowTransitionError,
  PHASE_ORDER_VIOLATION: PhaseOrderViolationError,
  DEPENDENT_PHASES_ACTIVE: DependentPhasesActiveError,
  FLOW_PAUSED: FlowPausedError,
  FLOW_TERMINAL: FlowTerminalError,
  MAX_RETRIES_EXCEEDED: MaxRetriesExceededError,
  RETRY_NOT_ALLOWED: RetryNotAllowedError,
  VERSION_CONFLICT: VersionConflictError,
  FLOW_NOT_FOUND: FlowNotFoundError,
  DEFINITION_NOT_FOUND: DefinitionNotFoundError,
  BULK_ACTION_NOT_FOUND: BulkActionNotFoundError,
  DEFINITION_SHADOWS_BUILTIN: DefinitionShadowsBuiltinError,
  WEBHOOK_NOT_FOUND: WebhookNotFoundError,
  RATE_LIMITED: RateLimitedError,
  APPROVAL_REQUIRED: ApprovalRequiredError,
  PHASE_FOLLOWS_CHILD_FLOW: PhaseFollowsChildFlowError,
  CHILD_FLOW_LIMIT_EXCEEDED: ChildFlowLimitExceededError,
  CHILD_FLOW_NOT_LINKABLE: ChildFlowNotLinkableError,
  UNAUTHENTICATED: UnauthenticatedError,
  PERMISSION_DENIED: PermissionDeniedError,
  TEMPORARY_RESOURCE_UNAVAILABLE: UnavailableError,
  SUBSCRIBER_TOO_SLOW: SubscriberTooSlowError,
  SERVER_SHUTTING_DOWN: ServerShuttingDownError,
  INTERNAL: InternalError,
};

const BY_GRPC_CODE: Partial<Record<Code, ErrorClass>> = {
  [Code.InvalidArgument]: InvalidArgumentError,
  [Code.OutOfRange]: InvalidArgumentError,
  [Code.FailedPrecondition]: FailedPreconditionError,
  [Code.Aborted]: AbortedError,
  [Code.NotFound]: NotFoundError,
  [Code.Unauthenticated]: UnauthenticatedError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.ResourceExhausted]: ResourceExhaustedError,
  [Code.Unavailable]: UnavailableError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
  [Code.Internal]: InternalError,
  [Code.Unknown]: InternalError,
  [Code.DataLoss]: InternalError,
};

// The code implied by a status without an ErrorInfo (e.g. a refused connection).
const IMPLIED_CODE: Partial<Record<Code, FlowstateErrorCode>> = {
  [Code.Unauthenticated]: "UNAUTHENTICATED",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.Unavailable]: "TEMPORARY_RESOURCE_UNAVAILABLE",
  [Code.Internal]: "INTERNAL",
  [Code.Unknown]: "INTERNAL",
  [Code.DataLoss]: "INTERNAL",
};

function parseCode(reason: string): FlowstateErrorCode | undefined {
  const name = reason.startsWith("ERROR_CODE_") ? reason.slice("ERROR_CODE_".length) : reason;
  return name in ErrorCode && Number.isNaN(Number(name)) ? (name as FlowstateErrorCode) : undefined;
}

/** The error class of a code, falling back to the class of a gRPC code. */
export function errorClass(code: FlowstateErrorCode, grpcCode: Code): ErrorClass {
  return BY_REASON[code] ?? BY_GRPC_CODE[grpcCode] ?? FlowstateError;
}

/**
 * The typed error of anything a Connect call threw. Already-decoded `FlowstateError`s are
 * returned as they are; other values become a `FlowstateError` through `ConnectError.from`.
 */
export function toFlowstateError(reason: unknown): FlowstateError {
  if (reason instanceof FlowstateError) return reason;
  const err = ConnectError.from(reason);
  let errorInfo: ErrorInfo | undefined;
  let flowError: FlowError | undefined;
  let retryDelayMs: number | undefined;
  let fieldViolations: BadRequest_FieldViolation[] = [];
  try {
    errorInfo = err.findDetails(ErrorInfoSchema).find((info) => info.domain === "" || info.domain === ERROR_DOMAIN);
    flowError = err.findDetails(FlowErrorSchema)[0];
    const retryInfo = err.findDetails(RetryInfoSchema)[0];
    if (retryInfo?.retryDelay) {
      retryDelayMs = Number(retryInfo.retryDelay.seconds) * 1000 + Math.floor(retryInfo.retryDelay.nanos / 1e6);
    }
    fieldViolations = err.findDetails(BadRequestSchema).flatMap((badRequest) => badRequest.fieldViolations);
  } catch {
    // Undecodable details: keep what the status code and message say.
  }

  // A connection that broke under a call (server killed or restarted, reset) is UNAVAILABLE,
  // as grpc-core and grpc-go report it, so that it is retried and resumed like one.
  let grpcCode = err.code;
  if (!errorInfo && !flowError && grpcCode !== Code.Unavailable && isConnectionLoss(err)) {
    grpcCode = Code.Unavailable;
  }

  let code: FlowstateErrorCode | undefined = errorInfo?.reason ? parseCode(errorInfo.reason) : undefined;
  if ((code === undefined || code === "UNSPECIFIED") && flowError) {
    code = (ErrorCode[flowError.errorCode] as FlowstateErrorCode | undefined) ?? undefined;
  }
  if (code === undefined || code === "UNSPECIFIED") code = IMPLIED_CODE[grpcCode] ?? "UNSPECIFIED";

  let details: JsonObject = {};
  if (flowError?.details) details = { ...flowError.details };
  else if (errorInfo) details = { ...errorInfo.metadata };

  const correlationId =
    flowError?.correlationId || errorInfo?.metadata["correlation_id"] || err.metadata.get(CORRELATION_ID_HEADER) || undefined;
  const cls = errorClass(code, grpcCode);
  return new cls({
    code,
    grpcCode,
    message: flowError?.message || err.rawMessage,
    details,
    flowError,
    errorInfo,
    fieldViolations,
    retryAllowed: flowError ? flowError.retryAllowed : undefined,
    retryDelayMs,
    correlationId,
    cause: err,
  });
}

/**
 * `error` as seen by a caller who did not cancel: a call CANCELLED without any status from the
 * server means the connection (or the server) went away under it (connect-node reports a
 * killed server's streams as RST_STREAM CANCEL), i.e. UNAVAILABLE, as grpc-go reports it.
 */
export function uncancelled(error: FlowstateError): FlowstateError {
  if (error.grpcCode !== Code.Canceled || error.errorInfo !== undefined || error.flowError !== undefined) return error;
  return new UnavailableError({
    code: "TEMPORARY_RESOURCE_UNAVAILABLE",
    grpcCode: Code.Unavailable,
    message: `connection lost: ${error.message}`,
    retryAllowed: true,
    correlationId: error.correlationId,
    cause: error.cause ?? error,
  });
}

/** Whether `value` is a `FlowstateError` (also across duplicate copies of this package). */
export function isFlowstateError(value: unknown): value is FlowstateError {
  return value instanceof FlowstateError;
}

/** When a FlowError was produced, as a Date (undefined when the server sent no timestamp). */
export function errorTime(error: FlowstateError): Date | undefined {
  return error.flowError?.timestamp ? timestampDate(error.flowError.timestamp) : undefined;
}

// Node.js error codes of a connection that broke (connect-node reports some as ABORTED).
const CONNECTION_LOSS_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "EPIPE",
  "ERR_STREAM_DESTROYED",
  "ERR_HTTP2_INVALID_STREAM",
  "ERR_HTTP2_STREAM_ERROR",
  "ERR_HTTP2_SESSION_ERROR",
  "ERR_HTTP2_GOAWAY_SESSION",
  "ERR_HTTP2_STREAM_CANCEL",
]);

function isConnectionLoss(err: ConnectError): boolean {
  let cause: unknown = err.cause;
  for (let depth = 0; depth < 8 && typeof cause === "object" && cause !== null; depth += 1) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === "string" && CONNECTION_LOSS_CODES.has(code)) return true;
    cause = (cause as { cause?: unknown }).cause;
  }
  return false;
}

function stringDetail(details: JsonObject, key: string): string | undefined {
  const value = details[key];
  return typeof value === "string" && value !== "" ? value : undefined;
}

function asList(details: JsonObject, key: string): JsonValue[] {
  const value = details[key];
  if (Array.isArray(value)) return value;
  // ErrorInfo metadata joins lists with commas.
  if (typeof value === "string") return value === "" ? [] : value.split(",");
  return [];
}

function stringList(details: JsonObject, key: string): string[] {
  return asList(details, key).map((item) => String(item));
}

function enumList<E extends Record<string, string | number>>(
  details: JsonObject,
  key: string,
  enumObject: E,
  prefix: string,
): E[keyof E][] {
  const result: E[keyof E][] = [];
  for (const item of asList(details, key)) {
    const name = String(item).toUpperCase();
    const bare = name.startsWith(prefix) ? name.slice(prefix.length) : name;
    const value = enumObject[bare as keyof E];
    if (typeof value === "number") result.push(value);
  }
  return result;
}
