/**
 * A flow's place in a tree of flows (docs/child_flows.md): its ancestors up to the root, its
 * descendants (GetFlow with `children_depth`) and the flows its phases wait for
 * (`external_dependencies`).
 *
 * Liveness: the flow page's WatchFlow is a tree stream (`children_depth`,
 * `include_dependencies`), which brings the changes of the descendants and of the dependencies'
 * phases. The ancestors are not on it (a tree stream looks down), and a parent can change
 * without its child (another phase, a pause): `useWatchRelated` watches them with one WatchFlows
 * stream of their ids (`flow_ids`, at most 5), restarted when the set changes; each event
 * reloads the page (coalesced by the page's reload).
 */
import type { Client } from "@connectrpc/connect";
import { useEffect } from "preact/hooks";

import { type Flow, type FlowStateService } from "../../clients/typescript/src/gen/flowstate/v1/index.js";
import { stateClass, stateName, statusClass, statusName } from "./format.js";
import { link } from "./router.js";

type Api = Client<typeof FlowStateService>;

/** How deep the page reads descendants (GetFlow's `children_depth`: 1 to the server's 5). */
export const DEPTHS = [1, 2, 3, 4, 5] as const;
export const DEFAULT_DEPTH = 2;
/** The server's MAX_CHILD_FLOW_DEPTH: no tree has more ancestors than this. */
const MAX_ANCESTORS = 5;

export interface Related {
  /** Parent first, then its parent, up to the root (at most 5). */
  ancestors: Flow[];
  /** The descendants down to the depth asked, level by level (each names its parent). */
  descendants: Flow[];
  truncated: boolean;
  /** The flows that `external_dependencies` name, by id (absent: not readable). */
  external: Map<string, Flow>;
}

/** The flow's relatives; `descendants` come from the caller's GetFlow (children_depth). */
export async function loadRelated(api: Api, flow: Flow, descendants: Flow[], truncated: boolean): Promise<Related> {
  const ancestors: Flow[] = [];
  for (let id = flow.parentFlowId; id && ancestors.length < MAX_ANCESTORS; ) {
    const { flow: parent } = await api.getFlow({ flowId: id });
    if (!parent) break;
    ancestors.push(parent);
    id = parent.parentFlowId;
  }
  const external = new Map<string, Flow>();
  const ids = [...new Set(flow.externalDependencies.map((d) => d.flowId))];
  const found = await Promise.all(ids.map((flowId) => api.getFlow({ flowId }).then((r) => r.flow, () => undefined)));
  for (const other of found) if (other) external.set(other.flowId, other);
  return { ancestors, descendants, truncated, external };
}

/**
 * Calls `onChange` on every event of the flows `ids` (a WatchFlows stream with `flow_ids`),
 * reconnecting with its cursor after a failure; a new set of ids starts a new stream.
 */
export function useWatchRelated(api: Api, ids: string[], onChange: () => void): void {
  const key = ids.join(",");
  useEffect(() => {
    if (!key) return;
    const flowIds = key.split(",");
    const abort = new AbortController();
    (async () => {
      let cursor = "";
      for (let attempt = 0; !abort.signal.aborted; attempt++) {
        try {
          for await (const { event, cursor: next } of api.watchFlows({ flowIds, cursor }, { signal: abort.signal })) {
            attempt = 0;
            if (next) cursor = next;
            if (event?.flowId) onChange(); // not a heartbeat
          }
        } catch {
          if (abort.signal.aborted) return;
        }
        await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * 2 ** attempt)));
      }
    })();
    return () => abort.abort();
  }, [api, key, onChange]);
}

const shortName = (flow: Flow): string => flow.displayName || flow.flowId.slice(0, 8);

function FlowLink({ flow, testId }: { flow: Flow; testId?: string }) {
  return (
    <a href={`/flows/${flow.flowId}`} onClick={link} data-testid={testId} title={flow.flowId}>
      {shortName(flow)}
    </a>
  );
}

function Progress({ flow }: { flow: Flow }) {
  return (
    <>
      <span class="bar" role="progressbar" aria-label={`progress of ${shortName(flow)}`} aria-valuemin={0} aria-valuemax={100} aria-valuenow={flow.progress}>
        <span style={{ width: `${Math.min(100, flow.progress)}%` }} />
      </span>
      <span class="pct" data-testid="child-progress">
        {flow.progress.toFixed(1)}%
      </span>
    </>
  );
}

/** "root › … › parent › this", each a link, and the parent phase this flow follows. */
export function Lineage({ flow, ancestors }: { flow: Flow; ancestors: Flow[] }) {
  const parent = ancestors[0];
  if (!flow.parentFlowId) return null;
  const phase = parent?.phases.find((p) => p.name === flow.parentPhase);
  const current = phase?.childFlowId === flow.flowId;
  return (
    <nav class="lineage" aria-label="parent flows" data-testid="lineage">
      <ol>
        {[...ancestors].reverse().map((a) => (
          <li key={a.flowId}>
            <FlowLink flow={a} testId={a === parent ? "parent-link" : "ancestor-link"} />{" "}
            <span class={`badge ${statusClass(a.status)}`} data-testid="ancestor-status">
              {statusName(a.status)}
            </span>
          </li>
        ))}
        {!parent && (
          <li>
            <span class="sub">{flow.parentFlowId} (not readable)</span>
          </li>
        )}
        <li aria-current="page">{shortName(flow)}</li>
      </ol>
      <p class="sub" data-testid="parent-phase">
        {current && phase
          ? `Child flow of phase ${flow.parentPhase} (${stateName(phase.state)}) of its parent: the phase follows this flow.`
          : `An earlier attempt of phase ${flow.parentPhase} of its parent: the phase no longer follows this flow.`}
      </p>
    </nav>
  );
}

/** The descendants as an indented table: each under its parent, with the phase it follows. */
export function Children({
  flow,
  related,
  depth,
  onDepth,
}: {
  flow: Flow;
  related: Related;
  depth: number;
  onDepth: (depth: number) => void;
}) {
  const byParent = new Map<string, Flow[]>();
  for (const d of related.descendants) {
    const list = byParent.get(d.parentFlowId) ?? [];
    list.push(d);
    byParent.set(d.parentFlowId, list);
  }
  const rows: Array<{ child: Flow; level: number; current: boolean }> = [];
  const walk = (parent: Flow, level: number) => {
    for (const child of byParent.get(parent.flowId) ?? []) {
      const phase = parent.phases.find((p) => p.name === child.parentPhase);
      rows.push({ child, level, current: phase?.childFlowId === child.flowId });
      walk(child, level + 1);
    }
  };
  walk(flow, 1);
  return (
    <>
      <h2 id="children-title">Child flows</h2>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          Depth{" "}
          <select name="children-depth" value={depth} onChange={(e) => onDepth(Number((e.target as HTMLSelectElement).value))}>
            {DEPTHS.map((d) => (
              <option key={d} value={d}>
                {d === 1 ? "children" : `${d} levels`}
              </option>
            ))}
          </select>
        </label>
      </form>
      <table class="children" aria-labelledby="children-title" data-testid="children">
        <thead>
          <tr>
            <th>Flow</th>
            <th>Follows phase</th>
            <th>Definition</th>
            <th>Status</th>
            <th>Progress</th>
          </tr>
        </thead>
        <tbody>
          {rows.map(({ child, level, current }) => (
            <tr key={child.flowId} data-child-id={child.flowId} data-level={level} class={current ? "" : "earlier"}>
              <td class={`level-${Math.min(level, 5)}`}>
                {level > 1 && <span aria-hidden="true">└ </span>}
                <FlowLink flow={child} testId="child-link" />
                <div class="sub">{child.flowId}</div>
              </td>
              <td>
                {child.parentPhase}
                {!current && <div class="sub">earlier attempt</div>}
              </td>
              <td>
                {child.definitionName} v{child.definitionVersion}
              </td>
              <td>
                <span class={`badge ${statusClass(child.status)}`} data-testid="child-status">
                  {statusName(child.status)}
                </span>
              </td>
              <td>
                <Progress flow={child} />
              </td>
            </tr>
          ))}
          {rows.length === 0 && (
            <tr>
              <td colSpan={5} class="empty">
                No child flow yet: a child flow phase creates one when it starts.
              </td>
            </tr>
          )}
        </tbody>
      </table>
      {related.truncated && <p class="sub">Cut at the server's limit of flows per tree.</p>}
    </>
  );
}

/** The phases of other flows this flow's phases wait for, each with that phase's state now. */
export function ExternalDependencies({ flow, related }: { flow: Flow; related: Related }) {
  if (flow.externalDependencies.length === 0) return null;
  return (
    <>
      <h2 id="external-title">Waits for other flows</h2>
      <table class="external" aria-labelledby="external-title" data-testid="external">
        <thead>
          <tr>
            <th>Phase</th>
            <th>Waits for flow</th>
            <th>Its phase</th>
            <th>State</th>
          </tr>
        </thead>
        <tbody>
          {flow.externalDependencies.map((d) => {
            const other = related.external.get(d.flowId);
            const phase = other?.phases.find((p) => p.name === d.flowPhase);
            return (
              <tr key={`${d.phase}-${d.flowId}-${d.flowPhase}`} data-phase={d.phase} data-flow-id={d.flowId} data-flow-phase={d.flowPhase}>
                <td>{d.phase}</td>
                <td>
                  {other ? <FlowLink flow={other} testId="external-link" /> : <span class="sub">not readable</span>}
                  <div class="sub">{d.flowId}</div>
                </td>
                <td>{d.flowPhase}</td>
                <td>
                  {phase && (
                    <span class={`badge ${stateClass(phase.state)}`} data-testid="external-state">
                      {stateName(phase.state)}
                    </span>
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </>
  );
}

/** The phase table's line for a child_flow phase: its current child, linked, with status. */
export function ChildOfPhase({ childId, related }: { childId: string; related: Related }) {
  if (!childId) return <div class="sub">child flow: none yet</div>;
  const child = related.descendants.find((d) => d.flowId === childId);
  return (
    <div class="sub" data-testid="phase-child">
      child flow{" "}
      <a href={`/flows/${childId}`} onClick={link} data-testid="phase-child-link" title={childId}>
        {child ? shortName(child) : childId.slice(0, 8)}
      </a>
      {child && ` · ${statusName(child.status)} · ${child.progress.toFixed(1)}%`}
    </div>
  );
}
