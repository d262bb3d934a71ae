/** The console's shell: sign-in, who is signed in, navigation, pages. */
import { render } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";

import { apiClient, exchangeTicket, loadSession, saveSession, sessionOf, takeSigninTicket, type Session } from "./api.js";
import { Board } from "./board.js";
import { Definitions } from "./definitions.js";
import { FlowPage } from "./flow.js";
import { link, usePath } from "./router.js";

// Before anything else: a sign-in ticket must not stay in the address bar or history entry.
const ticket = takeSigninTicket();

function SignIn({ onSession, message }: { onSession: (s: Session) => void; message: string | null }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState<string | null>(message);
  return (
    <section class="signin">
      <h1>Sign in to Flowstate</h1>
      <p>
        Paste a bearer token (for the local dev server: <code>flowstate token --tenant ACCOUNT/ENGAGEMENT --user NAME</code>), or
        open the one-time link printed by <code>flowstate serve</code> / <code>flowstate console-url</code>.
      </p>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          const session = sessionOf(token);
          if (!session) setError("That is not a token (a JWT has three dot-separated parts).");
          else onSession(session);
        }}
      >
        <textarea name="token" rows={4} placeholder="eyJhbGciOi…" value={token} onInput={(e) => setToken((e.target as HTMLTextAreaElement).value)} />
        <button type="submit" class="primary">
          Sign in
        </button>
      </form>
      {error && <p class="error" role="alert">{error}</p>}
    </section>
  );
}

function App() {
  const [session, setSession] = useState<Session | null>(ticket ? null : loadSession());
  const [message, setMessage] = useState<string | null>(null);
  const [signingIn, setSigningIn] = useState(ticket !== null);
  const path = usePath();

  useEffect(() => {
    if (!ticket) return;
    exchangeTicket(ticket).then(
      (s) => {
        saveSession(s);
        setSession(s);
        setSigningIn(false);
      },
      (err: Error) => {
        setMessage(err.message);
        setSigningIn(false);
      },
    );
  }, []);

  const api = useMemo(() => (session ? apiClient(session.token) : null), [session]);
  const signIn = (s: Session) => {
    saveSession(s);
    setSession(s);
  };
  const signOut = () => {
    saveSession(null);
    setSession(null);
  };

  if (signingIn) return <p>Signing in…</p>;
  if (!session || !api) return <SignIn onSession={signIn} message={message} />;
  const flowMatch = /^\/flows\/([^/]+)$/.exec(path);
  return (
    <>
      <header>
        <a href="/" onClick={link} class="brand">
          Flowstate
        </a>
        <nav>
          <a href="/" onClick={link} class={path === "/" ? "active" : ""}>
            Flows
          </a>
          <a href="/definitions" onClick={link} class={path === "/definitions" ? "active" : ""}>
            Definitions
          </a>
        </nav>
        <span class="who" data-testid="who">
          <strong>{session.user}</strong> · tenant {session.tenant} · {[...session.scopes].join(" ")}
          {session.expiresAt && ` · until ${session.expiresAt.toLocaleTimeString()}`}
        </span>
        <button type="button" onClick={signOut}>
          Sign out
        </button>
      </header>
      <main>
        {flowMatch ? (
          <FlowPage key={flowMatch[1]} api={api} session={session} flowId={decodeURIComponent(flowMatch[1] ?? "")} />
        ) : path === "/definitions" ? (
          <Definitions api={api} />
        ) : (
          <Board api={api} session={session} />
        )}
      </main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
