/** Sign up or sign in. */
import { useState } from "preact/hooks"
import { errorText } from "./hooks.ts"
import type { Store } from "./store.ts"

export function Auth({ store, onSignedIn }: { store: Store; onSignedIn: () => void }) {
  const [mode, setMode] = useState<"signin" | "signup">("signin")
  const [username, setUsername] = useState("")
  const [password, setPassword] = useState("")
  const [displayName, setDisplayName] = useState("")
  const [error, setError] = useState<string | undefined>()
  const [busy, setBusy] = useState(false)

  const submit = async (event: Event) => {
    event.preventDefault()
    setBusy(true)
    setError(undefined)
    try {
      if (mode === "signup") {
        const name = displayName.trim()
        await store.register({ username: username.trim(), password, ...(name === "" ? {} : { displayName: name }) })
      } else {
        await store.login({ username: username.trim(), password })
      }
      onSignedIn()
    } catch (cause) {
      setError(errorText(cause))
      setBusy(false)
    }
  }

  return (
    <div class="auth">
      <form class="card" data-testid="auth-form" data-mode={mode} onSubmit={submit}>
        <h1>Harmony</h1>
        <p class="muted">{mode === "signup" ? "Create an account" : "Sign in to chat"}</p>
        <label>
          Username
          <input
            data-testid="auth-username"
            autocomplete="username"
            autofocus
            required
            minLength={3}
            maxLength={32}
            pattern="[a-z0-9_.\-]{3,32}"
            title="3 to 32 of a-z 0-9 _ . -"
            value={username}
            onInput={(e) => setUsername(e.currentTarget.value.toLowerCase())}
          />
        </label>
        {mode === "signup" && (
          <label>
            Display name <span class="muted">(optional)</span>
            <input
              data-testid="auth-display-name"
              autocomplete="name"
              maxLength={64}
              value={displayName}
              onInput={(e) => setDisplayName(e.currentTarget.value)}
            />
          </label>
        )}
        <label>
          Password
          <input
            data-testid="auth-password"
            type="password"
            autocomplete={mode === "signup" ? "new-password" : "current-password"}
            required
            minLength={8}
            maxLength={128}
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {error !== undefined && (
          <p class="error" data-testid="auth-error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary" data-testid="auth-submit" disabled={busy}>
          {busy ? "…" : mode === "signup" ? "Sign up" : "Sign in"}
        </button>
        <p class="switch">
          {mode === "signup" ? "Have an account?" : "New here?"}{" "}
          <button
            type="button"
            class="link"
            data-testid="auth-mode-toggle"
            onClick={() => {
              setMode(mode === "signup" ? "signin" : "signup")
              setError(undefined)
            }}
          >
            {mode === "signup" ? "Sign in" : "Create an account"}
          </button>
        </p>
      </form>
    </div>
  )
}
