/**
 * Definitions: every version of every definition this tenant can use (ListFlowDefinitions: the
 * tenant's and the built-ins), each with its DAG and phase table.
 */
import type { Client } from "@connectrpc/connect";
import { useEffect, useState } from "preact/hooks";

import {
  ParentCancelPolicy,
  PhaseKind,
  type FlowDefinition,
  type FlowStateService,
} from "../../clients/typescript/src/gen/flowstate/v1/index.js";
import { describeError } from "./api.js";
import { Dag } from "./dag.js";
import { statusName } from "./format.js";

type Api = Client<typeof FlowStateService>;

const MAX_PAGES = 20;

/** Every page of a listing (bounded). */
async function allPages(list: (pageToken: string) => Promise<{ definitions: FlowDefinition[]; nextPageToken: string }>) {
  const result: FlowDefinition[] = [];
  let pageToken = "";
  for (let pages = 0; pages < MAX_PAGES; pages++) {
    const page = await list(pageToken);
    result.push(...page.definitions);
    pageToken = page.nextPageToken;
    if (!pageToken) break;
  }
  return result;
}

async function loadDefinitions(api: Api): Promise<FlowDefinition[]> {
  const latest = await allPages((pageToken) => api.listFlowDefinitions({ pageSize: 100, pageToken }));
  const versions = await Promise.all(
    latest.map((d) => allPages((pageToken) => api.listFlowDefinitions({ name: d.name, pageSize: 100, pageToken }))),
  );
  return versions.flat(); // by name, each name's versions newest first
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
                <th>Optional</th>
              </tr>
            </thead>
            <tbody>
              {d.phases.map((p) => (
                <tr key={p.name}>
                  <td>
                    {p.name}
                    {p.kind === PhaseKind.CHILD_FLOW && p.childFlow && (
                      <div class="sub" data-testid="definition-child">
                        child flow {p.childFlow.definitionName}
                        {p.childFlow.definitionVersion ? ` v${p.childFlow.definitionVersion}` : " (latest)"}
                        {p.childFlow.onParentCancel === ParentCancelPolicy.ABANDON ? ", abandoned" : ", cancelled"} when the parent is cancelled
                      </div>
                    )}
                  </td>
                  <td>{p.dependsOn.join(", ") || "—"}</td>
                  <td>{p.weight}</td>
                  <td>{p.maxRetries}</td>
                  <td>{p.statusGroup ? statusName(p.statusGroup) : "—"}</td>
                  <td>{p.optional ? "yes (may be skipped)" : "no"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </article>
      ))}
    </section>
  );
}
