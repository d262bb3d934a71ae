/** Words for enum values and times. */
import {
  AlertKind,
  ApprovalDecision,
  FlowStatus,
  HistoryEventKind,
  PhaseState,
  RecoveryAction,
} from "../../clients/typescript/src/gen/flowstate/v1/index.js";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

const words = (name: string | undefined): string => (name ?? "unknown").toLowerCase().replace(/_/g, " ");

export const statusName = (s: FlowStatus): string => words(FlowStatus[s]);
export const stateName = (s: PhaseState): string => words(PhaseState[s]);
export const actionName = (a: RecoveryAction): string => words(RecoveryAction[a]);
export const kindName = (k: HistoryEventKind): string => words(HistoryEventKind[k]);
export const alertName = (a: AlertKind): string => words(AlertKind[a]);
export const decisionName = (d: ApprovalDecision): string => words(ApprovalDecision[d]);
/** CSS class of a state or status (e.g. `st-failed`). */
export const stateClass = (s: PhaseState): string => `st-${(PhaseState[s] ?? "unknown").toLowerCase()}`;
export const statusClass = (s: FlowStatus): string => `st-${(FlowStatus[s] ?? "unknown").toLowerCase()}`;

export const TERMINAL = new Set([FlowStatus.COMPLETED, FlowStatus.CANCELLED]);

export function when(ts: Timestamp | undefined): string {
  if (!ts) return "";
  return timestampDate(ts).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function ago(ts: Timestamp | undefined, now: number): string {
  if (!ts) return "";
  const seconds = Math.max(0, Math.round((now - timestampDate(ts).getTime()) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}

export function duration(seconds: number): string {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
