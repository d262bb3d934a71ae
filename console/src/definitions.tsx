/**
 * Definitions: each definition and version this tenant can use, with its DAG. The server has
 * no listing RPC yet, so the page shows the built-in `discovery` and every (name, version) the
 * tenant's flows use, each read with GetFlowDefinition.
 */
import type { Client } from "@connectrpc/connect";
import { useEffect, useState } from "preact/hooks";

import type { FlowDefinition, FlowStateService } from "../../clients/typescript/src/gen/flowstate/v1/index.js";
import { describeError } from "./api.js";
import { Dag } from "./dag.js";
import { statusName } from "./format.js";

type Api = Client<typeof FlowStateService>;

async function loadDefinitions(api: Api): Promise<FlowDefinition[]> {
  const wanted = new Map<string, { name: string; version: number }>([["discovery@0", { name: "discovery", version: 0 }]]);
  let pageToken = "";
  for (let pages = 0; pages < 20; pages++) {
    const page = await api.listFlows({ pageSize: 500, pageToken });
    for (const f of page.flows) wanted.set(`${f.definitionName}@${f.definitionVersion}`, { name: f.definitionName, version: f.definitionVersion });
    pageToken = page.nextPageToken;
    if (!pageToken) break;
  }
  const found = new Map<string, FlowDefinition>();
  for (const { name, version } of wanted.values()) {
    const { definition } = await api.getFlowDefinition({ name, version });
    if (definition) found.set(`${definition.name}@${definition.version}`, definition);
  }
  return [...found.values()].sort((a, b) => a.name.localeCompare(b.name) || a.version - b.version);
}

export function Definitions({ api }: { api: Api }) {
  const [definitions, setDefinitions] = useState<FlowDefinition[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    loadDefinitions(api).then(setDefinitions, (err) => setError(describeError(err)));
  }, [api]);
  if (error) return <p class="error" role="alert">{error}</p>;
  if (!definitions) return <p>Loading…</p>;
  return (
    <section>
      <h1>Definitions</h1>
      {definitions.map((d) => (
        <article key={`${d.name}@${d.version}`} class="definition" data-definition={d.name}>
          <h2>
            {d.displayName || d.name} <span class="sub">version {d.version}</span>
          </h2>
          {d.description && <p>{d.description}</p>}
          <div class="dagbox">
            <Dag definition={d.phases} />
          </div>
          <table>
            <thead>
              <tr>
                <th>Phase</th>
                <th>Depends on</th>
                <th>Weight</th>
                <th>Max retries</th>
                <th>Status group</th>
              </tr>
            </thead>
            <tbody>
              {d.phases.map((p) => (
                <tr key={p.name}>
                  <td>{p.name}</td>
                  <td>{p.dependsOn.join(", ") || "—"}</td>
                  <td>{p.weight}</td>
                  <td>{p.maxRetries}</td>
                  <td>{p.statusGroup ? statusName(p.statusGroup) : "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </article>
      ))}
    </section>
  );
}
