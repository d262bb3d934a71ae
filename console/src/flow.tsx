/**
 * A flow: the phase DAG with each phase's state, in-phase progress, retries and error context;
 * the recovery actions (GetRecoveryOptions) as buttons with a confirmation; the history
 * timeline. Live: every event of WatchFlow reloads what it shows.
 *
 * Each action is sent exactly as GetRecoveryOptions described it, including `expected_version`
 * (the version the page showed), so an action confirmed on a stale page fails with
 * VERSION_CONFLICT instead of overwriting what happened meanwhile; the page says so in words.
 *
 * A phase in WAITING_APPROVAL gets approve / request changes / reject buttons when the token has
 * flows:approve (DecidePhase, docs/approvals.md), each confirmed with a comment box; the last
 * decision shows on the phase. The flow's alerts in force (a passed deadline, stuck, an approval
 * timeout) show as badges next to its status.
 *
 * In a tree of flows (docs/child_flows.md) the page also shows its ancestors, its descendants
 * (to a chosen depth), the child each child_flow phase follows and the other flows its phases
 * wait for; the page's WatchFlow is a tree stream over all of them, and its ancestors are
 * watched too (tree.tsx).
 */
import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import {
  ApprovalDecision,
  DecidePhaseRequestSchema,
  ErrorCode,
  FlowStatus,
  PauseFlowRequestSchema,
  PhaseDefinitionSchema,
  PhaseKind,
  PhaseState,
  RecoveryAction,
  type Flow,
  type FlowDefinition,
  type FlowStateService,
  type HistoryEntry,
  type RecoveryOption,
} from "../../clients/typescript/src/gen/flowstate/v1/index.js";
import { describeError, errorCode, type Session } from "./api.js";
import { Dag } from "./dag.js";
import {
  actionName,
  alertName,
  decisionName,
  duration,
  kindName,
  stateClass,
  stateName,
  statusClass,
  statusName,
  TERMINAL,
  when,
} from "./format.js";
import { ChildOfPhase, Children, DEFAULT_DEPTH, ExternalDependencies, Lineage, loadRelated, useWatchRelated, type Related } from "./tree.js";

type Api = Client<typeof FlowStateService>;

interface Loaded {
  flow: Flow;
  definition: FlowDefinition | undefined;
  history: HistoryEntry[];
  options: RecoveryOption[];
  related: Related;
}

/** What the user is asked to confirm: a description and the call that performs it. */
interface Pending {
  title: string;
  change: string;
  /** What `version` is of: "the flow", or a child flow. */
  subject?: string;
  version: bigint;
  /** Whether the dialog asks for a comment (passed to `run`). */
  comment?: boolean;
  run: (comment: string) => Promise<unknown>;
}

const DECISIONS: Array<{ decision: ApprovalDecision; label: string; target: PhaseState }> = [
  { decision: ApprovalDecision.APPROVE, label: "approve", target: PhaseState.COMPLETED },
  { decision: ApprovalDecision.REQUEST_CHANGES, label: "request changes", target: PhaseState.IN_PROGRESS },
  { decision: ApprovalDecision.REJECT, label: "reject", target: PhaseState.FAILED },
];

const MAX_HISTORY = 1000;

async function load(api: Api, flowId: string, childrenDepth: number): Promise<Loaded> {
  const [{ flow, descendants, descendantsTruncated }, { options }] = await Promise.all([
    api.getFlow({ flowId, childrenDepth }),
    api.getRecoveryOptions({ flowId }),
  ]);
  if (!flow) throw new Error("The server sent no flow.");
  const related = await loadRelated(api, flow, descendants, descendantsTruncated);
  const history: HistoryEntry[] = [];
  let pageToken = "";
  do {
    const page = await api.listFlowHistory({ flowId, pageSize: 500, pageToken });
    history.push(...page.historyEntries);
    pageToken = page.nextPageToken;
  } while (pageToken && history.length < MAX_HISTORY);
  let definition: FlowDefinition | undefined;
  try {
    definition = (await api.getFlowDefinition({ name: flow.definitionName, version: flow.definitionVersion })).definition;
  } catch {
    definition = undefined; // drawn from the flow's phases alone
  }
  return { flow, definition, history, options, related };
}

/**
 * Title and change of an option. A parent's options include those of its active children (and
 * theirs), each naming the flow it acts on (`flow_id`) and the parent phase following it: those
 * say so, and describe the child's phase and status (`target`, when the page read it).
 */
function describeOption(
  option: RecoveryOption,
  flow: Flow,
  downstream: Map<string, string[]>,
  related: Related,
): { title: string; change: string; subject: string; version: bigint } {
  if (option.flowId && option.flowId !== flow.flowId) {
    const target = related.descendants.find((d) => d.flowId === option.flowId);
    const own = describeOwnOption(option, target, new Map());
    const name = target?.displayName || option.flowId.slice(0, 8);
    return {
      title: `${own.title} in child of ${option.parentPhase || "?"}`,
      change: `In child flow ${name} (followed by phase ${option.parentPhase}): ${own.change}`,
      subject: `child flow ${name}`,
      version: target?.version ?? optionVersion(option),
    };
  }
  return { ...describeOwnOption(option, flow, downstream), subject: "the flow", version: flow.version };
}

/** The `expected_version` an option's request carries (0 when none). */
function optionVersion(option: RecoveryOption): bigint {
  const request = option.request.value as { expectedVersion?: bigint } | undefined;
  return request?.expectedVersion ?? 0n;
}

function describeOwnOption(
  option: RecoveryOption,
  flow: Flow | undefined,
  downstream: Map<string, string[]>,
): { title: string; change: string } {
  const action = actionName(option.action);
  if (option.phase) {
    const phase = flow?.phases.find((p) => p.name === option.phase);
    const from = phase ? stateName(phase.state) : "?";
    let change = `Phase ${option.phase} goes from ${from} to ${stateName(option.targetState)}.`;
    if (option.action === RecoveryAction.ROLLBACK && option.request.case === "rollback") {
      const cascade = option.request.value.cascade;
      const also = downstream.get(option.phase) ?? [];
      change += cascade && also.length ? ` Rolled back with it (cascade): ${also.join(", ")}.` : " No other phase changes.";
    }
    if (option.attemptsRemaining !== undefined) change += ` Attempts left: ${option.attemptsRemaining}.`;
    return { title: `${action} ${option.phase}`, change };
  }
  const from = flow ? statusName(flow.status) : "its status";
  return { title: action, change: `The flow goes from ${from} to ${statusName(option.targetStatus)}.` };
}

/** For each phase, the started phases downstream of it (what a cascading rollback also rolls back). */
function computeDownstream(definition: FlowDefinition | undefined, flow: Flow): Map<string, string[]> {
  const result = new Map<string, string[]>();
  if (!definition) return result;
  const started = new Set(flow.phases.filter((p) => p.state !== PhaseState.NOT_STARTED).map((p) => p.name));
  for (const root of definition.phases) {
    const seen = new Set<string>();
    const walk = (name: string) => {
      for (const p of definition.phases) {
        if (p.dependsOn.includes(name) && !seen.has(p.name)) {
          seen.add(p.name);
          walk(p.name);
        }
      }
    };
    walk(root.name);
    result.set(root.name, [...seen].filter((n) => started.has(n)));
  }
  return result;
}

function send(api: Api, option: RecoveryOption): Promise<unknown> {
  const requestId = crypto.randomUUID();
  const r = option.request;
  switch (r.case) {
    case "retry":
      return api.retry({ ...r.value, requestId });
    case "rollback":
      return api.rollback({ ...r.value, requestId });
    case "transitionPhase":
      return api.transitionPhase({ ...r.value, requestId });
    case "resumeFlow":
      return api.resumeFlow({ ...r.value, requestId });
    case "cancelFlow":
      return api.cancelFlow({ ...r.value, requestId });
    case "pauseFlow":
      return api.pauseFlow({ ...r.value, requestId });
    case "skipPhase":
      return api.skipPhase({ ...r.value, requestId });
    default:
      return Promise.reject(new Error("This option carries no request the console knows how to send."));
  }
}

function allowedByScopes(option: RecoveryOption, session: Session): boolean {
  if (option.action === RecoveryAction.FORCE_RETRY) return session.scopes.has("flows:admin");
  return session.scopes.has("flows:write");
}

export function FlowPage({ api, session, flowId }: { api: Api; session: Session; flowId: string }) {
  const [data, setData] = useState<Loaded | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<{ ok: boolean; text: string } | null>(null);
  const [pending, setPending] = useState<Pending | null>(null);
  const [busy, setBusy] = useState(false);
  const [comment, setComment] = useState("");
  const [live, setLive] = useState(false);
  const [depth, setDepth] = useState(DEFAULT_DEPTH);
  const depthRef = useRef(depth);
  const reloading = useRef<Promise<void> | null>(null);
  const again = useRef(false);

  const reload = useCallback(async () => {
    if (reloading.current) {
      again.current = true; // one more load after the current one: never miss the last change
      return;
    }
    const run = async () => {
      do {
        again.current = false;
        try {
          setData(await load(api, flowId, depthRef.current));
          setError(null);
        } catch (err) {
          setError(describeError(err));
        }
      } while (again.current);
    };
    reloading.current = run().finally(() => (reloading.current = null));
  }, [api, flowId]);

  useEffect(() => {
    setData(null);
    void reload();
  }, [reload]);

  // One tree stream (WatchFlow with children_depth and include_dependencies: the flow, its
  // descendants down to the depth shown, the flows its dependencies name), resumed by cursor;
  // a tree too large for one stream (MALFORMED_REQUEST) falls back to the flow alone.
  useEffect(() => {
    const abort = new AbortController();
    (async () => {
      let tree = true;
      let cursor = "";
      let after: bigint | undefined;
      for (let attempt = 0; !abort.signal.aborted; attempt++) {
        try {
          const request = tree
            ? { flowId, keepOpen: true, childrenDepth: depth, includeDependencies: true, cursor }
            : { flowId, keepOpen: true, afterVersion: after };
          for await (const response of api.watchFlow(request, { signal: abort.signal })) {
            attempt = 0;
            setLive(true);
            if (response.cursor) cursor = response.cursor;
            const event = response.event;
            if (!event || event.kind.case === "heartbeat") continue;
            if (!tree) after = event.flowVersion;
            void reload();
          }
        } catch (err) {
          if (abort.signal.aborted) return;
          if (tree && errorCode(err) === "MALFORMED_REQUEST") {
            tree = false;
            attempt = -1;
            continue;
          }
        }
        setLive(false);
        await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * 2 ** attempt)));
      }
    })();
    return () => abort.abort();
  }, [api, flowId, depth, reload]);

  useWatchRelated(api, data ? data.related.ancestors.map((a) => a.flowId) : [], reload);
  const changeDepth = (next: number) => {
    depthRef.current = next;
    setDepth(next);
    void reload();
  };

  if (error && !data) return <p class="error" role="alert">{error}</p>;
  if (!data) return <p>Loading…</p>;
  const { flow, definition, history, options, related } = data;
  const kindOf = new Map((definition?.phases ?? []).map((p) => [p.name, p.kind]));
  const followsChild = (name: string, childId: string) => childId !== "" || kindOf.get(name) === PhaseKind.CHILD_FLOW;
  const hasChildren = related.descendants.length > 0 || flow.phases.some((p) => followsChild(p.name, p.childFlowId));
  const canWrite = session.scopes.has("flows:write");
  const canApprove = session.scopes.has("flows:approve");
  const waiting = flow.phases.filter((p) => p.state === PhaseState.WAITING_APPROVAL);
  const downstream = computeDownstream(definition, flow);
  // Without its definition (not readable), the phases are drawn in their order.
  const phaseDefs =
    definition?.phases ??
    flow.phases.map((p, i) =>
      create(PhaseDefinitionSchema, { name: p.name, dependsOn: i > 0 ? [flow.phases[i - 1]?.name ?? ""] : [], weight: p.weight, maxRetries: p.maxRetries }),
    );
  const visible = options.filter((o) => allowedByScopes(o, session));
  const offersPause = options.some((o) => o.request.case === "pauseFlow");

  const confirm = (p: Pending) => {
    setNotice(null);
    setComment("");
    setPending(p);
  };
  const execute = async () => {
    if (!pending) return;
    setBusy(true);
    try {
      await pending.run(comment);
      setNotice({ ok: true, text: `Done: ${pending.title}.` });
    } catch (err) {
      setNotice({ ok: false, text: describeError(err) });
    } finally {
      setBusy(false);
      setPending(null);
      void reload();
    }
  };

  return (
    <section class="flow">
      <h1>
        {flow.displayName || "Flow"} <span class="sub">{flow.flowId}</span>
      </h1>
      <p class="summary">
        <span class={`badge ${statusClass(flow.status)}`} data-testid="flow-status">
          {statusName(flow.status)}
        </span>{" "}
        <span class="bar wide">
          <span style={{ width: `${Math.min(100, flow.progress)}%` }} />
        </span>{" "}
        {flow.alerts.map((a) => (
          <span key={`${a.kind}-${a.phase}`} class="badge alert" data-testid="alert" title={a.message}>
            {alertName(a.kind)}
            {a.phase ? `: ${a.phase}` : ""}
          </span>
        ))}{" "}
        <span data-testid="flow-progress">{flow.progress.toFixed(1)}%</span> · {flow.definitionName} v{flow.definitionVersion} · version{" "}
        <span data-testid="flow-version">{String(flow.version)}</span> · updated {when(flow.updateTime)}{" "}
        <span class={`live ${live ? "ok" : "bad"}`}>{live ? "● live" : "○ reconnecting"}</span>
      </p>
      <Lineage flow={flow} ancestors={related.ancestors} />
      {error && <p class="error" role="alert">{error}</p>}
      {notice && (
        <p class={notice.ok ? "notice" : "error"} role={notice.ok ? "status" : "alert"} data-testid="notice">
          {notice.text}
        </p>
      )}

      <h2>Phases</h2>
      <div class="dagbox">
        <Dag definition={phaseDefs} phases={flow.phases} />
      </div>
      <table class="phases">
        <thead>
          <tr>
            <th>Phase</th>
            <th>State</th>
            <th>In-phase progress</th>
            <th>Retries</th>
            <th>Error</th>
            <th>Approval</th>
          </tr>
        </thead>
        <tbody>
          {flow.phases.map((p) => (
            <tr key={p.name} data-phase={p.name}>
              <td>
                {p.name}
                {followsChild(p.name, p.childFlowId) && <ChildOfPhase childId={p.childFlowId} related={related} />}
              </td>
              <td>
                <span class={`badge ${stateClass(p.state)}`} data-testid="phase-state">
                  {stateName(p.state)}
                </span>
              </td>
              <td>
                <div class="bar">
                  <div style={{ width: `${Math.round(p.progress * 100)}%` }} />
                </div>
                {Math.round(p.progress * 100)}%
              </td>
              <td>
                {p.retryCount} / {p.maxRetries}
                {p.lastRetryTime && <div class="sub">last {when(p.lastRetryTime)}</div>}
              </td>
              <td class="errctx">
                {p.errorContext && p.errorContext.errorCode !== ErrorCode.UNSPECIFIED && (
                  <>
                    <strong>{(ErrorCode[p.errorContext.errorCode] ?? "").toLowerCase().replace(/_/g, " ")}</strong>
                    {p.errorContext.retryable ? " (retryable)" : " (not retryable)"}: {p.errorContext.message}
                    {p.errorContext.details && Object.keys(p.errorContext.details).length > 0 && (
                      <div class="sub">{Object.entries(p.errorContext.details).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(" · ")}</div>
                    )}
                  </>
                )}
              </td>
              <td class="approval" data-testid="approval">
                {p.approval && p.approval.decision !== ApprovalDecision.UNSPECIFIED && (
                  <>
                    <strong>{decisionName(p.approval.decision)}</strong> by {p.approval.approver} {when(p.approval.decideTime)}
                    {p.approval.comment && <div class="sub">“{p.approval.comment}”</div>}
                  </>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>

      {hasChildren && <Children flow={flow} related={related} depth={depth} onDepth={changeDepth} />}
      <ExternalDependencies flow={flow} related={related} />

      {waiting.length > 0 && (
        <>
          <h2>Approval</h2>
          {canApprove ? (
            <div class="actions" data-testid="approvals">
              {waiting.flatMap((p) =>
                DECISIONS.map(({ decision, label, target }) => (
                  <div class="option" key={`${p.name}-${label}`}>
                    <button
                      type="button"
                      data-decision={ApprovalDecision[decision]?.toLowerCase()}
                      data-phase={p.name}
                      disabled={busy}
                      onClick={() =>
                        confirm({
                          title: `${label} ${p.name}`,
                          change: `Phase ${p.name} goes from waiting approval to ${stateName(target)}; you (${session.user}) are recorded as the approver.`,
                          version: flow.version,
                          comment: true,
                          run: (text) =>
                            api.decidePhase(
                              create(DecidePhaseRequestSchema, {
                                flowId: flow.flowId,
                                phase: p.name,
                                decision,
                                comment: text,
                                requestId: crypto.randomUUID(),
                                expectedVersion: flow.version,
                              }),
                            ),
                        })
                      }
                    >
                      {label} {p.name}
                    </button>
                  </div>
                )),
              )}
            </div>
          ) : (
            <p class="sub" data-testid="no-approve">
              {waiting.map((p) => p.name).join(", ")} {waiting.length > 1 ? "wait" : "waits"} for approval; deciding needs the
              flows:approve scope, which your token does not have.
            </p>
          )}
        </>
      )}

      <h2>Recovery</h2>
      {canWrite ? (
        <div class="actions" data-testid="actions">
          {visible.map((o, i) => {
            const d = describeOption(o, flow, downstream, related);
            return (
              <div class="option" key={i}>
                <button
                  type="button"
                  data-action={RecoveryAction[o.action]?.toLowerCase()}
                  data-phase={o.phase}
                  data-flow-id={o.flowId || flow.flowId}
                  disabled={!o.allowed || busy}
                  title={o.allowed ? o.reason : o.blockingDetail}
                  onClick={() => confirm({ ...d, run: () => send(api, o) })}
                >
                  {d.title}
                </button>
                <span class="sub">{o.allowed ? o.reason : `blocked: ${o.blockingDetail}`}</span>
              </div>
            );
          })}
          {!offersPause && !TERMINAL.has(flow.status) && flow.status !== FlowStatus.PAUSED && (
            <div class="option">
              <button
                type="button"
                data-action="pause"
                disabled={busy}
                onClick={() =>
                  confirm({
                    title: "pause",
                    change: `The flow goes from ${statusName(flow.status)} to paused: no phase may start until it is resumed.`,
                    version: flow.version,
                    run: () =>
                      api.pauseFlow(
                        create(PauseFlowRequestSchema, { flowId: flow.flowId, requestId: crypto.randomUUID(), expectedVersion: flow.version, reason: "paused from the console" }),
                      ),
                  })
                }
              >
                pause
              </button>
              <span class="sub">stop new phases from starting</span>
            </div>
          )}
          {visible.length === 0 && TERMINAL.has(flow.status) && <p class="sub">This flow is {statusName(flow.status)}: nothing can change it.</p>}
        </div>
      ) : (
        <p class="sub" data-testid="read-only">
          Your token is read-only ({[...session.scopes].join(", ")}): recovery actions are hidden.
        </p>
      )}

      <h2>History</h2>
      <ol class="timeline">
        {[...history].reverse().map((h) => (
          <li key={String(h.flowVersion) + h.phase + h.kind}>
            <span class="ver">v{String(h.flowVersion)}</span> <span class="time">{when(h.occurTime)}</span>{" "}
            <strong>{kindName(h.kind)}</strong>
            {h.phase && (
              <>
                {" "}
                {h.phase}: {stateName(h.fromState)} → {stateName(h.toState)}
              </>
            )}
            {h.statusBefore !== h.statusAfter && (
              <>
                {" "}
                · flow {statusName(h.statusBefore)} → {statusName(h.statusAfter)}
              </>
            )}{" "}
            · by {h.userId || "?"}
            {h.timeInState && <> · after {duration(Number(h.timeInState.seconds) + h.timeInState.nanos / 1e9)} in the previous state</>}
            {h.reason && <div class="sub">why: {h.reason}</div>}
            {h.errorContext && h.errorContext.message && <div class="sub">error: {h.errorContext.message}</div>}
          </li>
        ))}
      </ol>

      {pending && (
        <div class="modal" role="dialog" aria-modal="true" aria-labelledby="confirm-title">
          <div class="box">
            <h3 id="confirm-title">Confirm: {pending.title}</h3>
            <p data-testid="confirm-change">{pending.change}</p>
            {pending.comment && (
              <p>
                <label>
                  Comment (recorded in history){" "}
                  <textarea
                    name="comment"
                    data-testid="comment"
                    rows={3}
                    maxLength={1024}
                    value={comment}
                    onInput={(e) => setComment((e.target as HTMLTextAreaElement).value)}
                  />
                </label>
              </p>
            )}
            <p class="sub">
              Applies only if {pending.subject ?? "the flow"} is still at version {String(pending.version)} (what this page shows).
            </p>
            <button type="button" class="primary" data-testid="confirm" disabled={busy} onClick={() => void execute()}>
              Confirm
            </button>{" "}
            <button type="button" onClick={() => setPending(null)} disabled={busy}>
              Cancel
            </button>
          </div>
        </div>
      )}
    </section>
  );
}
