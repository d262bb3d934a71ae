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
  /**
   * Only flows matching this filter expression (the ListFlows language, docs/filters.md),
   * evaluated on each change as the change left the flow; ANDed with the fields above. One that
   * does not parse rejects with MALFORMED_REQUEST (`field` filter, `position`, in `details`).
   */
  filter?: string;
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

/** What every stream's options have: the caller's stop and reconnection listener. */
type StreamOptions = Pick<WatchOptions, "signal" | "onReconnect">;

/**
 * Runs one logical stream over as many connections as it takes. `finished` says, after a clean
 * end, that the logical stream is over (`watchTree`: the server ends it after the watched
 * flow's terminal transaction).
 */
async function* resumable<T>(
  open: (signal: AbortSignal) => AsyncIterable<T>,
  accept: (item: T) => "yield" | "skip" | "yield-and-stop",
  policy: RetryPolicy,
  { signal, onReconnect }: StreamOptions,
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

/**
 * Where a resumable stream stands, the one place its rules live: the cursor to reopen it from,
 * each flow's last version delivered (a replayed one is skipped), and whether the watched flow's
 * terminal event came. `watch()`, `watchFlows()` and `watchTree()` differ only in the request
 * they send, which flow a version belongs to, and whether a terminal event ends them.
 */
class StreamPosition {
  cursor: string;
  terminal = false;
  private readonly versions = new Map<string, bigint>();

  /** `watched`: the flow whose terminal event sets `terminal` (`watchFlows()` reads neither). */
  constructor(
    cursor: string | undefined,
    private readonly watched: string,
    private readonly includeHeartbeats: boolean,
  ) {
    this.cursor = cursor ?? "";
  }

  /** Takes a response's cursor ("" keeps the last one) and its event, a version of flow `key`. */
  accept(cursor: string, event: FlowEvent | undefined, key: string): "yield" | "skip" {
    if (cursor) this.cursor = cursor;
    if (event === undefined) return "skip";
    if (event.kind.case === "heartbeat") return this.includeHeartbeats ? "yield" : "skip";
    const seen = this.versions.get(key);
    if (seen !== undefined && event.flowVersion <= seen) return "skip";
    this.versions.set(key, event.flowVersion);
    if (key === this.watched && TERMINAL_STATUSES.has(event.status)) this.terminal = true;
    return "yield";
  }

  /** `accept` for a stream of several flows: each event's version is of its own flow. */
  acceptOwn(response: { cursor: string; event?: FlowEvent }): "yield" | "skip" {
    return this.accept(response.cursor, response.event, response.event?.flowId ?? "");
  }

  /** The last version delivered of flow `key` (undefined: none yet). */
  lastVersion(key: string): bigint | undefined {
    return this.versions.get(key);
  }

  /** Starts flow `key` after `version` (unset: from its snapshot). */
  startAfter(key: string, version: bigint | number | undefined): void {
    if (version !== undefined) this.versions.set(key, BigInt(version));
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
  const at = new StreamPosition(undefined, flowId, options.includeHeartbeats ?? false);
  at.startAfter(flowId, options.afterVersion);
  const keepOpen = options.keepOpen ?? false;
  const events = resumable(
    // A plain stream resumes by version alone: no cursor.
    (signal) => raw.watchFlow({ flowId, afterVersion: at.lastVersion(flowId), keepOpen }, { signal, timeoutMs: 0 }),
    (response) => {
      // Every version is the watched flow's, however its id was spelt.
      const verdict = at.accept(response.cursor, response.event, flowId);
      return verdict === "yield" && at.terminal && !keepOpen ? "yield-and-stop" : verdict;
    },
    policy,
    options,
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
  const at = new StreamPosition(options.cursor, "", options.includeHeartbeats ?? false);
  const events = resumable(
    (signal) =>
      raw.watchFlows(
        {
          statuses: options.statuses ?? [],
          definitionName: options.definitionName ?? "",
          flowIds: options.flowIds ?? [],
          filter: options.filter ?? "",
          cursor: at.cursor,
        },
        { signal, timeoutMs: 0 },
      ),
    (response) => at.acceptOwn(response),
    policy,
    options,
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
  const at = new StreamPosition(options.cursor, flowId, options.includeHeartbeats ?? false);
  const keepOpen = options.keepOpen ?? false;
  return resumable(
    (signal) =>
      raw.watchFlow(
        {
          flowId,
          keepOpen,
          childrenDepth: options.childrenDepth ?? MAX_CHILDREN_DEPTH,
          includeDependencies: options.includeDependencies ?? false,
          cursor: at.cursor,
        },
        { signal, timeoutMs: 0 },
      ),
    (response) => at.acceptOwn(response),
    policy,
    options,
    closed,
    // The server ends the stream after the watched flow's terminal transaction.
    () => at.terminal && !keepOpen,
  );
}
