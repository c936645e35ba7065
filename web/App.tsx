/**
 * The shell: sign-in until there is a session (a saved one is resumed), then
 * the header, the chat list, the open chat and its members.
 */
import { useEffect, useState } from "preact/hooks"
import type { HarmonyError } from "../src/client/index.ts"
import { Auth } from "./Auth.tsx"
import { ChatView } from "./ChatView.tsx"
import { useStore } from "./hooks.ts"
import { Sidebar } from "./Sidebar.tsx"
import { type Status, Store, savedSession, saveSession } from "./store.ts"

type Phase = "resuming" | "signed-out" | "signed-in"

export function App() {
  const [store, setStore] = useState(() => makeStore())
  const [phase, setPhase] = useState<Phase>(() => (savedSession() === undefined ? "signed-out" : "resuming"))

  function makeStore(): Store {
    return new Store(() => {
      setStore(makeStore())
      setPhase("signed-out")
    })
  }

  // A saved session is resumed; while the server cannot be reached (a restart) it keeps trying.
  useEffect(() => {
    const session = savedSession()
    if (phase !== "resuming" || session === undefined) return
    let timer: ReturnType<typeof setTimeout> | undefined
    const attempt = (delay: number) =>
      store.resume(session).then(
        () => setPhase("signed-in"),
        (error: HarmonyError) => {
          if (error.transient) {
            timer = setTimeout(() => attempt(Math.min(delay * 2, 10_000)), delay)
            return
          }
          saveSession(null)
          setPhase("signed-out")
        }
      )
    void attempt(500)
    return () => clearTimeout(timer)
  }, [store])

  if (phase === "resuming") return <div class="splash">Connecting…</div>
  if (phase === "signed-out") return <Auth store={store} onSignedIn={() => setPhase("signed-in")} />
  return <Main store={store} />
}

const statusText: Record<Status, string> = {
  idle: "Offline",
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Disconnected"
}

function Main({ store }: { store: Store }) {
  useStore(store)
  const [membersOpen, setMembersOpen] = useState(false)

  // After a reload, reopen the chat named in the address once the list is in.
  useEffect(() => {
    if (store.chatsLoaded && store.activeChatId === undefined) {
      const chatId = store.chatFromLocation()
      if (chatId !== undefined) store.open(chatId)
    }
  }, [store.chatsLoaded])

  const unread = store.totalUnread()
  useEffect(() => {
    document.title = unread > 0 ? `(${unread}) Harmony` : "Harmony"
    return () => {
      document.title = "Harmony"
    }
  }, [unread])

  const active = store.activeChatId === undefined ? undefined : store.chats.get(store.activeChatId)
  return (
    <div class="shell">
      <header class="topbar">
        <span class="brand">Harmony</span>
        <span class={`status status-${store.status}`} data-testid="connection-status" data-status={store.status}>
          <i class="dot" />
          {statusText[store.status]}
        </span>
        <span class="spacer" />
        <span class="me" data-testid="current-user" data-user-id={store.user?.id}>
          {store.user?.displayName} <small>@{store.user?.username}</small>
        </span>
        <button type="button" class="link" data-testid="logout" onClick={() => void store.logout()}>
          Sign out
        </button>
      </header>
      {store.notice !== undefined && (
        <div class="notice" data-testid="notice" role="status">
          {store.notice}
        </div>
      )}
      <div class="body">
        <Sidebar store={store} />
        {active === undefined ? (
          <main class="empty" data-testid="no-chat">
            <p>{store.chats.size === 0 ? "No chats yet. Start one with “New chat”." : "Pick a chat."}</p>
          </main>
        ) : (
          <ChatView
            key={active.id}
            store={store}
            chatId={active.id}
            membersOpen={membersOpen}
            onToggleMembers={() => setMembersOpen(!membersOpen)}
          />
        )}
      </div>
    </div>
  )
}
