/** Find people by username prefix; picking one calls `onPick`. */
import { useEffect, useState } from "preact/hooks"
import type { User } from "../src/client/index.ts"
import type { Store } from "./store.ts"

export function UserSearch({
  store,
  onPick,
  exclude,
  placeholder = "Search people by username"
}: {
  store: Store
  onPick: (user: User) => void
  exclude: ReadonlySet<string>
  placeholder?: string
}) {
  const [query, setQuery] = useState("")
  const [results, setResults] = useState<ReadonlyArray<User>>([])

  useEffect(() => {
    const prefix = query.trim().toLowerCase()
    if (prefix === "") {
      setResults([])
      return
    }
    let current = true
    const timer = setTimeout(() => {
      store.searchUsers(prefix).then(
        (users) => current && setResults(users),
        () => current && setResults([])
      )
    }, 150)
    return () => {
      current = false
      clearTimeout(timer)
    }
  }, [query])

  const shown = results.filter((user) => !exclude.has(user.id))
  return (
    <div class="user-search">
      <input
        data-testid="user-search"
        type="search"
        placeholder={placeholder}
        value={query}
        onInput={(e) => setQuery(e.currentTarget.value)}
      />
      {query.trim() !== "" && (
        <ul class="results">
          {shown.length === 0 && <li class="muted">Nobody found</li>}
          {shown.map((user) => (
            <li key={user.id}>
              <button
                type="button"
                data-testid="user-result"
                data-username={user.username}
                onClick={() => {
                  onPick(user)
                  setQuery("")
                }}
              >
                {user.displayName} <small>@{user.username}</small>
              </button>
            </li>
          ))}
        </ul>
      )}
    </div>
  )
}
