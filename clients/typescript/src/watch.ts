/**
 * Resumable status streams: `watch()` (one flow, WatchFlow) and `watchFlows()` (a tenant's
 * flows, WatchFlows) as async iterables that survive disconnects.
 *
 * A stream is resumed after UNAVAILABLE (a dropped connection, a restarting server, a server
 * shutting down: SERVER_SHUTTING_DOWN), after SUBSCRIBER_TOO_SLOW, and after a connection that
 * broke without a status, by opening it again from the last position seen: `afterVersion` = the
 * last flow version for `watch`, the last cursor for `watchFlows` and `watchTree`. The server replays what
 * happened in between from history, so nothing is missed; events at or below a version already
 * delivered are dropped here, so nothing is delivered twice.
 */
import { Code, type Client } from "@connectrpc/connect";

import { FlowstateError, toFlowstateError, uncancelled } from "./errors.js";
import type { FlowEvent, FlowStateService, WatchFlowResponse } from "./gen/flowstate/v1/flow_service_pb.js";
import { FlowStatus } from "./gen/flowstate/v1/states_pb.js";
import { RetryState, sleep, type RetryPolicy } from "./retry.js";

/** Flow statuses after which nothing changes: a watch without `keepOpen` ends after them. */
export const TERMINAL_STATUSES: ReadonlySet<FlowStatus> = new Set([FlowStatus.COMPLETED, FlowStatus.CANCELLED]);

/** Called before each reconnection of a status stream (for logging, metrics, tests). */
export type ReconnectListener = (info: { error: FlowstateError; attempt: number; delayMs: number }) => void;

/** Options of `watch()`. */
export interface WatchOptions {
  /** Resume after this version (replay every later change); unset: start with a snapshot. */
  afterVersion?: bigint | number;
  /** Keep watching after the flow reached a terminal status (the iteration ends there otherwise). */
  keepOpen?: boolean;
  /** Stops the iteration; the pending `next()` rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Also deliver heartbeat events (never deduplicated; they carry no new version). */
  includeHeartbeats?: boolean;
  /** Overrides of the client's reconnection policy for this stream. */
  retry?: Partial<RetryPolicy>;
  /** Called before each reconnection. */
  onReconnect?: ReconnectListener;
}

/** Options of `watchFlows()`. */
export interface WatchFlowsOptions {
  /** Only flows in one of these statuses (after the change). */
  statuses?: FlowStatus[];
  /** Only flows of this definition. */
  definitionName?: string;
  /** Only these flows. */
  flowIds?: string[];
  /** Resume after this cursor (from `FlowsEvent.cursor`); unset: start with snapshots. */
  cursor?: string;
  /** Stops the iteration; the pending `next()` rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Also deliver heartbeat events. */
  includeHeartbeats?: boolean;
  /** Overrides of the client's reconnection policy for this stream. */
  retry?: Partial<RetryPolicy>;
  /** Called before each reconnection. */
  onReconnect?: ReconnectListener;
}

/** The deepest level of child flows `getFlowTree()` and `watchTree()` reach (the server's limit). */
export const MAX_CHILDREN_DEPTH = 5;

/** Options of `watchTree()`. */
export interface WatchTreeOptions {
  /** Levels of child flows to include, 0 to MAX_CHILDREN_DEPTH (default MAX_CHILDREN_DEPTH). */
  childrenDepth?: number;
  /** Also stream the changes of the phases of other flows the tree's external dependencies wait for. */
  includeDependencies?: boolean;
  /** Resume after this cursor (from a response's `cursor`); unset: start with a snapshot per flow. */
  cursor?: string;
  /** Keep watching after the flow reached a terminal status (the iteration ends after its terminal transaction otherwise). */
  keepOpen?: boolean;
  /** Stops the iteration; the pending `next()` rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Also deliver heartbeat events. */
  includeHeartbeats?: boolean;
  /** Overrides of the client's reconnection policy for this stream. */
  retry?: Partial<RetryPolicy>;
  /** Called before each reconnection. */
  onReconnect?: ReconnectListener;
}

/** An event of `watchFlows()`: the flow event and the cursor to resume after it. */
export interface FlowsEvent {
  event: FlowEvent;
  cursor: string;
}

/**
 * Whether a stream that failed with `error` should be opened again from its position: the
 * server or the connection is unavailable, the server is shutting down, the client read too
 * slowly, or the connection broke without any status from the server.
 */
export function isResumable(error: FlowstateError): boolean {
  if (error.grpcCode === Code.Unavailable) return true;
  if (error.code === "SUBSCRIBER_TOO_SLOW") return true;
  const fromServer = error.errorInfo !== undefined || error.flowError !== undefined;
  return !fromServer && [Code.Canceled, Code.Aborted, Code.Internal, Code.Unknown].includes(error.grpcCode);
}

type RawClient = Client<typeof FlowStateService>;

/**
 * Runs one logical stream over as many connections as it takes. `finished` says, after a clean
 * end, that the logical stream is over (`watchTree`: the server ends it after the watched
 * flow's terminal transaction).
 */
async function* resumable<T>(
  open: (signal: AbortSignal) => AsyncIterable<T>,
  accept: (item: T) => "yield" | "skip" | "yield-and-stop",
  policy: RetryPolicy,
  signal: AbortSignal | undefined,
  onReconnect: ReconnectListener | undefined,
  closed: AbortSignal,
  finished: () => boolean = () => false,
): AsyncGenerator<T, void, undefined> {
  const state = new RetryState(policy);
  // The caller's signal or the client's close(): either stops the open stream and the backoff.
  const stop = signal === undefined ? closed : AbortSignal.any([signal, closed]);
  for (;;) {
    if (signal?.aborted) throw signal.reason;
    if (closed.aborted) return; // a locally closed client is final: the iteration ends
    state.begin();
    const controller = new AbortController();
    const abort = (): void => controller.abort(stop.reason);
    stop.addEventListener("abort", abort, { once: true });
    let received = false;
    let failure: FlowstateError | undefined;
    try {
      const iterator = open(controller.signal)[Symbol.asyncIterator]();
      for (;;) {
        let result: IteratorResult<T>;
        try {
          result = await iterator.next();
        } catch (err) {
          if (signal?.aborted) throw signal.reason;
          if (closed.aborted) return;
          failure = uncancelled(toFlowstateError(err));
          break;
        }
        if (result.done) break;
        received = true;
        state.reset();
        const verdict = accept(result.value);
        if (verdict === "skip") continue;
        yield result.value;
        if (verdict === "yield-and-stop") return;
      }
    } finally {
      stop.removeEventListener("abort", abort);
      controller.abort();
    }
    let delay: number | undefined;
    if (failure !== undefined) {
      if (!isResumable(failure)) throw failure;
      delay = state.nextDelayMs(failure, true);
      if (delay === undefined) throw failure;
    } else {
      // A clean end: the server had nothing more to send (or ended after the terminal event).
      // One that delivered something before ending early (e.g. a server draining without a
      // status) is resumed.
      if (!received || finished()) return;
      delay = state.nextBackoffMs();
      if (delay === undefined) return;
    }
    onReconnect?.({
      error:
        failure ??
        new FlowstateError({ code: "UNSPECIFIED", grpcCode: Code.Unavailable, message: "stream ended early; resuming" }),
      attempt: state.attempt,
      delayMs: delay,
    });
    try {
      await sleep(delay, stop);
    } catch (err) {
      if (signal?.aborted || !closed.aborted) throw err;
    }
  }
}

/** The events of one flow, resumed across disconnects (see the module comment). */
export function watchFlow(
  raw: RawClient,
  flowId: string,
  options: WatchOptions,
  policy: RetryPolicy,
  closed: AbortSignal = new AbortController().signal,
): AsyncGenerator<FlowEvent, void, undefined> {
  let last = options.afterVersion === undefined ? undefined : BigInt(options.afterVersion);
  const keepOpen = options.keepOpen ?? false;
  const events = resumable(
    (signal) => raw.watchFlow({ flowId, afterVersion: last, keepOpen }, { signal, timeoutMs: 0 }),
    (response) => {
      const event = response.event;
      if (event === undefined) return "skip";
      if (event.kind.case === "heartbeat") return options.includeHeartbeats ? "yield" : "skip";
      if (last !== undefined && event.flowVersion <= last) return "skip";
      last = event.flowVersion;
      return TERMINAL_STATUSES.has(event.status) && !keepOpen ? "yield-and-stop" : "yield";
    },
    policy,
    options.signal,
    options.onReconnect,
    closed,
  );
  return (async function* () {
    for await (const response of events) {
      if (response.event !== undefined) yield response.event;
    }
  })();
}

/** The events of the caller's flows, resumed by cursor across disconnects. */
export function watchFlows(
  raw: RawClient,
  options: WatchFlowsOptions,
  policy: RetryPolicy,
  closed: AbortSignal = new AbortController().signal,
): AsyncGenerator<FlowsEvent, void, undefined> {
  let cursor = options.cursor ?? "";
  const versions = new Map<string, bigint>();
  const events = resumable(
    (signal) =>
      raw.watchFlows(
        {
          statuses: options.statuses ?? [],
          definitionName: options.definitionName ?? "",
          flowIds: options.flowIds ?? [],
          cursor,
        },
        { signal, timeoutMs: 0 },
      ),
    (response) => {
      if (response.cursor) cursor = response.cursor;
      const event = response.event;
      if (event === undefined) return "skip";
      if (event.kind.case === "heartbeat") return options.includeHeartbeats ? "yield" : "skip";
      const seen = versions.get(event.flowId);
      if (seen !== undefined && event.flowVersion <= seen) return "skip";
      versions.set(event.flowId, event.flowVersion);
      return "yield";
    },
    policy,
    options.signal,
    options.onReconnect,
    closed,
  );
  return (async function* () {
    for await (const response of events) {
      if (response.event !== undefined) yield { event: response.event, cursor: response.cursor };
    }
  })();
}

/**
 * The events of a flow, its child flows down to `childrenDepth` levels and (with
 * `includeDependencies`) the phases its tree's external dependencies wait for, resumed by cursor
 * across disconnects; each response says which flow its event is about (docs/child_flows.md,
 * "Watching a tree").
 */
export function watchTree(
  raw: RawClient,
  flowId: string,
  options: WatchTreeOptions,
  policy: RetryPolicy,
  closed: AbortSignal = new AbortController().signal,
): AsyncGenerator<WatchFlowResponse, void, undefined> {
  let cursor = options.cursor ?? "";
  const keepOpen = options.keepOpen ?? false;
  const versions = new Map<string, bigint>();
  let terminal = false;
  const responses = resumable(
    (signal) =>
      raw.watchFlow(
        {
          flowId,
          keepOpen,
          childrenDepth: options.childrenDepth ?? MAX_CHILDREN_DEPTH,
          includeDependencies: options.includeDependencies ?? false,
          cursor,
        },
        { signal, timeoutMs: 0 },
      ),
    (response) => {
      if (response.cursor) cursor = response.cursor;
      const event = response.event;
      if (event === undefined) return "skip";
      if (event.kind.case === "heartbeat") return options.includeHeartbeats ? "yield" : "skip";
      const seen = versions.get(event.flowId);
      if (seen !== undefined && event.flowVersion <= seen) return "skip";
      versions.set(event.flowId, event.flowVersion);
      if (event.flowId === flowId && TERMINAL_STATUSES.has(event.status)) terminal = true;
      return "yield";
    },
    policy,
    options.signal,
    options.onReconnect,
    closed,
    () => terminal && !keepOpen,
  );
  return responses;
}
