/** A chat's members: who is online, their roles; add and remove (owners and admins), roles and hand-over (the owner), leave, delete. */
import { useState } from "preact/hooks"
import { errorText, useStore } from "./hooks.ts"
import type { Store } from "./store.ts"
import { UserSearch } from "./UserSearch.tsx"

export function Members({ store, chatId }: { store: Store; chatId: string }) {
  useStore(store)
  const [error, setError] = useState<string | undefined>()
  const chat = store.details.get(chatId)
  const entry = store.chats.get(chatId)
  const me = store.user?.id
  const manager = entry?.role === "owner" || entry?.role === "admin"

  const attempt = (action: () => Promise<unknown>) => {
    setError(undefined)
    action().catch((cause) => setError(errorText(cause)))
  }

  if (chat === undefined || entry === undefined) {
    return (
      <aside class="members" data-testid="members-panel">
        <p class="muted">Loading…</p>
      </aside>
    )
  }
  const members = [...chat.members].sort(
    (a, b) =>
      Number(store.isOnline(chatId, b.userId)) - Number(store.isOnline(chatId, a.userId)) ||
      store.nameOf(a.userId).localeCompare(store.nameOf(b.userId))
  )
  return (
    <aside class="members" data-testid="members-panel">
      <h3>Members · {chat.members.length}</h3>
      <ul>
        {members.map((member) => {
          const online = store.isOnline(chatId, member.userId)
          const self = member.userId === me
          // The owner removes anyone; an admin removes members (docs/protocol.md "Roles").
          const removable =
            chat.kind === "group" && !self && (entry.role === "owner" || (manager && member.role === "member"))
          const owner = chat.kind === "group" && !self && entry.role === "owner"
          return (
            <li key={member.userId} data-testid="member" data-user-id={member.userId} data-online={online}>
              <i
                class={`presence${online ? " online" : ""}`}
                data-testid="presence"
                title={online ? "online" : "offline"}
              />
              <span class="member-name">{self ? `${store.user?.displayName} (you)` : store.nameOf(member.userId)}</span>
              {member.role !== "member" && <small class="role">{member.role}</small>}
              {owner && (
                <button
                  type="button"
                  class="link"
                  data-testid="member-role"
                  onClick={() =>
                    attempt(() => store.setRole(chatId, member.userId, member.role === "admin" ? "member" : "admin"))
                  }
                >
                  {member.role === "admin" ? "Make member" : "Make admin"}
                </button>
              )}
              {owner && (
                <button
                  type="button"
                  class="link"
                  data-testid="member-make-owner"
                  onClick={() => {
                    if (confirm("Hand this chat over? You will be an admin."))
                      attempt(() => store.setRole(chatId, member.userId, "owner"))
                  }}
                >
                  Make owner
                </button>
              )}
              {removable && (
                <button
                  type="button"
                  class="link danger"
                  data-testid="member-remove"
                  onClick={() => attempt(() => store.removeMember(chatId, member.userId))}
                >
                  Remove
                </button>
              )}
            </li>
          )
        })}
      </ul>
      {chat.kind === "group" && manager && (
        <div class="add-member">
          <UserSearch
            store={store}
            placeholder="Add people by username"
            exclude={new Set(chat.members.map((member) => member.userId))}
            onPick={(user) => attempt(() => store.addMembers(chatId, [user.id]))}
          />
        </div>
      )}
      {error !== undefined && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      <div class="danger-zone">
        {chat.kind === "group" && me !== undefined && entry.role !== "owner" && (
          <button
            type="button"
            class="link danger"
            data-testid="leave-chat"
            onClick={() => attempt(() => store.removeMember(chatId, me))}
          >
            Leave chat
          </button>
        )}
        {entry.role === "owner" && (
          <button
            type="button"
            class="link danger"
            data-testid="delete-chat"
            onClick={() => {
              if (confirm("Delete this chat and all its messages for everyone?"))
                attempt(() => store.deleteChat(chatId))
            }}
          >
            Delete chat
          </button>
        )}
      </div>
    </aside>
  )
}
