/**
 * The console's link to the server: the generated FlowStateService client over Connect-Web
 * (same origin), the session (token and who it names), and errors in words.
 *
 * The token lives in sessionStorage: it survives a reload of the tab (a one-time sign-in link
 * cannot be used twice) but not the tab itself, is never shared with other tabs or written to
 * disk by us, and is never put in a URL or a cookie (so no request is authorised by ambient
 * credentials). Script injection is what could read it; the server's Content-Security-Policy
 * allows scripts from this origin only, and the app never renders HTML from data.
 */
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";

import { FlowStateService } from "../../clients/typescript/src/gen/flowstate/v1/flow_service_pb.js";
import { toFlowstateError } from "../../clients/typescript/src/errors.js";

const TOKEN_KEY = "flowstate.token";

/** Who the token names (decoded for display; the server verifies it on every call). */
export interface Session {
  token: string;
  user: string;
  tenant: string;
  scopes: Set<string>;
  expiresAt: Date | null;
}

const IMPLIED: Record<string, string[]> = {
  "flows:read": ["flows:read"],
  "flows:write": ["flows:read", "flows:write"],
  "flows:admin": ["flows:read", "flows:write", "flows:admin", "flows:approve"],
  "flows:approve": ["flows:read", "flows:approve"],
};

/** The session of a JWT, or null when it is not one. */
export function sessionOf(token: string): Session | null {
  const part = token.trim().split(".")[1];
  if (!part) return null;
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json) as Record<string, unknown>;
    const granted = typeof claims.scope === "string" ? claims.scope.split(/\s+/) : [];
    const scopes = new Set(granted.flatMap((s) => IMPLIED[s] ?? []));
    return {
      token: token.trim(),
      user: String(claims.sub ?? "?"),
      tenant: `${String(claims.client_account_id ?? "?")}/${String(claims.engagement_id ?? "?")}`,
      scopes,
      expiresAt: typeof claims.exp === "number" ? new Date(claims.exp * 1000) : null,
    };
  } catch {
    return null;
  }
}

export function loadSession(): Session | null {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? sessionOf(token) : null;
}

export function saveSession(session: Session | null): void {
  if (session) sessionStorage.setItem(TOKEN_KEY, session.token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The generated client, sending `token` on every call. */
export function apiClient(token: string): Client<typeof FlowStateService> {
  const auth: Interceptor = (next) => (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
  const transport = createConnectTransport({ baseUrl: location.origin, interceptors: [auth] });
  return createClient(FlowStateService, transport);
}

/** A sign-in link's ticket (`#signin=...`), removed from the address bar and history entry. */
export function takeSigninTicket(): string | null {
  const match = /^#signin=([A-Za-z0-9._-]+)$/.exec(location.hash);
  if (!match) return null;
  history.replaceState(history.state, "", location.pathname + location.search);
  return match[1] ?? null;
}

/** Exchanges a one-time ticket for a session token (local dev mode). */
export async function exchangeTicket(ticket: string): Promise<Session> {
  const response = await fetch("/console/signin", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ticket }),
  });
  const body = (await response.json()) as { token?: string; message?: string };
  if (!response.ok || !body.token) throw new Error(`Sign-in link refused: ${body.message ?? response.statusText}`);
  const session = sessionOf(body.token);
  if (!session) throw new Error("The server answered with something that is not a token.");
  return session;
}

/** The Flowstate error code of a failed call (`MALFORMED_REQUEST`, ...; `UNSPECIFIED` if none). */
export function errorCode(err: unknown): string {
  return toFlowstateError(err).code;
}

/** An error of a call, in words (from the structured error; never a raw dump). */
export function describeError(err: unknown): string {
  const error = toFlowstateError(err);
  switch (error.code) {
    case "VERSION_CONFLICT":
      return (
        "Version conflict: this flow changed since this page showed it" +
        (error.flowError?.currentVersion ? ` (it is now at version ${error.flowError.currentVersion})` : "") +
        ". Nothing was changed. Look at its current state and try again."
      );
    case "UNAUTHENTICATED":
      return `Not signed in: ${error.message}. Sign in again.`;
    case "PERMISSION_DENIED":
      return `Not allowed: ${error.message}.`;
    case "FLOW_NOT_FOUND":
      return "No such flow in your tenant.";
    case "MAX_RETRIES_EXCEEDED":
      return `Retries exhausted: ${error.message}.`;
    default: {
      const recovery = error.recovery.length > 0 ? ` Possible next steps: ${error.recovery.join(", ")}.` : "";
      const what = error.code !== "UNSPECIFIED" ? error.code : error.grpcCodeName;
      const text = (error.message || "The server refused the request").replace(/\.$/, "");
      return `${text} (${what.toLowerCase().replace(/_/g, " ")}).${recovery}`;
    }
  }
}
