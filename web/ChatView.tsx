/**
 * One chat: its messages (older pages load as you scroll up; the view stays
 * pinned to the bottom while you are there), who is typing, read receipts,
 * the composer, and the members panel. Each message can be reacted to, and
 * edited or deleted by whoever may (its author; the owner and admins delete
 * anyone's).
 */
import type { Message } from "../src/client/index.ts"
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks"
import { errorText, timeOf, useStore } from "./hooks.ts"
import { Members } from "./Members.tsx"
import type { Store } from "./store.ts"

const typingEvery = 2_000
/** What the reaction picker offers (any reaction someone made shows, and can be joined, from its chip). */
const pickable = ["👍", "❤️", "😂", "🎉", "😮", "😢"]

export function ChatView({
  store,
  chatId,
  membersOpen,
  onToggleMembers
}: {
  store: Store
  chatId: string
  membersOpen: boolean
  onToggleMembers: () => void
}) {
  useStore(store)
  const entry = store.chats.get(chatId)!
  const timeline = store.timeline(chatId)
  const chat = store.details.get(chatId)
  const list = useRef<HTMLDivElement>(null)
  const atBottom = useRef(true)
  const lastHeight = useRef(0)
  const lastFirstSeq = useRef<number | undefined>(undefined)
  const [showJump, setShowJump] = useState(false)
  /** The focused message (a search hit) this view has scrolled to, so it does so once. */
  const shownFocus = useRef<object | undefined>(undefined)
  const focus = store.focus?.chatId === chatId ? store.focus : undefined

  // Keep the reader's place: older messages prepended keep the view where it
  // was; new ones scroll into view only when the reader was at the bottom.
  useLayoutEffect(() => {
    const el = list.current
    if (el === null) return
    const first = timeline.messages[0]?.seq
    if (lastFirstSeq.current !== undefined && first !== undefined && first < lastFirstSeq.current) {
      el.scrollTop += el.scrollHeight - lastHeight.current
    } else if (atBottom.current) {
      el.scrollTop = el.scrollHeight
    }
    // A search hit: once its message is here, bring it into view (and stay there, off the bottom).
    if (focus !== undefined && shownFocus.current !== focus) {
      const target = el.querySelector<HTMLElement>(`[data-seq="${focus.seq}"]`)
      if (target !== null) {
        shownFocus.current = focus
        target.scrollIntoView({ block: "center" })
        atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 48
        setShowJump(!atBottom.current)
      }
    }
    lastHeight.current = el.scrollHeight
    lastFirstSeq.current = first
    // A first page too short to scroll cannot be scrolled up: load more now.
    if (timeline.loaded && timeline.hasOlder && !timeline.loadingOlder && el.scrollHeight <= el.clientHeight + 8) {
      void store.loadOlder(chatId)
    }
  })

  const onScroll = () => {
    const el = list.current
    if (el === null) return
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 48
    if (atBottom.current !== showJump) setShowJump(!atBottom.current)
    if (el.scrollTop < 120) void store.loadOlder(chatId)
    if (atBottom.current) store.markRead(chatId)
  }

  const toBottom = () => {
    atBottom.current = true
    setShowJump(false)
    const el = list.current
    if (el !== null) el.scrollTop = el.scrollHeight
  }

  const receipts = store.receipts(chatId)
  const typists = store.typists(chatId)
  const online = chat?.members.filter((member) => store.isOnline(chatId, member.userId)).length ?? 0

  return (
    <>
      <main class="chat" data-testid="chat-view" data-chat-id={chatId}>
        <header class="chat-head">
          <div>
            <h2 data-testid="chat-title">{store.chatTitle(entry)}</h2>
            <small class="muted">
              {entry.kind === "direct" ? "Direct message" : `${chat?.members.length ?? "…"} members`} · {online} online
            </small>
          </div>
          <button
            type="button"
            class={membersOpen ? "selected" : ""}
            data-testid="members-toggle"
            onClick={onToggleMembers}
          >
            Members
          </button>
        </header>
        <div class="messages-wrap">
          <div class="messages" ref={list} onScroll={onScroll} data-testid="message-list">
            {timeline.loaded && !timeline.hasOlder && (
              <div class="history-start" data-testid="history-start">
                {entry.kind === "direct"
                  ? `The beginning of your conversation with ${store.chatTitle(entry)}`
                  : `The beginning of ${store.chatTitle(entry)}`}
              </div>
            )}
            {timeline.loadingOlder && (
              <div class="muted center" data-testid="loading-older">
                Loading older messages…
              </div>
            )}
            {!timeline.loaded && <div class="muted center">Loading…</div>}
            {timeline.messages.map((message, index) => {
              const previous = timeline.messages[index - 1]
              const grouped =
                previous !== undefined &&
                previous.authorId === message.authorId &&
                Date.parse(message.createdAt) - Date.parse(previous.createdAt) < 5 * 60_000
              const readers = receipts.get(message.seq)
              return (
                <MessageItem
                  key={message.seq}
                  store={store}
                  chatId={chatId}
                  message={message}
                  grouped={grouped}
                  readers={readers}
                  focused={focus?.seq === message.seq}
                />
              )
            })}
            {timeline.pending.map((pending) => (
              <div
                key={pending.clientMsgId}
                class={`message mine pending${pending.failed !== undefined ? " failed" : ""}`}
                data-testid="pending-message"
              >
                <div class="bubble">{pending.body}</div>
                <div class="receipt">
                  {pending.failed === undefined && (pending.acked ? "Sent" : "Sending…")}
                  {pending.failed !== undefined && (
                    <>
                      Not sent: {pending.failed}{" "}
                      <button type="button" class="link" onClick={() => store.dismiss(chatId, pending.clientMsgId)}>
                        Dismiss
                      </button>
                    </>
                  )}
                </div>
              </div>
            ))}
          </div>
          {showJump && (
            <button type="button" class="jump" data-testid="jump-to-latest" onClick={toBottom}>
              ↓ Latest
            </button>
          )}
        </div>
        <div class="typing" data-testid="typing-indicator" aria-live="polite">
          {typists.length === 1 && `${store.nameOf(typists[0]!)} is typing…`}
          {typists.length === 2 && `${store.nameOf(typists[0]!)} and ${store.nameOf(typists[1]!)} are typing…`}
          {typists.length > 2 && "Several people are typing…"}
        </div>
        <Composer store={store} chatId={chatId} onSent={toBottom} />
      </main>
      {membersOpen && <Members store={store} chatId={chatId} />}
    </>
  )
}

function Composer({ store, chatId, onSent }: { store: Store; chatId: string; onSent: () => void }) {
  const [text, setText] = useState("")
  const lastTyping = useRef(0)

  const send = () => {
    const body = text.trim()
    if (body === "") return
    store.send(chatId, body)
    setText("")
    onSent()
    lastTyping.current = 0
  }

  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault()
        send()
      }}
    >
      <textarea
        data-testid="composer-input"
        rows={1}
        maxLength={4000}
        placeholder="Write a message"
        value={text}
        onInput={(e) => {
          setText(e.currentTarget.value)
          const now = Date.now()
          if (e.currentTarget.value !== "" && now - lastTyping.current > typingEvery) {
            lastTyping.current = now
            store.typingIn(chatId)
          }
        }}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault()
            send()
          }
        }}
      />
      <button type="submit" class="primary" data-testid="composer-send" disabled={text.trim() === ""}>
        Send
      </button>
    </form>
  )
}

function MessageItem({
  store,
  chatId,
  message,
  grouped,
  readers,
  focused
}: {
  store: Store
  chatId: string
  message: Message
  grouped: boolean
  readers: ReadonlyArray<string> | undefined
  /** A search hit this view was opened at. */
  focused: boolean
}) {
  const [editing, setEditing] = useState(false)
  const [picking, setPicking] = useState(false)
  const mine = message.authorId === store.user?.id
  const deleted = message.deletedAt !== undefined
  const reactions = store.reactionsOf(chatId, message.seq)
  const react = (emoji: string) => {
    setPicking(false)
    void store.toggleReaction(chatId, message.seq, emoji)
  }

  return (
    <div
      class={`message${mine ? " mine" : ""}${grouped ? " grouped" : ""}${deleted ? " deleted" : ""}${focused ? " focused" : ""}`}
      data-testid="message"
      data-seq={message.seq}
      data-focused={focused}
      data-author-id={message.authorId}
      data-mine={mine}
      data-deleted={deleted}
    >
      {!grouped && (
        <div class="meta">
          <span class="author" data-testid="message-author">
            {store.nameOf(message.authorId)}
          </span>
          <time dateTime={message.createdAt}>{timeOf(message.createdAt)}</time>
        </div>
      )}
      {editing && !deleted ? (
        <Editor store={store} chatId={chatId} message={message} onDone={() => setEditing(false)} />
      ) : (
        <div class="line">
          {deleted ? (
            <div class="bubble tombstone" data-testid="message-tombstone">
              This message was deleted
            </div>
          ) : (
            <div class="bubble" data-testid="message-body" title={new Date(message.createdAt).toLocaleString()}>
              {message.body}
            </div>
          )}
          {!deleted && (
            <div class="actions">
              <button
                type="button"
                class="link"
                data-testid="message-react"
                title="Add a reaction"
                onClick={() => setPicking(!picking)}
              >
                ☺
              </button>
              {store.canEdit(message) && (
                <button type="button" class="link" data-testid="message-edit" onClick={() => setEditing(true)}>
                  Edit
                </button>
              )}
              {store.canDelete(chatId, message) && (
                <button
                  type="button"
                  class="link danger"
                  data-testid="message-delete"
                  onClick={() => {
                    if (confirm("Delete this message for everyone?")) void store.deleteMessage(chatId, message.seq)
                  }}
                >
                  Delete
                </button>
              )}
            </div>
          )}
        </div>
      )}
      {picking && !deleted && (
        <div class="picker" data-testid="reaction-picker">
          {pickable.map((emoji) => (
            <button
              type="button"
              key={emoji}
              class="pick"
              data-testid="reaction-pick"
              data-emoji={emoji}
              onClick={() => react(emoji)}
            >
              {emoji}
            </button>
          ))}
        </div>
      )}
      {(reactions.length > 0 || (message.editedAt !== undefined && !deleted)) && (
        <div class="reactions">
          {reactions.map((reaction) => (
            <button
              type="button"
              key={reaction.emoji}
              class={`reaction${reaction.me ? " me" : ""}`}
              data-testid="reaction"
              data-emoji={reaction.emoji}
              data-count={reaction.count}
              data-me={reaction.me}
              title={reaction.me ? "Take your reaction back" : "React with this too"}
              onClick={() => react(reaction.emoji)}
            >
              {reaction.emoji} {reaction.count}
            </button>
          ))}
          {message.editedAt !== undefined && !deleted && (
            <small class="edited" data-testid="message-edited" title={new Date(message.editedAt).toLocaleString()}>
              (edited)
            </small>
          )}
        </div>
      )}
      {readers !== undefined && (
        <div class="receipt" data-testid="read-receipt">
          Seen by {readers.map((userId) => store.nameOf(userId)).join(", ")}
        </div>
      )}
    </div>
  )
}

/** The inline editor: Enter saves, Escape (or Cancel) leaves the message as it was. */
function Editor({
  store,
  chatId,
  message,
  onDone
}: {
  store: Store
  chatId: string
  message: Message
  onDone: () => void
}) {
  const [text, setText] = useState(message.body ?? "")
  const [saving, setSaving] = useState(false)
  const [error, setError] = useState<string | undefined>(undefined)
  const input = useRef<HTMLTextAreaElement>(null)
  useEffect(() => {
    input.current?.focus()
  }, [])

  const save = async () => {
    const body = text.trim()
    if (body === "" || saving) return
    if (body === message.body) return onDone()
    setSaving(true)
    setError(undefined)
    try {
      await store.editMessage(chatId, message.seq, body)
      onDone()
    } catch (failure) {
      setError(errorText(failure))
      setSaving(false)
    }
  }

  return (
    <form
      class="editor"
      data-testid="message-editor"
      onSubmit={(e) => {
        e.preventDefault()
        void save()
      }}
    >
      <textarea
        data-testid="message-editor-input"
        rows={1}
        maxLength={4000}
        value={text}
        disabled={saving}
        ref={input}
        onInput={(e) => setText(e.currentTarget.value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault()
            void save()
          } else if (e.key === "Escape") onDone()
        }}
      />
      <div class="editor-buttons">
        {error !== undefined && (
          <span class="error" role="alert">
            {error}
          </span>
        )}
        <button type="button" class="small" onClick={onDone} disabled={saving}>
          Cancel
        </button>
        <button
          type="submit"
          class="small primary"
          data-testid="message-editor-save"
          disabled={saving || text.trim() === ""}
        >
          Save
        </button>
      </div>
    </form>
  )
}
