/** The chat list (unread counts, who is online in direct chats) and the new-chat dialog. */
import { useEffect, useState } from "preact/hooks"
import type { User } from "../src/client/index.ts"
import { errorText, useStore } from "./hooks.ts"
import type { ChatKind, Store } from "./store.ts"
import { MessageSearch } from "./MessageSearch.tsx"
import { UserSearch } from "./UserSearch.tsx"

export function Sidebar({ store }: { store: Store }) {
  useStore(store)
  const [creating, setCreating] = useState(false)
  return (
    <nav class="sidebar">
      <div class="sidebar-head">
        <h2>Chats</h2>
        <button type="button" class="primary small" data-testid="new-chat" onClick={() => setCreating(true)}>
          New chat
        </button>
      </div>
      <MessageSearch store={store} />
      <ul class="chat-list" data-testid="chat-list">
        {!store.chatsLoaded && <li class="muted pad">Loading…</li>}
        {store.sortedChats().map((entry) => {
          const unread = store.unread(entry)
          const other =
            entry.kind === "direct"
              ? store.details.get(entry.id)?.members.find((member) => member.userId !== store.user?.id)
              : undefined
          return (
            <li key={entry.id}>
              <button
                type="button"
                class={`chat-item${entry.id === store.activeChatId ? " active" : ""}${unread > 0 ? " has-unread" : ""}`}
                data-testid="chat-item"
                data-chat-id={entry.id}
                data-unread={unread}
                onClick={() => store.open(entry.id)}
              >
                <span class={`avatar ${entry.kind}`}>
                  {store.chatTitle(entry).slice(0, 1).toUpperCase()}
                  {other !== undefined && (
                    <i class={`presence${store.isOnline(entry.id, other.userId) ? " online" : ""}`} />
                  )}
                </span>
                <span class="chat-name" data-testid="chat-name">
                  {store.chatTitle(entry)}
                </span>
                {unread > 0 && (
                  <span class="badge" data-testid="chat-unread">
                    {unread > 99 ? "99+" : unread}
                  </span>
                )}
              </button>
            </li>
          )
        })}
      </ul>
      {creating && <NewChat store={store} onClose={() => setCreating(false)} />}
    </nav>
  )
}

function NewChat({ store, onClose }: { store: Store; onClose: () => void }) {
  const [kind, setKind] = useState<ChatKind>("group")
  const [name, setName] = useState("")
  const [members, setMembers] = useState<Array<User>>([])
  const [error, setError] = useState<string | undefined>()
  const [busy, setBusy] = useState(false)

  useEffect(() => {
    const onKey = (event: KeyboardEvent) => event.key === "Escape" && onClose()
    document.addEventListener("keydown", onKey)
    return () => document.removeEventListener("keydown", onKey)
  }, [])

  const pick = (user: User) => setMembers(kind === "direct" ? [user] : [...members, user])
  const exclude = new Set([...members.map((user) => user.id), ...(store.user === undefined ? [] : [store.user.id])])
  const ready = kind === "direct" ? members.length === 1 : name.trim() !== ""

  const submit = async (event: Event) => {
    event.preventDefault()
    if (!ready) return
    setBusy(true)
    setError(undefined)
    try {
      const trimmed = name.trim()
      await store.createChat({
        kind,
        memberIds: members.map((user) => user.id),
        ...(kind === "group" && trimmed !== "" ? { name: trimmed } : {})
      })
      onClose()
    } catch (cause) {
      setError(errorText(cause))
      setBusy(false)
    }
  }

  return (
    <div class="overlay">
      <form class="card dialog" data-testid="new-chat-form" onSubmit={submit}>
        <h2>New chat</h2>
        <div class="segmented">
          {(["group", "direct"] as const).map((k) => (
            <label key={k} class={kind === k ? "selected" : ""} data-testid={`new-chat-kind-${k}`}>
              <input
                type="radio"
                name="kind"
                value={k}
                checked={kind === k}
                onChange={() => {
                  setKind(k)
                  if (k === "direct") setMembers(members.slice(0, 1))
                }}
              />
              {k === "group" ? "Group" : "Direct message"}
            </label>
          ))}
        </div>
        {kind === "group" && (
          <label>
            Name
            <input
              data-testid="new-chat-name"
              maxLength={100}
              required
              value={name}
              onInput={(e) => setName(e.currentTarget.value)}
            />
          </label>
        )}
        <div class="field">
          {kind === "group" ? "Members" : "With"}
          <div class="chips">
            {members.map((user) => (
              <span class="chip" key={user.id} data-testid="selected-member" data-username={user.username}>
                {user.displayName}
                <button
                  type="button"
                  aria-label={`Remove ${user.displayName}`}
                  onClick={() => setMembers(members.filter((m) => m.id !== user.id))}
                >
                  ×
                </button>
              </span>
            ))}
          </div>
          <UserSearch store={store} onPick={pick} exclude={exclude} />
        </div>
        {error !== undefined && (
          <p class="error" role="alert" data-testid="new-chat-error">
            {error}
          </p>
        )}
        <div class="actions">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" data-testid="new-chat-submit" disabled={!ready || busy}>
            Create
          </button>
        </div>
      </form>
    </div>
  )
}
