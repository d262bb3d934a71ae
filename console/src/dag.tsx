/** The phase DAG as SVG: columns by dependency depth, edges from each dependency. */
import { PhaseKind, type Phase, type PhaseDefinition } from "../../clients/typescript/src/gen/flowstate/v1/index.js";
import { stateClass, stateName } from "./format.js";

const W = 170;
const H = 64;
const GAP_X = 50;
const GAP_Y = 18;

interface Props {
  definition: PhaseDefinition[];
  /** The flow's phases (states, progress); absent on the definitions page. */
  phases?: Phase[];
}

function depths(definition: PhaseDefinition[]): Map<string, number> {
  const byName = new Map(definition.map((p) => [p.name, p]));
  const memo = new Map<string, number>();
  const depth = (name: string, seen: Set<string>): number => {
    const known = memo.get(name);
    if (known !== undefined) return known;
    if (seen.has(name)) return 0; // a cycle cannot be registered; be safe anyway
    seen.add(name);
    const deps = byName.get(name)?.dependsOn ?? [];
    const d = deps.length === 0 ? 0 : 1 + Math.max(...deps.map((dep) => depth(dep, seen)));
    memo.set(name, d);
    return d;
  };
  for (const p of definition) depth(p.name, new Set());
  return memo;
}

export function Dag({ definition, phases }: Props) {
  const depth = depths(definition);
  const columns: string[][] = [];
  for (const p of definition) {
    const d = depth.get(p.name) ?? 0;
    (columns[d] ??= []).push(p.name);
  }
  const pos = new Map<string, { x: number; y: number }>();
  columns.forEach((names, c) => names.forEach((name, r) => pos.set(name, { x: c * (W + GAP_X), y: r * (H + GAP_Y) })));
  const width = columns.length * (W + GAP_X) - GAP_X + 2;
  const height = Math.max(...columns.map((c) => c.length)) * (H + GAP_Y) - GAP_Y + 2;
  const state = new Map((phases ?? []).map((p) => [p.name, p]));
  return (
    <svg class="dag" width={width} height={height} viewBox={`-1 -1 ${width} ${height}`} role="img" aria-label="phase graph">
      {definition.flatMap((p) =>
        p.dependsOn.map((dep) => {
          const a = pos.get(dep);
          const b = pos.get(p.name);
          if (!a || !b) return null;
          return <line key={`${dep}-${p.name}`} class="edge" x1={a.x + W} y1={a.y + H / 2} x2={b.x} y2={b.y + H / 2} />;
        }),
      )}
      {definition.map((p) => {
        const at = pos.get(p.name)!;
        const phase = state.get(p.name);
        const cls = phase ? stateClass(phase.state) : "st-definition";
        const child = p.kind === PhaseKind.CHILD_FLOW;
        return (
          <g key={p.name} class={`node ${cls}${child ? " child" : ""}`} data-phase={p.name} transform={`translate(${at.x},${at.y})`}>
            <rect width={W} height={H} rx="6" />
            {child && <title>{`${p.name}: a child flow of ${p.childFlow?.definitionName ?? "?"}`}</title>}
            <text x="8" y="18" class="name">{p.displayName || p.name}</text>
            <text x="8" y="36" class="state">
              {phase ? stateName(phase.state) : `weight ${p.weight}, ${p.maxRetries} retries`}
            </text>
            {phase && (
              <text x="8" y="54" class="retries">
                {`retries ${phase.retryCount}/${phase.maxRetries}`}
                {phase.progress > 0 && phase.progress < 1 ? ` · ${Math.round(phase.progress * 100)}%` : ""}
              </text>
            )}
            {phase && phase.progress > 0 && <rect class="inphase" x="0" y={H - 4} width={W * Math.min(1, phase.progress)} height="4" />}
          </g>
        );
      })}
    </svg>
  );
}
