/**
 * The board: the tenant's flows, live (WatchFlows: a snapshot of every matching flow, then every
 * change), filtered by status and definition on the server, stuck-only and paged here.
 *
 * "Stuck" and the other alert badges come from the server (Flow.alerts and the stream's alert
 * events: docs/approvals.md), so the board agrees with FLOWSTATE_STUCK_AFTER and its per-status
 * thresholds: a snapshot brings the flow's alerts in force, an alert event adds one, and a change
 * ends a STUCK alert (the flow moved) and, when the flow ends, every alert.
 *
 * Labels (`team=core, env=prod`) become a server-side filter (docs/filters.md): every pair must
 * match. With `flows:admin`, rows can be selected and one bulk action (docs/bulk-actions.md)
 * started on them: StartBulkAction with their ids, then WatchBulkAction until it is finished,
 * whose counts the notice shows.
 *
 * A child flow (docs/child_flows.md) says whose child it is, linked; "top-level only" hides
 * children and "Parent" keeps one flow's children. Both filter here, like "stuck only": the
 * stream's flows carry `parent_flow_id`.
 */
import type { Client } from "@connectrpc/connect";
import { useEffect, useRef, useState } from "preact/hooks";

import {
  AlertKind,
  BulkActionState,
  BulkActionType,
  FlowStatus,
  type FlowStateService,
} from "../../clients/typescript/src/gen/flowstate/v1/index.js";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { describeError, type Session } from "./api.js";
import { ago, alertName, statusClass, statusName, TERMINAL } from "./format.js";
import { link } from "./router.js";

const PAGE_SIZE = 20;

interface Row {
  flowId: string;
  name: string;
  definition: string;
  status: FlowStatus;
  progress: number;
  version: bigint;
  updated: Timestamp | undefined;
  /** The alerts in force, by kind (from the server). */
  alerts: AlertKind[];
  /** The parent's id and the phase of it this flow follows; empty for a root flow. */
  parentFlowId: string;
  parentPhase: string;
}

/** The alerts of a row after `event` (see the module doc). */
function alertsAfter(prev: AlertKind[], kind: string | undefined, value: unknown, status: FlowStatus): AlertKind[] {
  if (kind === "snapshot") return ((value as { alerts?: { kind: AlertKind }[] }).alerts ?? []).map((a) => a.kind);
  if (kind === "alert") {
    const alert = (value as { kind: AlertKind }).kind;
    return prev.includes(alert) ? prev : [...prev, alert];
  }
  if (kind === "change") return TERMINAL.has(status) ? [] : prev.filter((a) => a !== AlertKind.STUCK);
  return prev;
}

/** `team=core, env=prod` as a filter: every label must match (values quoted, so any text). */
export function labelsFilter(text: string): string {
  return text
    .split(",")
    .map((pair) => pair.trim())
    .filter((pair) => pair.includes("="))
    .map((pair) => {
      const [key = "", ...rest] = pair.split("=");
      return `labels.${JSON.stringify(key.trim())} = ${JSON.stringify(rest.join("=").trim())}`;
    })
    .join(" AND ");
}

const BULK_ACTIONS: [BulkActionType, string][] = [
  [BulkActionType.RETRY, "retry"],
  [BulkActionType.PAUSE, "pause"],
  [BulkActionType.RESUME, "resume"],
  [BulkActionType.CANCEL, "cancel"],
];

const STATUSES = Object.values(FlowStatus).filter((v): v is FlowStatus => typeof v === "number" && v !== FlowStatus.UNSPECIFIED);

export function Board({ api, session }: { api: Client<typeof FlowStateService>; session?: Session }) {
  const [rows, setRows] = useState(new Map<string, Row>());
  const [labels, setLabels] = useState("");
  const [selected, setSelected] = useState(new Set<string>());
  const [bulkAction, setBulkAction] = useState(BulkActionType.RETRY);
  const [confirming, setConfirming] = useState(false);
  const [bulkNotice, setBulkNotice] = useState("");
  const admin = session?.scopes.has("flows:admin") ?? false;
  const [status, setStatus] = useState<FlowStatus | 0>(0);
  const [definition, setDefinition] = useState("");
  const [stuckOnly, setStuckOnly] = useState(false);
  const [rootsOnly, setRootsOnly] = useState(false);
  const [parent, setParent] = useState("");
  const [page, setPage] = useState(0);
  const [live, setLive] = useState<"connecting" | "live" | string>("connecting");
  const [now, setNow] = useState(Date.now());
  const described = useRef(new Set<string>());

  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 5000);
    return () => clearInterval(timer);
  }, []);

  // A flow that appears by a change (created after the stream's snapshot) is read once for its
  // name and definition.
  useEffect(() => {
    const missing = [...rows.values()].filter((r) => !r.definition && !described.current.has(r.flowId));
    for (const r of missing) {
      described.current.add(r.flowId);
      api.getFlow({ flowId: r.flowId }).then(
        ({ flow }) =>
          flow &&
          setRows((old) => {
            const row = old.get(flow.flowId);
            if (!row) return old;
            const rows = new Map(old);
            rows.set(flow.flowId, {
              ...row,
              name: flow.displayName,
              definition: `${flow.definitionName} v${flow.definitionVersion}`,
              parentFlowId: flow.parentFlowId,
              parentPhase: flow.parentPhase,
            });
            return rows;
          }),
        () => undefined, // the next event tries nothing more; the row keeps its id
      );
    }
  }, [api, rows]);

  useEffect(() => {
    const abort = new AbortController();
    let cursor = "";
    setRows(new Map());
    setLive("connecting");
    (async () => {
      for (let attempt = 0; !abort.signal.aborted; attempt++) {
        try {
          const stream = api.watchFlows(
            { statuses: status ? [status] : [], definitionName: definition.trim(), cursor, filter: labelsFilter(labels) },
            { signal: abort.signal },
          );
          // Live from the request on: an empty tenant's stream sends nothing until a change
          // or the next heartbeat; a failure below says so.
          setLive("live");
          for await (const { event, cursor: next } of stream) {
            attempt = 0;
            if (next) cursor = next;
            if (!event || !event.flowId) continue; // heartbeat
            setRows((old) => {
              const rows = new Map(old);
              const prev = rows.get(event.flowId);
              const snapshot = event.kind.case === "snapshot" ? event.kind.value : undefined;
              const change = event.kind.case === "change" ? event.kind.value : undefined;
              rows.set(event.flowId, {
                flowId: event.flowId,
                name: snapshot?.displayName ?? prev?.name ?? "",
                definition: snapshot ? `${snapshot.definitionName} v${snapshot.definitionVersion}` : (prev?.definition ?? ""),
                status: event.status,
                progress: event.progress,
                version: event.flowVersion,
                // An alert is not a change: the last change's time stays.
                updated: snapshot?.updateTime ?? change?.occurTime ?? prev?.updated,
                alerts: alertsAfter(prev?.alerts ?? [], event.kind.case, event.kind.value, event.status),
                parentFlowId: snapshot?.parentFlowId ?? prev?.parentFlowId ?? "",
                parentPhase: snapshot?.parentPhase ?? prev?.parentPhase ?? "",
              });
              return rows;
            });
          }
        } catch (err) {
          if (abort.signal.aborted) return;
          setLive(describeError(err));
        }
        // Reconnect with the cursor: nothing is missed, nothing is seen twice.
        await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * 2 ** attempt)));
      }
    })();
    return () => abort.abort();
  }, [api, status, definition, labels]);

  const toggle = (flowId: string) =>
    setSelected((old) => {
      const next = new Set(old);
      if (next.has(flowId)) next.delete(flowId);
      else next.add(flowId);
      return next;
    });

  async function runBulk() {
    setConfirming(false);
    const name = BULK_ACTIONS.find(([a]) => a === bulkAction)?.[1] ?? "";
    try {
      const { bulkAction: started } = await api.startBulkAction({
        requestId: crypto.randomUUID(),
        action: bulkAction,
        flowIds: [...selected],
        reason: "console bulk action",
      });
      if (!started) return;
      let last = started;
      for await (const { bulkAction: update } of api.watchBulkAction({ bulkActionId: started.bulkActionId })) {
        if (!update) continue;
        last = update;
        setBulkNotice(`bulk ${name}: ${update.appliedCount + update.refusedCount + update.skippedCount}/${update.totalCount}`);
      }
      const state = last.state === BulkActionState.SUCCEEDED ? "done" : "stopped";
      setBulkNotice(
        `bulk ${name} ${state}: applied ${last.appliedCount}, refused ${last.refusedCount}, skipped ${last.skippedCount}`,
      );
      setSelected(new Set());
    } catch (err) {
      setBulkNotice(`bulk ${name} failed: ${describeError(err)}`);
    }
  }

  const isStuck = (r: Row) => r.alerts.includes(AlertKind.STUCK);
  const sorted = [...rows.values()]
    .filter((r) => !stuckOnly || isStuck(r))
    .filter((r) => !rootsOnly || !r.parentFlowId)
    .filter((r) => !parent.trim() || r.parentFlowId === parent.trim())
    .sort((a, b) => Number((b.updated?.seconds ?? 0n) - (a.updated?.seconds ?? 0n)) || a.flowId.localeCompare(b.flowId));
  const pages = Math.max(1, Math.ceil(sorted.length / PAGE_SIZE));
  const current = Math.min(page, pages - 1);
  const shown = sorted.slice(current * PAGE_SIZE, (current + 1) * PAGE_SIZE);

  return (
    <section>
      <h1>Flows</h1>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          Status{" "}
          <select
            name="status"
            value={status}
            onChange={(e) => {
              setStatus(Number((e.target as HTMLSelectElement).value) as FlowStatus);
              setPage(0);
            }}
          >
            <option value={0}>any</option>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {statusName(s)}
              </option>
            ))}
          </select>
        </label>
        <label>
          Definition{" "}
          <input
            name="definition"
            placeholder="any"
            value={definition}
            onChange={(e) => {
              setDefinition((e.target as HTMLInputElement).value);
              setPage(0);
            }}
          />
        </label>
        <label>
          Labels{" "}
          <input
            name="labels"
            placeholder="team=core, env=prod"
            value={labels}
            onChange={(e) => {
              setLabels((e.target as HTMLInputElement).value);
              setPage(0);
            }}
          />
        </label>
        <label>
          <input type="checkbox" name="stuck" checked={stuckOnly} onChange={(e) => setStuckOnly((e.target as HTMLInputElement).checked)} />{" "}
          stuck only
        </label>
        <label>
          <input
            type="checkbox"
            name="roots"
            checked={rootsOnly}
            onChange={(e) => {
              setRootsOnly((e.target as HTMLInputElement).checked);
              setPage(0);
            }}
          />{" "}
          top-level only
        </label>
        <label>
          Parent{" "}
          <input
            name="parent"
            placeholder="any (a flow id)"
            value={parent}
            onChange={(e) => {
              setParent((e.target as HTMLInputElement).value);
              setPage(0);
            }}
          />
        </label>
        <span class={`live ${live === "live" ? "ok" : "bad"}`} data-testid="live">
          {live === "live" ? "● live" : live === "connecting" ? "connecting…" : `○ ${live} (reconnecting)`}
        </span>
      </form>
      {admin && (
        <div class="bulk" data-testid="bulk-bar">
          <span data-testid="selected-count">{selected.size} selected</span>{" "}
          <select
            name="bulk-action"
            value={bulkAction}
            onChange={(e) => setBulkAction(Number((e.target as HTMLSelectElement).value) as BulkActionType)}
          >
            {BULK_ACTIONS.map(([value, name]) => (
              <option key={value} value={value}>
                {name}
              </option>
            ))}
          </select>{" "}
          <button type="button" data-testid="bulk-start" disabled={selected.size === 0} onClick={() => setConfirming(true)}>
            Apply to selected
          </button>
          {confirming && (
            <span data-testid="bulk-confirm">
              {" "}
              {BULK_ACTIONS.find(([a]) => a === bulkAction)?.[1]} {selected.size} flows?{" "}
              <button type="button" data-testid="bulk-confirm-yes" onClick={() => void runBulk()}>
                Confirm
              </button>{" "}
              <button type="button" onClick={() => setConfirming(false)}>
                Cancel
              </button>
            </span>
          )}
          {bulkNotice && (
            <span class="notice" data-testid="bulk-notice">
              {" "}
              {bulkNotice}
            </span>
          )}
        </div>
      )}
      <table class="board">
        <thead>
          <tr>
            {admin && (
              <th>
                <input
                  type="checkbox"
                  data-testid="select-all"
                  aria-label="select every flow shown"
                  checked={shown.length > 0 && shown.every((r) => selected.has(r.flowId))}
                  onChange={(e) => {
                    const on = (e.target as HTMLInputElement).checked;
                    setSelected((old) => {
                      const next = new Set(old);
                      for (const r of shown) {
                        if (on) next.add(r.flowId);
                        else next.delete(r.flowId);
                      }
                      return next;
                    });
                  }}
                />
              </th>
            )}
            <th>Flow</th>
            <th>Definition</th>
            <th>Status</th>
            <th>Progress</th>
            <th>Updated</th>
          </tr>
        </thead>
        <tbody>
          {shown.map((r) => (
            <tr key={r.flowId} data-flow-id={r.flowId}>
              {admin && (
                <td>
                  <input
                    type="checkbox"
                    data-testid="select"
                    aria-label={`select ${r.flowId}`}
                    checked={selected.has(r.flowId)}
                    onChange={() => toggle(r.flowId)}
                  />
                </td>
              )}
              <td>
                <a href={`/flows/${r.flowId}`} onClick={link}>
                  {r.name || r.flowId.slice(0, 8)}
                </a>
                <div class="sub">{r.flowId}</div>
                {r.parentFlowId && (
                  <div class="sub" data-testid="parent-indicator">
                    child of{" "}
                    <a href={`/flows/${r.parentFlowId}`} onClick={link} title={r.parentFlowId}>
                      {rows.get(r.parentFlowId)?.name || r.parentFlowId.slice(0, 8)}
                    </a>{" "}
                    · phase {r.parentPhase}
                  </div>
                )}
              </td>
              <td>{r.definition}</td>
              <td>
                <span class={`badge ${statusClass(r.status)}`} data-testid="status">
                  {statusName(r.status)}
                </span>
                {r.alerts.map((a) => (
                  <span key={a} class={`badge alert ${a === AlertKind.STUCK ? "stuck" : ""}`} data-testid="alert">
                    {alertName(a)}
                  </span>
                ))}
              </td>
              <td>
                <div class="bar" title={`${r.progress}%`}>
                  <div style={{ width: `${Math.min(100, r.progress)}%` }} />
                </div>
                <span class="pct" data-testid="progress">{r.progress.toFixed(1)}%</span>
              </td>
              <td title={r.updated ? new Date(Number(r.updated.seconds) * 1000).toISOString() : ""}>{ago(r.updated, now)}</td>
            </tr>
          ))}
          {shown.length === 0 && (
            <tr>
              <td colSpan={admin ? 6 : 5} class="empty">
                {live === "live" ? "No flows match." : "Loading…"}
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <nav class="pager">
        <button type="button" disabled={current === 0} onClick={() => setPage(current - 1)}>
          ← newer
        </button>
        <span>
          page {current + 1} of {pages} ({sorted.length} flows)
        </span>
        <button type="button" disabled={current >= pages - 1} onClick={() => setPage(current + 1)}>
          older →
        </button>
      </nav>
    </section>
  );
}
