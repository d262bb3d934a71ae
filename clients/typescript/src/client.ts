/**
 * `createFlowstateClient()`: a thin, typed wrapper over the generated Connect client.
 *
 * - one method per RPC, taking the request as a plain object (`MessageInitShape`) and returning
 *   the generated response message;
 * - the bearer token (a string or a provider called before every attempt) in an interceptor;
 * - an automatic `requestId` (crypto.randomUUID) on every mutation, the same on every retry;
 * - retries on UNAVAILABLE with exponential backoff, jitter and a deadline (every unary RPC is
 *   idempotent: reads have no side effects, mutations carry a request id);
 * - typed errors (`FlowstateError` and its subclasses, see errors.ts);
 * - `watch()` / `watchFlows()`: status streams that resume after disconnects (see watch.ts).
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import type * as http2 from "node:http2";

import { clone, create, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type CallOptions, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager, type Http2SessionOptions } from "@connectrpc/connect-node";

import { FlowstateError, toFlowstateError, uncancelled } from "./errors.js";
import {
  CancelBulkActionRequestSchema,
  CountFlowsRequestSchema,
  GetBulkActionRequestSchema,
  ListBulkActionResultsRequestSchema,
  ListBulkActionsRequestSchema,
  StartBulkActionRequestSchema,
  WatchBulkActionRequestSchema,
  type BulkAction,
  type BulkFlowResult,
  type CancelBulkActionResponse,
  type CountFlowsResponse,
  type GetBulkActionResponse,
  type ListBulkActionResultsResponse,
  type ListBulkActionsResponse,
  type StartBulkActionResponse,
  CancelFlowRequestSchema,
  CreateFlowDefinitionRequestSchema,
  CreateFlowRequestSchema,
  FlowStateService,
  GetFlowDefinitionRequestSchema,
  GetFlowRequestSchema,
  GetRecoveryOptionsRequestSchema,
  ListFlowDefinitionsRequestSchema,
  ListFlowHistoryRequestSchema,
  ListFlowsRequestSchema,
  PauseFlowRequestSchema,
  ResumeFlowRequestSchema,
  RetryRequestSchema,
  RollbackRequestSchema,
  SkipPhaseRequestSchema,
  DecidePhaseRequestSchema,
  TransitionPhaseRequestSchema,
  UpdatePhaseProgressRequestSchema,
  HeartbeatRequestSchema,
  LinkChildFlowRequestSchema,
  ValidateTransitionRequestSchema,
  CreateWebhookRequestSchema,
  ListWebhooksRequestSchema,
  DeleteWebhookRequestSchema,
  TestWebhookRequestSchema,
  ReplayWebhookRequestSchema,
  type CreateWebhookResponse,
  type ListWebhooksResponse,
  type DeleteWebhookResponse,
  type TestWebhookResponse,
  type ReplayWebhookResponse,
  GetRetentionPolicyRequestSchema,
  SetRetentionPolicyRequestSchema,
  type GetRetentionPolicyResponse,
  type SetRetentionPolicyResponse,
  type CancelFlowResponse,
  type CreateFlowDefinitionResponse,
  type CreateFlowResponse,
  type FlowDefinition,
  type Flow,
  type FlowEvent,
  type GetFlowDefinitionResponse,
  type GetFlowResponse,
  type GetRecoveryOptionsResponse,
  type HistoryEntry,
  type RecoveryOption,
  RecoveryAction,
  type ListFlowDefinitionsResponse,
  type ListFlowHistoryResponse,
  type ListFlowsResponse,
  type PauseFlowResponse,
  type ResumeFlowResponse,
  type RetryResponse,
  type RollbackResponse,
  type SkipPhaseResponse,
  type DecidePhaseResponse,
  type TransitionPhaseResponse,
  type UpdatePhaseProgressResponse,
  type HeartbeatResponse,
  type LinkChildFlowResponse,
  type ValidateTransitionResponse,
  type WatchFlowResponse,
} from "./gen/flowstate/v1/index.js";
import {
  DEFAULT_RETRY_POLICY,
  DEFAULT_WATCH_RETRY_POLICY,
  RetryState,
  resolveRetryPolicy,
  retryableUnary,
  sleep,
  type RetryPolicy,
} from "./retry.js";
import { VERSION } from "./version.js";
import {
  MAX_CHILDREN_DEPTH,
  watchFlow,
  watchFlows,
  watchTree,
  type FlowsEvent,
  type WatchFlowsOptions,
  type WatchOptions,
  type WatchTreeOptions,
} from "./watch.js";

/** Where `flowstate serve` listens by default. */
export const DEFAULT_ADDRESS = "127.0.0.1:50051";

/** Request header naming this SDK and its version (the server counts calls by it). */
export const CLIENT_HEADER = "x-flowstate-client";

/** A bearer token source: called before every attempt, so a refreshing source returns the fresh token. */
export type TokenProvider = () => string | Promise<string>;

/** TLS settings (passed to `http2.connect`): custom CA, client certificate for mTLS, server name. */
export interface TlsOptions {
  ca?: string | Buffer | Array<string | Buffer>;
  cert?: string | Buffer;
  key?: string | Buffer;
  servername?: string;
}

/** Options of `createFlowstateClient()`. */
export interface FlowstateClientOptions {
  /** `host:port` (e.g. `"127.0.0.1:50051"`), or a URL (`http://...`, `https://...`). */
  address?: string;
  /** A bearer token (JWT). */
  token?: string;
  /** A bearer token source, called before every attempt (takes precedence over `token`). */
  tokenProvider?: TokenProvider;
  /** Use TLS: `true` for the system CAs, or settings. Plaintext (h2c) otherwise. */
  tls?: boolean | TlsOptions;
  /**
   * Allow plaintext to a host that is not a loopback address (tokens then travel unencrypted).
   * Plaintext to 127.0.0.0/8, ::1 and localhost is always allowed.
   */
  allowInsecure?: boolean;
  /** Timeout of each attempt of a unary call, in milliseconds (30 s; 0 disables). */
  timeoutMs?: number;
  /** Retry policy of unary calls (overrides of `DEFAULT_RETRY_POLICY`); `false` disables retries. */
  retry?: Partial<RetryPolicy> | false;
  /** Reconnection policy of status streams (overrides of `DEFAULT_WATCH_RETRY_POLICY`). */
  watchRetry?: Partial<RetryPolicy>;
  /** More Connect interceptors (after the one that sets the token). */
  interceptors?: Interceptor[];
  /** HTTP/2 keepalive settings (PING interval and timeout, idle timeout). */
  http2?: Http2SessionOptions;
  /**
   * Where unset settings come from (default `process.env`; `false`: nowhere). Explicit options
   * win: `FLOWSTATE_ADDRESS`, `FLOWSTATE_TOKEN` (when neither `token` nor `tokenProvider` is
   * given) and, when `tls` is not given, `FLOWSTATE_TLS_CA_FILE`, `FLOWSTATE_TLS_CERT_FILE` +
   * `FLOWSTATE_TLS_KEY_FILE` (mTLS) or `FLOWSTATE_TLS=1` (the system CAs).
   */
  env?: Record<string, string | undefined> | false;
}

/** Per-call options: Connect's `CallOptions` plus a retry override. */
export interface FlowstateCallOptions extends CallOptions {
  /** Overrides of the client's retry policy for this call; `false` disables retries. */
  retry?: Partial<RetryPolicy> | false;
}

type Init<D extends DescMessage> = MessageInitShape<D>;

/** Request shapes accepted by the client (plain objects; every field optional). */
export type CreateFlowInput = Init<typeof CreateFlowRequestSchema>;
export type GetFlowInput = Init<typeof GetFlowRequestSchema>;
export type ListFlowsInput = Init<typeof ListFlowsRequestSchema>;
export type ValidateTransitionInput = Init<typeof ValidateTransitionRequestSchema>;
export type TransitionPhaseInput = Init<typeof TransitionPhaseRequestSchema>;
export type UpdatePhaseProgressInput = Init<typeof UpdatePhaseProgressRequestSchema>;
export type HeartbeatInput = Init<typeof HeartbeatRequestSchema>;
export type RollbackInput = Init<typeof RollbackRequestSchema>;
export type RetryInput = Init<typeof RetryRequestSchema>;
export type GetRecoveryOptionsInput = Init<typeof GetRecoveryOptionsRequestSchema>;
export type PauseFlowInput = Init<typeof PauseFlowRequestSchema>;
export type ResumeFlowInput = Init<typeof ResumeFlowRequestSchema>;
export type CancelFlowInput = Init<typeof CancelFlowRequestSchema>;
export type ListFlowHistoryInput = Init<typeof ListFlowHistoryRequestSchema>;
export type GetFlowDefinitionInput = Init<typeof GetFlowDefinitionRequestSchema>;
export type CreateFlowDefinitionInput = Init<typeof CreateFlowDefinitionRequestSchema>;
export type ListFlowDefinitionsInput = Init<typeof ListFlowDefinitionsRequestSchema>;
export type SkipPhaseInput = Init<typeof SkipPhaseRequestSchema>;
export type CreateWebhookInput = Init<typeof CreateWebhookRequestSchema>;
export type DeleteWebhookInput = Init<typeof DeleteWebhookRequestSchema>;
export type TestWebhookInput = Init<typeof TestWebhookRequestSchema>;
export type ReplayWebhookInput = Init<typeof ReplayWebhookRequestSchema>;
export type DecidePhaseInput = Init<typeof DecidePhaseRequestSchema>;
export type SetRetentionPolicyInput = Init<typeof SetRetentionPolicyRequestSchema>;
export type CountFlowsInput = Init<typeof CountFlowsRequestSchema>;
export type StartBulkActionInput = Init<typeof StartBulkActionRequestSchema>;
export type GetBulkActionInput = Init<typeof GetBulkActionRequestSchema>;
export type ListBulkActionsInput = Init<typeof ListBulkActionsRequestSchema>;
export type ListBulkActionResultsInput = Init<typeof ListBulkActionResultsRequestSchema>;
export type CancelBulkActionInput = Init<typeof CancelBulkActionRequestSchema>;
export type LinkChildFlowInput = Init<typeof LinkChildFlowRequestSchema>;

/** The Flowstate client: one method per RPC, plus resumable watches. */
export interface FlowstateClient {
  createFlow(request?: CreateFlowInput, options?: FlowstateCallOptions): Promise<CreateFlowResponse>;
  getFlow(request: GetFlowInput, options?: FlowstateCallOptions): Promise<GetFlowResponse>;
  listFlows(request?: ListFlowsInput, options?: FlowstateCallOptions): Promise<ListFlowsResponse>;
  validateTransition(request: ValidateTransitionInput, options?: FlowstateCallOptions): Promise<ValidateTransitionResponse>;
  transitionPhase(request: TransitionPhaseInput, options?: FlowstateCallOptions): Promise<TransitionPhaseResponse>;
  updatePhaseProgress(request: UpdatePhaseProgressInput, options?: FlowstateCallOptions): Promise<UpdatePhaseProgressResponse>;
  /**
   * A worker's sign of life for a running phase: pushes its heartbeat timeout back (no history, no
   * new version). `heartbeatDeadlineTime` is unset when the phase has no heartbeat timeout. An
   * `InvalidPhaseTransitionError` means the phase is not running (e.g. it timed out): stop.
   */
  heartbeat(request: HeartbeatInput, options?: FlowstateCallOptions): Promise<HeartbeatResponse>;
  rollback(request: RollbackInput, options?: FlowstateCallOptions): Promise<RollbackResponse>;
  retry(request: RetryInput, options?: FlowstateCallOptions): Promise<RetryResponse>;
  getRecoveryOptions(request: GetRecoveryOptionsInput, options?: FlowstateCallOptions): Promise<GetRecoveryOptionsResponse>;
  /**
   * Sends the request a recovery option carries (an option of `getRecoveryOptions`: retry,
   * rollback, restart, resume, cancel, pause or skip) through the matching method, with a fresh
   * request id; the option is not modified. The request is pinned to the flow's version when the
   * options were read (`VersionConflictError` if it changed since). An option that is not
   * `allowed` is sent all the same (the server refuses it with its `blockedBy`); one without a
   * request rejects with a `TypeError` before anything is sent.
   */
  executeRecovery(option: RecoveryOption, options?: FlowstateCallOptions): Promise<RecoveryResult>;
  pauseFlow(request: PauseFlowInput, options?: FlowstateCallOptions): Promise<PauseFlowResponse>;
  resumeFlow(request: ResumeFlowInput, options?: FlowstateCallOptions): Promise<ResumeFlowResponse>;
  cancelFlow(request: CancelFlowInput, options?: FlowstateCallOptions): Promise<CancelFlowResponse>;
  listFlowHistory(request: ListFlowHistoryInput, options?: FlowstateCallOptions): Promise<ListFlowHistoryResponse>;
  getFlowDefinition(request?: GetFlowDefinitionInput, options?: FlowstateCallOptions): Promise<GetFlowDefinitionResponse>;
  /**
   * Registers a definition for the caller's tenant (scope `definitions:write`): an identical body
   * returns the existing version (`created` false), another body the next version. Every
   * structural problem comes back at once as a `MalformedRequestError` with field violations.
   */
  createFlowDefinition(request: CreateFlowDefinitionInput, options?: FlowstateCallOptions): Promise<CreateFlowDefinitionResponse>;
  /** One page of the definitions the caller can use (latest version of each name, or every version of `name`). */
  listFlowDefinitions(request?: ListFlowDefinitionsInput, options?: FlowstateCallOptions): Promise<ListFlowDefinitionsResponse>;
  /** Every definition `listFlowDefinitions` lists, page after page. */
  definitions(options?: { name?: string; pageSize?: number } & FlowstateCallOptions): AsyncGenerator<FlowDefinition, void, undefined>;
  /** Skips an optional phase (-> SKIPPED, which satisfies its dependents and counts as done). */
  skipPhase(request: SkipPhaseInput, options?: FlowstateCallOptions): Promise<SkipPhaseResponse>;
  /** Subscribes a URL to the tenant's flow changes (webhooks:admin); the response carries the signing secret, returned only here. */
  createWebhook(request: CreateWebhookInput, options?: FlowstateCallOptions): Promise<CreateWebhookResponse>;
  /** The tenant's webhooks with their delivery status (never secrets). */
  listWebhooks(options?: FlowstateCallOptions): Promise<ListWebhooksResponse>;
  /** Deletes a webhook (`WebhookNotFoundError` for an unknown id or another tenant's). */
  deleteWebhook(request: DeleteWebhookInput, options?: FlowstateCallOptions): Promise<DeleteWebhookResponse>;
  /** Sends one signed `webhook.test` event now and reports the receiver's answer. */
  testWebhook(request: TestWebhookInput, options?: FlowstateCallOptions): Promise<TestWebhookResponse>;
  /** Moves a webhook's cursor (after a cursor, from a time, or to now) and enables it. */
  replayWebhook(request: ReplayWebhookInput, options?: FlowstateCallOptions): Promise<ReplayWebhookResponse>;
  /**
   * The tenant's retention policy (scope `retention:admin`, not implied by `flows:admin`;
   * docs/retention.md). `policy.retainDays` 0: the tenant has no policy of its own.
   */
  getRetentionPolicy(options?: FlowstateCallOptions): Promise<GetRetentionPolicyResponse>;
  /**
   * Keeps the tenant's COMPLETED and CANCELLED flows `retainDays` (1..36500) after their last
   * change, then archives and deletes them; 0 removes the tenant's own policy. Scope
   * `retention:admin`; idempotent (an out-of-range value is a `MalformedRequestError` on `retain_days`).
   */
  setRetentionPolicy(request: SetRetentionPolicyInput, options?: FlowstateCallOptions): Promise<SetRetentionPolicyResponse>;
  /**
   * Decides on a phase waiting for approval (scope `flows:approve`): APPROVE -> COMPLETED,
   * REQUEST_CHANGES -> IN_PROGRESS, REJECT -> FAILED (APPROVAL_REJECTED). The approver (the
   * token's subject), decision and comment are recorded on the phase and in history. A missing
   * scope or claim of the phase's policy is a `PermissionDeniedError`.
   */
  decidePhase(request: DecidePhaseInput, options?: FlowstateCallOptions): Promise<DecidePhaseResponse>;
  /**
   * Counts the caller's flows matching `filter` (docs/filters.md), in all and per `groupBy`
   * ("status", "definition", "phase.<name>"). A filter that does not parse is a
   * `MalformedRequestError` whose `details.position` is the offset of the problem.
   */
  countFlows(request?: CountFlowsInput, options?: FlowstateCallOptions): Promise<CountFlowsResponse>;
  /**
   * Starts a bulk action (scope `flows:admin`, docs/bulk-actions.md) over a filter or flow ids;
   * the server works through it in the background. Idempotent on `requestId` (generated when unset).
   */
  startBulkAction(request: StartBulkActionInput, options?: FlowstateCallOptions): Promise<StartBulkActionResponse>;
  /** One bulk action with its progress (`BulkActionNotFoundError` for another tenant's). */
  getBulkAction(request: GetBulkActionInput, options?: FlowstateCallOptions): Promise<GetBulkActionResponse>;
  /** One page of the caller's bulk actions, newest first. */
  listBulkActions(request?: ListBulkActionsInput, options?: FlowstateCallOptions): Promise<ListBulkActionsResponse>;
  /** One page of a bulk action's per-flow results (optionally one outcome). */
  listBulkActionResults(request: ListBulkActionResultsInput, options?: FlowstateCallOptions): Promise<ListBulkActionResultsResponse>;
  /** Every per-flow result of a bulk action (optionally one outcome), fetching pages lazily. */
  bulkActionResults(request: ListBulkActionResultsInput, options?: FlowstateCallOptions): AsyncGenerator<BulkFlowResult, void, undefined>;
  /** Cancels a running bulk action (flows not taken yet are left alone). */
  cancelBulkAction(request: CancelBulkActionInput, options?: FlowstateCallOptions): Promise<CancelBulkActionResponse>;
  /** The bulk action now and at every change of its progress, until it is finished. */
  watchBulkAction(bulkActionId: string, options?: CallOptions): AsyncGenerator<BulkAction, void, undefined>;

  /**
   * Starts a child_flow phase following an existing root flow of the tenant instead of a new
   * child (docs/child_flows.md). `getFlow({ flowId, childrenDepth })` returns a flow's tree.
   */
  linkChildFlow(request: LinkChildFlowInput, options?: FlowstateCallOptions): Promise<LinkChildFlowResponse>;
  /** Every flow matching the filters of `request` (its page token is ignored), fetching pages lazily. */
  flows(request?: ListFlowsInput, options?: FlowstateCallOptions): AsyncGenerator<Flow, void, undefined>;
  /** Every history entry of a flow after `afterVersion`, fetching pages lazily. */
  history(flowId: string, options?: { afterVersion?: bigint | number; pageSize?: number } & FlowstateCallOptions): AsyncGenerator<HistoryEntry, void, undefined>;
  /** The events of one flow, resumed across disconnects; ends after the terminal event unless `keepOpen`. */
  watch(flowId: string, options?: WatchOptions): AsyncGenerator<FlowEvent, void, undefined>;
  /** The events of the caller's flows, resumed by cursor across disconnects; never ends by itself. */
  watchFlows(options?: WatchFlowsOptions): AsyncGenerator<FlowsEvent, void, undefined>;
  /**
   * The events of a flow and its child flows (and, with `includeDependencies`, of the phases its
   * tree's external dependencies wait for), resumed by cursor; each response carries the event,
   * its `relation`, a descendant's `parentFlowId`, the `waiting` phases and the `cursor`. Ends
   * after the flow's terminal transaction unless `keepOpen` (docs/child_flows.md).
   */
  watchTree(flowId: string, options?: WatchTreeOptions): AsyncGenerator<WatchFlowResponse, void, undefined>;
  /** A flow with its child flows down to `depth` levels (1-5, default 5), as `flowstate flows tree` draws it. */
  getFlowTree(flowId: string, options?: { depth?: number } & FlowstateCallOptions): Promise<FlowTree>;
  /** The generated Connect client on the same connection (no retries, raw ConnectErrors). */
  readonly raw: Client<typeof FlowStateService>;
  /** The base URL the client talks to. */
  readonly baseUrl: string;
  /**
   * Closes the connection. A locally closed client is final: open `watch()`/`watchFlows()`
   * iterations end (`for await` finishes), promptly, also while waiting to reconnect; calls in
   * flight and later calls reject with a CANCELLED `FlowstateError`.
   */
  close(): void;
}

/** What executing a recovery option answers (`executeRecovery()`): the flow after the action and the history it recorded. */
export interface RecoveryResult {
  flow?: Flow;
  historyEntries: HistoryEntry[];
}

/** A flow with its descendants (`getFlowTree()`), level by level. */
export interface FlowTree {
  /** The flow asked for. */
  flow: Flow;
  /** Its child flows down to the asked depth; each names its parent (`parentFlowId`). */
  descendants: Flow[];
  /** Whether the server cut the descendants at its limit (500). */
  truncated: boolean;
  /** The direct children of `flowId` among the descendants, oldest first. */
  children(flowId: string): Flow[];
}

function flowTree(response: GetFlowResponse): FlowTree {
  const descendants = response.descendants;
  return {
    flow: response.flow!,
    descendants,
    truncated: response.descendantsTruncated,
    children: (flowId) => descendants.filter((f) => f.parentFlowId === flowId),
  };
}

const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[?::1\]?)$/i;

/** The base URL for an address (`host:port` or URL) and whether it is a loopback host. */
export function resolveAddress(address: string, tls: boolean): { baseUrl: string; loopback: boolean } {
  const baseUrl = address.includes("://") ? address : `${tls ? "https" : "http"}://${address}`;
  const url = new URL(baseUrl);
  return { baseUrl: url.origin, loopback: LOOPBACK.test(url.hostname) };
}

/** The error of a call on (or interrupted by) a closed client. */
function closedError(): FlowstateError {
  return new FlowstateError({ code: "UNSPECIFIED", grpcCode: Code.Canceled, message: "the client is closed" });
}

function readPem(env: Record<string, string | undefined>, name: string): Buffer | undefined {
  const path = env[name];
  if (!path) return undefined;
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`${name}=${path}: cannot read it (${(err as Error).message})`);
  }
}

/** `options` with the settings it leaves unset taken from the environment (see `env`). */
export function withEnvironment(options: FlowstateClientOptions): FlowstateClientOptions {
  const env = options.env === false ? {} : (options.env ?? process.env);
  const resolved: FlowstateClientOptions = { ...options };
  resolved.address = options.address ?? (env.FLOWSTATE_ADDRESS || undefined);
  if (options.token === undefined && options.tokenProvider === undefined && env.FLOWSTATE_TOKEN) {
    resolved.token = env.FLOWSTATE_TOKEN;
  }
  if (options.tls === undefined) {
    const ca = readPem(env, "FLOWSTATE_TLS_CA_FILE");
    const cert = readPem(env, "FLOWSTATE_TLS_CERT_FILE");
    const key = readPem(env, "FLOWSTATE_TLS_KEY_FILE");
    if (ca !== undefined || cert !== undefined || key !== undefined) {
      resolved.tls = { ca, cert, key };
    } else if (["1", "true", "yes", "on"].includes((env.FLOWSTATE_TLS ?? "").trim().toLowerCase())) {
      resolved.tls = true;
    }
  }
  return resolved;
}

/**
 * The error of a call the caller aborted, the same whether the abort came during an attempt or
 * during the wait before the next: CANCELLED with the signal's reason as message and cause (a
 * `ConnectError` reason, e.g. a deadline, keeps its own code).
 */
function abortError(reason: unknown): FlowstateError {
  if (reason instanceof ConnectError) return toFlowstateError(reason);
  const message = reason instanceof Error ? reason.message : String(reason);
  return toFlowstateError(new ConnectError(message, Code.Canceled, undefined, undefined, reason));
}

/** Creates a Flowstate client (see `FlowstateClientOptions`). */
export function createFlowstateClient(given: FlowstateClientOptions = {}): FlowstateClient {
  const options = withEnvironment(given);
  const tls = options.tls !== undefined && options.tls !== false;
  const { baseUrl, loopback } = resolveAddress(options.address ?? DEFAULT_ADDRESS, tls);
  const secure = baseUrl.startsWith("https:");
  if (!secure && !loopback && !options.allowInsecure) {
    throw new Error(
      `refusing plaintext to ${baseUrl}: the bearer token would travel unencrypted; ` +
        "set tls (or allowInsecure: true on a trusted network)",
    );
  }
  const retryPolicy = resolveRetryPolicy(options.retry, DEFAULT_RETRY_POLICY);
  const watchPolicy = resolveRetryPolicy(options.watchRetry, DEFAULT_WATCH_RETRY_POLICY);
  const timeoutMs = options.timeoutMs ?? 30_000;

  const tokenOf: TokenProvider | undefined =
    options.tokenProvider ?? (options.token !== undefined ? () => options.token ?? "" : undefined);
  const auth: Interceptor = (next) => async (request) => {
    request.header.set(CLIENT_HEADER, `typescript/${VERSION}`);
    if (tokenOf !== undefined) {
      const token = await tokenOf();
      if (token) request.header.set("authorization", `Bearer ${token}`);
    }
    return next(request);
  };

  const nodeOptions: http2.SecureClientSessionOptions = typeof options.tls === "object" ? { ...options.tls } : {};
  const sessionManager = new Http2SessionManager(baseUrl, options.http2 ?? {}, nodeOptions);
  const transport = createGrpcTransport({
    baseUrl,
    sessionManager,
    interceptors: [auth, ...(options.interceptors ?? [])],
  });
  const raw = createClient(FlowStateService, transport);
  const closed = new AbortController();

  async function unary<D extends DescMessage, R>(
    schema: D,
    input: MessageInitShape<D>,
    call: (request: MessageShape<D>, callOptions: CallOptions) => Promise<R>,
    mutation: boolean,
    callOptions: FlowstateCallOptions = {},
  ): Promise<R> {
    const request = create(schema, input);
    if (mutation) {
      const withId = request as MessageShape<D> & { requestId: string };
      if (!withId.requestId) withId.requestId = randomUUID();
    }
    const { retry, ...connectOptions } = callOptions;
    const policy = retry === undefined ? retryPolicy : resolveRetryPolicy(retry, retryPolicy);
    const state = new RetryState(policy);
    const signal =
      connectOptions.signal === undefined ? closed.signal : AbortSignal.any([connectOptions.signal, closed.signal]);
    for (;;) {
      state.begin();
      try {
        if (closed.signal.aborted) throw closedError();
        return await call(request, {
          ...connectOptions,
          signal,
          timeoutMs: state.attemptTimeoutMs(connectOptions.timeoutMs ?? timeoutMs),
        });
      } catch (err) {
        if (closed.signal.aborted) throw closedError();
        if (signal.aborted) throw abortError(signal.reason);
        const error = uncancelled(toFlowstateError(err));
        const delay = state.nextDelayMs(error, retryableUnary(error));
        if (delay === undefined) throw error;
        try {
          await sleep(delay, signal);
        } catch (abortReason) {
          if (closed.signal.aborted) throw closedError();
          throw abortError(abortReason);
        }
      }
    }
  }

  const client: FlowstateClient = {
    raw,
    baseUrl,
    createFlow: (request = {}, o) => unary(CreateFlowRequestSchema, request, (r, c) => raw.createFlow(r, c), true, o),
    getFlow: (request, o) => unary(GetFlowRequestSchema, request, (r, c) => raw.getFlow(r, c), false, o),
    listFlows: (request = {}, o) => unary(ListFlowsRequestSchema, request, (r, c) => raw.listFlows(r, c), false, o),
    validateTransition: (request, o) =>
      unary(ValidateTransitionRequestSchema, request, (r, c) => raw.validateTransition(r, c), false, o),
    transitionPhase: (request, o) =>
      unary(TransitionPhaseRequestSchema, request, (r, c) => raw.transitionPhase(r, c), true, o),
    updatePhaseProgress: (request, o) =>
      unary(UpdatePhaseProgressRequestSchema, request, (r, c) => raw.updatePhaseProgress(r, c), true, o),
    heartbeat: (request, o) => unary(HeartbeatRequestSchema, request, (r, c) => raw.heartbeat(r, c), false, o),
    rollback: (request, o) => unary(RollbackRequestSchema, request, (r, c) => raw.rollback(r, c), true, o),
    retry: (request, o) => unary(RetryRequestSchema, request, (r, c) => raw.retry(r, c), true, o),
    getRecoveryOptions: (request, o) =>
      unary(GetRecoveryOptionsRequestSchema, request, (r, c) => raw.getRecoveryOptions(r, c), false, o),
    async executeRecovery(option, o) {
      const request = option.request;
      // A copy: the request id goes into it, not into the caller's option.
      const sent = await (async () => {
        switch (request.case) {
          case "retry":
            return client.retry(clone(RetryRequestSchema, request.value), o);
          case "rollback":
            return client.rollback(clone(RollbackRequestSchema, request.value), o);
          case "transitionPhase":
            return client.transitionPhase(clone(TransitionPhaseRequestSchema, request.value), o);
          case "resumeFlow":
            return client.resumeFlow(clone(ResumeFlowRequestSchema, request.value), o);
          case "cancelFlow":
            return client.cancelFlow(clone(CancelFlowRequestSchema, request.value), o);
          case "pauseFlow":
            return client.pauseFlow(clone(PauseFlowRequestSchema, request.value), o);
          case "skipPhase":
            return client.skipPhase(clone(SkipPhaseRequestSchema, request.value), o);
          case undefined:
            throw new TypeError(`recovery option ${RecoveryAction[option.action]} carries no request`);
        }
      })();
      return { flow: sent.flow, historyEntries: sent.historyEntries };
    },
    pauseFlow: (request, o) => unary(PauseFlowRequestSchema, request, (r, c) => raw.pauseFlow(r, c), true, o),
    resumeFlow: (request, o) => unary(ResumeFlowRequestSchema, request, (r, c) => raw.resumeFlow(r, c), true, o),
    cancelFlow: (request, o) => unary(CancelFlowRequestSchema, request, (r, c) => raw.cancelFlow(r, c), true, o),
    listFlowHistory: (request, o) =>
      unary(ListFlowHistoryRequestSchema, request, (r, c) => raw.listFlowHistory(r, c), false, o),
    getFlowDefinition: (request = {}, o) =>
      unary(GetFlowDefinitionRequestSchema, request, (r, c) => raw.getFlowDefinition(r, c), false, o),
    createFlowDefinition: (request, o) =>
      unary(CreateFlowDefinitionRequestSchema, request, (r, c) => raw.createFlowDefinition(r, c), true, o),
    listFlowDefinitions: (request = {}, o) =>
      unary(ListFlowDefinitionsRequestSchema, request, (r, c) => raw.listFlowDefinitions(r, c), false, o),
    async *definitions(listOptions = {}) {
      const { name, pageSize, ...callOptions } = listOptions;
      let pageToken = "";
      do {
        const page = await client.listFlowDefinitions({ name, pageSize, pageToken }, callOptions);
        yield* page.definitions;
        pageToken = page.nextPageToken;
      } while (pageToken);
    },
    skipPhase: (request, o) => unary(SkipPhaseRequestSchema, request, (r, c) => raw.skipPhase(r, c), true, o),
    createWebhook: (request, o) => unary(CreateWebhookRequestSchema, request, (r, c) => raw.createWebhook(r, c), false, o),
    listWebhooks: (o) => unary(ListWebhooksRequestSchema, {}, (r, c) => raw.listWebhooks(r, c), false, o),
    deleteWebhook: (request, o) => unary(DeleteWebhookRequestSchema, request, (r, c) => raw.deleteWebhook(r, c), false, o),
    testWebhook: (request, o) => unary(TestWebhookRequestSchema, request, (r, c) => raw.testWebhook(r, c), false, o),
    replayWebhook: (request, o) => unary(ReplayWebhookRequestSchema, request, (r, c) => raw.replayWebhook(r, c), false, o),
    getRetentionPolicy: (o) =>
      unary(GetRetentionPolicyRequestSchema, {}, (r, c) => raw.getRetentionPolicy(r, c), false, o),
    setRetentionPolicy: (request, o) =>
      unary(SetRetentionPolicyRequestSchema, request, (r, c) => raw.setRetentionPolicy(r, c), false, o),
    decidePhase: (request, o) => unary(DecidePhaseRequestSchema, request, (r, c) => raw.decidePhase(r, c), true, o),
    countFlows: (request = {}, o) => unary(CountFlowsRequestSchema, request, (r, c) => raw.countFlows(r, c), false, o),
    startBulkAction: (request, o) =>
      unary(StartBulkActionRequestSchema, request, (r, c) => raw.startBulkAction(r, c), true, o),
    getBulkAction: (request, o) => unary(GetBulkActionRequestSchema, request, (r, c) => raw.getBulkAction(r, c), false, o),
    listBulkActions: (request = {}, o) =>
      unary(ListBulkActionsRequestSchema, request, (r, c) => raw.listBulkActions(r, c), false, o),
    listBulkActionResults: (request, o) =>
      unary(ListBulkActionResultsRequestSchema, request, (r, c) => raw.listBulkActionResults(r, c), false, o),
    async *bulkActionResults(request, callOptions) {
      let pageToken = "";
      do {
        const page = await client.listBulkActionResults({ ...request, pageToken }, callOptions);
        yield* page.results;
        pageToken = page.nextPageToken;
      } while (pageToken);
    },
    cancelBulkAction: (request, o) =>
      unary(CancelBulkActionRequestSchema, request, (r, c) => raw.cancelBulkAction(r, c), false, o),
    async *watchBulkAction(bulkActionId, callOptions) {
      const request = create(WatchBulkActionRequestSchema, { bulkActionId });
      try {
        for await (const response of raw.watchBulkAction(request, callOptions)) {
          if (response.bulkAction) yield response.bulkAction;
        }
      } catch (err) {
        throw toFlowstateError(ConnectError.from(err));
      }
    },
    linkChildFlow: (request, o) =>
      unary(LinkChildFlowRequestSchema, request, (r, c) => raw.linkChildFlow(r, c), true, o),
    async *flows(request = {}, callOptions) {
      let pageToken = "";
      do {
        const page = await client.listFlows({ ...request, pageToken }, callOptions);
        yield* page.flows;
        pageToken = page.nextPageToken;
      } while (pageToken);
    },
    async *history(flowId, historyOptions = {}) {
      const { afterVersion, pageSize, ...callOptions } = historyOptions;
      let pageToken = "";
      do {
        const page = await client.listFlowHistory(
          { flowId, afterVersion: afterVersion === undefined ? 0n : BigInt(afterVersion), pageSize, pageToken },
          callOptions,
        );
        yield* page.historyEntries;
        pageToken = page.nextPageToken;
      } while (pageToken);
    },
    watch: (flowId, watchOptions = {}) =>
      watchFlow(raw, flowId, watchOptions, resolveRetryPolicy(watchOptions.retry, watchPolicy), closed.signal),
    watchFlows: (watchOptions = {}) =>
      watchFlows(raw, watchOptions, resolveRetryPolicy(watchOptions.retry, watchPolicy), closed.signal),
    watchTree: (flowId, watchOptions = {}) =>
      watchTree(raw, flowId, watchOptions, resolveRetryPolicy(watchOptions.retry, watchPolicy), closed.signal),
    getFlowTree: async (flowId, treeOptions = {}) => {
      const { depth, ...callOptions } = treeOptions;
      const response = await client.getFlow({ flowId, childrenDepth: depth ?? MAX_CHILDREN_DEPTH }, callOptions);
      return flowTree(response);
    },
    close: () => {
      closed.abort(closedError());
      sessionManager.abort();
    },
  };
  return client;
}
