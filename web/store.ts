/**
 * The web client's state, fed by the SDK: the chat list with unread counts,
 * each opened chat's timeline (messages by seq, no duplicates, older pages
 * loaded on demand), typing, presence, read positions, and what the user is
 * sending. Components read it directly and re-render on `subscribe`.
 *
 * The list follows the user's own channel (`chat_added`, `chat_updated`,
 * `chat_removed`, `chat_deleted`, `unread`) and is reloaded only when the
 * socket (re)opens. Every chat in the list is subscribed, so unread counts move live; the SDK
 * resubscribes from the last seq it delivered after a reconnect, and the
 * timeline keys messages by seq, so a message delivered twice shows once, a
 * hole is fetched from history, and after a gap the server could not fill
 * the timeline is loaded again.
 *
 * Edits, deletes and reactions are changes with seqs of their own on the
 * chat's log (docs/protocol.md "Edits, deletes and reactions"): live, each is
 * applied to its message in a loaded timeline; history shows every message
 * as it is now, and the seqs it skips are changes, not holes.
 */
import {
  type Chat,
  type ChatSummary,
  createClient,
  type HarmonyClient,
  Message,
  newClientMsgId,
  type Role,
  type Session,
  type Status,
  type User
} from "../src/client/index.ts"

export type { Status }
export type ChatKind = "group" | "direct"
/** Ids as the SDK's events carry them. */
type ChatId = string
type UserId = string

export interface ChatEntry {
  readonly id: ChatId
  name: string | null
  kind: ChatKind
  role: Role
  lastSeq: number
  lastReadSeq: number
  /** When something last happened in it that this page saw (ms), for the list's order. */
  activity: number
}

/** A send not yet seen back from the server. */
export interface Pending {
  readonly clientMsgId: string
  readonly body: string
  acked: boolean
  failed?: string
}

/** One emoji's reactions on a message, as this page sees them. */
export interface Reaction {
  readonly emoji: string
  count: number
  /** The user reacted with it. */
  me: boolean
  /** Others' reactions seen live (true: has it), so a repeated add or remove counts once, as on the server. */
  readonly others: Map<UserId, boolean>
}

export interface Timeline {
  /** Ascending seq, each seq once. */
  messages: Array<Message>
  readonly seqs: Set<number>
  /** The seqs of changes: seen live, or skipped by history (so not holes). */
  readonly changeSeqs: Set<number>
  /** By message seq, in the order the emojis first appeared. */
  readonly reactions: Map<number, Array<Reaction>>
  /** The newest page has been fetched. */
  loaded: boolean
  hasOlder: boolean
  loadingOlder: boolean
  pending: Array<Pending>
}

const sessionKey = "harmony.session"
const directoryKey = "harmony.users"
const typingFor = 4_000

/*
 * The session lives in the tab's sessionStorage: a reload resumes it, and two
 * windows hold two independent logins. (Shared through localStorage, a second
 * sign-in would overwrite the first, and two tabs holding one rotating
 * refresh token would, once their refreshes drift 5 s apart, have the server
 * revoke the login as stolen.)
 */
export const savedSession = (): Session | undefined => {
  try {
    const text = sessionStorage.getItem(sessionKey)
    return text === null ? undefined : (JSON.parse(text) as Session)
  } catch {
    return undefined
  }
}

export const saveSession = (session: Session | null) => {
  if (session === null) sessionStorage.removeItem(sessionKey)
  else sessionStorage.setItem(sessionKey, JSON.stringify(session))
}

const errorText = (error: unknown) => (error instanceof Error ? error.message : String(error))

export class Store {
  readonly client: HarmonyClient
  user: User | undefined
  status: Status = "idle"
  chats = new Map<ChatId, ChatEntry>()
  details = new Map<ChatId, Chat>()
  timelines = new Map<ChatId, Timeline>()
  typing = new Map<ChatId, Map<UserId, number>>()
  online = new Map<ChatId, Set<UserId>>()
  reads = new Map<ChatId, Map<UserId, number>>()
  users = new Map<UserId, User>()
  activeChatId: ChatId | undefined
  /** The message a search hit opened: the chat view scrolls to it once and marks it. */
  focus: { readonly chatId: ChatId; readonly seq: number } | undefined
  notice: string | undefined
  chatsLoaded = false

  private listeners = new Set<() => void>()
  private stops: Array<() => void> = []
  private subscribed = new Set<ChatId>()
  private readTimers = new Map<ChatId, ReturnType<typeof setTimeout>>()
  private filling = new Set<ChatId>()
  private noticeTimer: ReturnType<typeof setTimeout> | undefined
  private scheduled = false
  private signedOut = false
  /** When chats were added or dropped here, so a list fetched before that does not undo it. */
  private touched = new Map<ChatId, number>()
  private onSignedOut: () => void

  constructor(onSignedOut: () => void) {
    this.onSignedOut = onSignedOut
    this.client = createClient({ baseUrl: location.origin, onSession: (session) => saveSession(session) })
    try {
      const saved = JSON.parse(localStorage.getItem(directoryKey) ?? "[]") as Array<User>
      for (const user of saved) this.users.set(user.id, user)
    } catch {
      // a broken directory is only names
    }
  }

  // --- subscriptions for components ---------------------------------------------------------

  subscribe(listener: () => void) {
    this.listeners.add(listener)
    return () => {
      this.listeners.delete(listener)
    }
  }

  /** Re-render once per tick however many changes happened in it. */
  changed() {
    if (this.scheduled) return
    this.scheduled = true
    queueMicrotask(() => {
      this.scheduled = false
      for (const listener of this.listeners) listener()
    })
  }

  say(notice: string) {
    this.notice = notice
    clearTimeout(this.noticeTimer)
    this.noticeTimer = setTimeout(() => {
      this.notice = undefined
      this.changed()
    }, 6_000)
    this.changed()
  }

  // --- signing in and out -------------------------------------------------------------------

  async register(input: { username: string; password: string; displayName?: string }) {
    await this.client.register(input)
    await this.start()
  }

  async login(input: { username: string; password: string }) {
    await this.client.login(input)
    await this.start()
  }

  async resume(session: Session) {
    await this.client.resume(session)
    await this.start()
  }

  async logout() {
    if (this.signedOut) return
    this.signedOut = true
    this.stop()
    saveSession(null)
    try {
      await this.client.logout()
      await this.client.close()
    } catch {
      // signed out locally either way
    }
    this.onSignedOut()
  }

  private async start() {
    this.user = this.client.user
    if (this.user !== undefined) this.remember([this.user])
    this.status = this.client.status
    const c = this.client
    this.stops.push(
      c.on("status", (status) => {
        const reopened = status === "open" && this.status !== "open" && this.chatsLoaded
        this.status = status
        // Who is online is known again from the presence frames of the resubscriptions.
        if (status !== "open") this.online.clear()
        // The user's channel does not replay what happened while the socket was down: the list does.
        if (reopened) void this.refreshChats()
        this.changed()
      }),
      c.on("message", (message) => this.onMessage(message)),
      c.on("message_edited", (change) =>
        this.onChange(change, (timeline, index, message) => {
          timeline.messages[index] = new Message({ ...message, body: change.body, editedAt: change.editedAt })
        })
      ),
      c.on("message_deleted", (change) =>
        this.onChange(change, (timeline, index, message) => {
          const { body: _body, editedAt: _editedAt, reactions: _reactions, ...rest } = message
          timeline.messages[index] = new Message({ ...rest, deletedAt: change.deletedAt })
          timeline.reactions.delete(message.seq)
        })
      ),
      c.on("reaction", (change) =>
        this.onChange(change, (timeline, _index, message) =>
          this.applyReaction(timeline, message.seq, change.userId, change.emoji, change.added)
        )
      ),
      c.on("typing", ({ chatId, userId }) => this.onTyping(chatId, userId)),
      c.on("read", ({ chatId, userId, seq }) => this.onRead(chatId, userId, seq)),
      c.on("presence", ({ chatId, online }) => {
        this.online.set(chatId, new Set(online))
        this.changed()
      }),
      c.on("join", ({ chatId, userId }) => {
        this.onlineIn(chatId).add(userId)
        this.changed()
      }),
      c.on("leave", ({ chatId, userId }) => {
        this.onlineIn(chatId).delete(userId)
        this.changed()
      }),
      c.on("member_added", ({ chatId }) => void this.loadDetails(chatId)),
      // The chat list, live from the user's own channel.
      c.on("chat_added", ({ chat, lastSeq, lastReadSeq }) => this.onChatAdded(chat, lastSeq, lastReadSeq)),
      c.on("chat_updated", ({ chat }) => this.onChatUpdated(chat)),
      c.on("chat_removed", ({ chatId }) => this.forget(chatId, "You were removed from a chat")),
      c.on("unread", ({ chatId, lastSeq }) => {
        const entry = this.chats.get(chatId)
        if (entry === undefined || lastSeq <= entry.lastSeq) return
        entry.lastSeq = lastSeq
        entry.activity = Date.now()
        this.changed()
      }),
      c.on("member_removed", ({ chatId, userId }) => {
        if (userId === this.user?.id) this.forget(chatId, "You were removed from a chat")
        else void this.loadDetails(chatId)
      }),
      c.on("chat_deleted", ({ chatId }) => this.forget(chatId, "A chat was deleted")),
      // Missed seqs may be changes to any message shown, not only new messages: start again from history.
      c.on("gap", ({ chatId }) => this.reload(chatId)),
      // The server's history of the chat is another one (it lost what we saw): start the timeline again from it.
      c.on("reset", ({ chatId, lastSeq }) => {
        const entry = this.chats.get(chatId)
        if (entry !== undefined) entry.lastSeq = lastSeq
        this.reload(chatId)
      }),
      c.on("error", (error) => {
        // The session ended (its refresh token is dead): back to signing in.
        if (error.code === "unauthorized") void this.logout()
        else if (error.code !== "network") this.say(error.message)
      })
    )
    const onVisible = () => {
      if (document.visibilityState === "visible" && this.activeChatId !== undefined) this.markRead(this.activeChatId)
    }
    document.addEventListener("visibilitychange", onVisible)
    this.stops.push(() => document.removeEventListener("visibilitychange", onVisible))
    this.changed()
    // The socket opens now, not at the first subscription: presence and the status are live at once.
    this.client.connect().catch(() => {
      // It keeps trying by itself; the status shows how it goes.
    })
    await this.refreshChats()
  }

  private stop() {
    for (const stop of this.stops.splice(0)) stop()
    for (const timer of this.readTimers.values()) clearTimeout(timer)
  }

  // --- the chat list ------------------------------------------------------------------------

  /** The list from the server, merged: new chats subscribed, vanished ones dropped, seqs only move forward. */
  async refreshChats() {
    const asked = performance.now()
    let summaries: ReadonlyArray<ChatSummary>
    try {
      summaries = await this.client.chats()
    } catch (error) {
      if (this.status === "open") this.say(`Could not load chats: ${errorText(error)}`)
      return
    }
    const seen = new Set<ChatId>()
    const stale = (chatId: ChatId) => (this.touched.get(chatId) ?? -1) >= asked
    for (const summary of summaries) {
      seen.add(summary.id)
      if (stale(summary.id)) continue
      const entry = this.chats.get(summary.id)
      if (entry === undefined) {
        // Found after the first load: someone just added us.
        this.chats.set(summary.id, { ...summary, activity: this.chatsLoaded ? Date.now() : 0 })
        if (summary.kind === "direct") void this.loadDetails(summary.id)
      } else {
        entry.name = summary.name
        entry.role = summary.role
        entry.lastSeq = Math.max(entry.lastSeq, summary.lastSeq)
        entry.lastReadSeq = Math.max(entry.lastReadSeq, summary.lastReadSeq)
      }
      this.ensureSubscribed(summary.id)
    }
    for (const id of [...this.chats.keys()]) if (!seen.has(id) && !stale(id)) this.forget(id)
    this.chatsLoaded = true
    this.changed()
  }

  private onChatAdded(chat: Chat, lastSeq: number, lastReadSeq: number) {
    this.touched.set(chat.id, performance.now())
    this.details.set(chat.id, chat)
    const role = chat.members.find((member) => member.userId === this.user?.id)?.role ?? "member"
    const entry = this.chats.get(chat.id)
    if (entry === undefined) {
      this.chats.set(chat.id, {
        id: chat.id,
        name: chat.name,
        kind: chat.kind,
        role,
        lastSeq,
        lastReadSeq,
        activity: Date.now()
      })
    } else {
      entry.name = chat.name
      entry.role = role
      entry.lastSeq = Math.max(entry.lastSeq, lastSeq)
      entry.lastReadSeq = Math.max(entry.lastReadSeq, lastReadSeq)
    }
    this.ensureSubscribed(chat.id)
    this.changed()
  }

  private onChatUpdated(chat: Chat) {
    const entry = this.chats.get(chat.id)
    if (entry === undefined) return
    this.details.set(chat.id, chat)
    entry.name = chat.name
    entry.role = chat.members.find((member) => member.userId === this.user?.id)?.role ?? entry.role
    this.changed()
  }

  private ensureSubscribed(chatId: ChatId) {
    if (this.subscribed.has(chatId)) return
    this.subscribed.add(chatId)
    const entry = this.chats.get(chatId)
    this.client.subscribe(chatId, { sinceSeq: entry?.lastSeq ?? 0 }).then(
      ({ lastSeq }) => {
        const current = this.chats.get(chatId)
        if (current !== undefined && lastSeq > current.lastSeq) {
          current.lastSeq = lastSeq
          this.changed()
        }
      },
      () => {
        // Not a member any more (or the chat is gone): the next refresh drops it.
        this.subscribed.delete(chatId)
      }
    )
  }

  /** Drops a chat we no longer see. */
  private forget(chatId: ChatId, notice?: string) {
    if (!this.chats.has(chatId)) return
    this.touched.set(chatId, performance.now())
    this.chats.delete(chatId)
    this.timelines.delete(chatId)
    this.details.delete(chatId)
    if (this.subscribed.delete(chatId)) this.client.unsubscribe(chatId).catch(() => {})
    if (this.activeChatId === chatId) {
      this.activeChatId = undefined
      if (notice !== undefined) this.say(notice)
    }
    this.changed()
  }

  unread(entry: ChatEntry) {
    return Math.max(0, entry.lastSeq - entry.lastReadSeq)
  }

  totalUnread() {
    let total = 0
    for (const entry of this.chats.values()) total += this.unread(entry)
    return total
  }

  sortedChats() {
    return [...this.chats.values()].sort(
      (a, b) => b.activity - a.activity || this.chatTitle(a).localeCompare(this.chatTitle(b))
    )
  }

  chatTitle(entry: { id: ChatId; name: string | null; kind: ChatKind }) {
    if (entry.kind === "direct") {
      const other = this.details.get(entry.id)?.members.find((member) => member.userId !== this.user?.id)
      const known = other === undefined ? undefined : this.users.get(other.userId)
      if (known !== undefined) return known.displayName
    }
    return entry.name ?? (entry.kind === "direct" ? "Direct chat" : "Untitled group")
  }

  // --- people -------------------------------------------------------------------------------

  remember(users: ReadonlyArray<User>) {
    for (const user of users) this.users.set(user.id, user)
    try {
      localStorage.setItem(directoryKey, JSON.stringify([...this.users.values()].slice(-500)))
    } catch {
      // storage full: names are a nicety
    }
    this.changed()
  }

  /** A person's name: from the directory, else looked up once (the short id shows meanwhile). */
  nameOf(userId: UserId) {
    if (userId === this.user?.id) return "You"
    const known = this.users.get(userId)
    if (known !== undefined) return known.displayName
    this.lookUp(userId)
    return `user ${userId.slice(-6)}`
  }

  private lookingUp = new Set<UserId>()

  private lookUp(userId: UserId) {
    if (this.lookingUp.has(userId)) return
    this.lookingUp.add(userId)
    this.client.getUser(userId).then(
      (user) => this.remember([user]),
      // Unknown or unreachable: the short id stays until the next page load
      // (asking again on every render would flood the server).
      () => undefined
    )
  }

  async searchUsers(prefix: string) {
    const users = await this.client.searchUsers(prefix)
    this.remember(users)
    return users
  }

  private onlineIn(chatId: ChatId) {
    let set = this.online.get(chatId)
    if (set === undefined) {
      set = new Set()
      this.online.set(chatId, set)
    }
    return set
  }

  isOnline(chatId: ChatId, userId: UserId) {
    return userId === this.user?.id ? this.status === "open" : (this.online.get(chatId)?.has(userId) ?? false)
  }

  // --- chats --------------------------------------------------------------------------------

  async loadDetails(chatId: ChatId) {
    try {
      const chat = await this.client.chat(chatId)
      this.details.set(chatId, chat)
      const entry = this.chats.get(chatId)
      if (entry !== undefined) {
        entry.name = chat.name
        const me = chat.members.find((member) => member.userId === this.user?.id)
        if (me !== undefined) entry.role = me.role
      }
      this.changed()
      return chat
    } catch {
      return undefined
    }
  }

  async createChat(input: { kind: ChatKind; name?: string; memberIds: Array<UserId> }) {
    const chat = await this.client.createChat(input)
    this.details.set(chat.id, chat)
    const me = chat.members.find((member) => member.userId === this.user?.id)
    if (!this.chats.has(chat.id)) {
      this.touched.set(chat.id, performance.now())
      this.chats.set(chat.id, {
        id: chat.id,
        name: chat.name,
        kind: chat.kind,
        role: me?.role ?? "owner",
        lastSeq: 0,
        lastReadSeq: 0,
        activity: Date.now()
      })
    }
    this.ensureSubscribed(chat.id)
    this.open(chat.id)
    return chat
  }

  async addMembers(chatId: ChatId, userIds: Array<UserId>) {
    const chat = await this.client.addMembers(chatId, userIds)
    if (chat !== undefined && chat !== null && typeof chat === "object" && "members" in chat) {
      this.details.set(chatId, chat as Chat)
      this.changed()
    } else {
      await this.loadDetails(chatId)
    }
  }

  async removeMember(chatId: ChatId, userId: UserId) {
    await this.client.removeMember(chatId, userId)
    if (userId === this.user?.id) this.forget(chatId)
    else await this.loadDetails(chatId)
  }

  /** Owner only: `owner` hands the chat over (we become an admin). */
  async setRole(chatId: ChatId, userId: UserId, role: Role) {
    this.onChatUpdated(await this.client.setRole(chatId, userId, role))
  }

  async deleteChat(chatId: ChatId) {
    await this.client.deleteChat(chatId)
    this.forget(chatId)
  }

  // --- the open chat ------------------------------------------------------------------------

  open(chatId: ChatId | undefined) {
    if (this.focus?.chatId !== chatId) this.focus = undefined
    this.activeChatId = chatId
    history.replaceState(null, "", chatId === undefined ? location.pathname : `#chat=${encodeURIComponent(chatId)}`)
    if (chatId !== undefined) {
      if (!this.details.has(chatId)) void this.loadDetails(chatId)
      const timeline = this.timeline(chatId)
      if (!timeline.loaded) void this.loadLatest(chatId)
      void this.loadReceipts(chatId)
      this.markRead(chatId)
    }
    this.changed()
  }

  /**
   * Opens a chat at one message (a search hit). A message older than the
   * loaded pages is fetched with the ones around it; the hole between those and
   * the newest page is filled like any other (repair), so the timeline stays
   * whole.
   */
  async jumpTo(chatId: ChatId, seq: number) {
    this.focus = { chatId, seq }
    this.open(chatId)
    if (this.timeline(chatId).seqs.has(seq)) return
    try {
      const page = await this.client.history(chatId, { after: Math.max(0, seq - 10), limit: 50 })
      this.insert(chatId, page.messages)
    } catch (error) {
      this.say(`Could not load the message: ${errorText(error)}`)
    }
    this.changed()
    this.repair(chatId)
  }

  /** Others' read positions as the server has them (live `read` events move them on from there). */
  private async loadReceipts(chatId: ChatId) {
    try {
      for (const { userId, seq } of await this.client.readPositions(chatId)) this.onRead(chatId, userId, seq)
    } catch {
      // receipts are a nicety: live `read` events still arrive
    }
  }

  /** The chat named in the address (#chat=ID), once the list has it. */
  chatFromLocation(): ChatId | undefined {
    const match = /^#chat=(.+)$/.exec(location.hash)
    if (match === null) return undefined
    const id = decodeURIComponent(match[1]!)
    return [...this.chats.keys()].find((chatId) => chatId === id)
  }

  timeline(chatId: ChatId): Timeline {
    let timeline = this.timelines.get(chatId)
    if (timeline === undefined) {
      timeline = {
        messages: [],
        seqs: new Set(),
        changeSeqs: new Set(),
        reactions: new Map(),
        loaded: false,
        hasOlder: true,
        loadingOlder: false,
        pending: []
      }
      this.timelines.set(chatId, timeline)
    }
    return timeline
  }

  /** Drops what a timeline shows and loads it again from history, keeping what is being sent. */
  private reload(chatId: ChatId) {
    const pending = this.timelines.get(chatId)?.pending ?? []
    this.timelines.delete(chatId)
    this.timeline(chatId).pending = pending
    if (this.activeChatId === chatId) void this.loadLatest(chatId)
    this.changed()
  }

  /** Adds messages (any order, any overlap); answers whether any was new. */
  private insert(chatId: ChatId, messages: ReadonlyArray<Message>) {
    const timeline = this.timeline(chatId)
    let added = false
    for (const message of messages) {
      if (timeline.seqs.has(message.seq)) continue
      timeline.seqs.add(message.seq)
      timeline.messages.push(message)
      if (message.reactions !== undefined && message.reactions.length > 0) {
        timeline.reactions.set(
          message.seq,
          message.reactions.map(({ emoji, count, me }) => ({ emoji, count, me, others: new Map() }))
        )
      }
      added = true
      if (message.authorId === this.user?.id) {
        timeline.pending = timeline.pending.filter((pending) => pending.clientMsgId !== message.clientMsgId)
      }
    }
    if (added) {
      timeline.messages.sort((a, b) => a.seq - b.seq)
      const entry = this.chats.get(chatId)
      const newest = timeline.messages.at(-1)
      if (entry !== undefined && newest !== undefined) {
        entry.activity = Math.max(entry.activity, Date.parse(newest.createdAt) || 0)
      }
    }
    return added
  }

  /** History is authoritative: the seqs from..to it has no message for are changes. */
  private cover(timeline: Timeline, from: number, to: number) {
    for (let seq = from; seq <= to; seq++) if (!timeline.seqs.has(seq)) timeline.changeSeqs.add(seq)
  }

  private async loadLatest(chatId: ChatId) {
    const timeline = this.timeline(chatId)
    const lastSeq = this.chats.get(chatId)?.lastSeq ?? 0
    try {
      const page = await this.client.history(chatId, { limit: 50 })
      this.insert(chatId, page.messages)
      const oldest = page.messages[0]?.seq
      if (oldest !== undefined) this.cover(timeline, oldest, Math.max(lastSeq, page.messages.at(-1)!.seq))
      timeline.loaded = true
      timeline.hasOlder = page.next !== null && (timeline.messages[0]?.seq ?? 1) > 1
      this.bumpLastSeq(chatId, timeline.messages.at(-1)?.seq ?? 0)
      this.markRead(chatId)
    } catch (error) {
      this.say(`Could not load messages: ${errorText(error)}`)
    }
    this.changed()
    // What arrived live meanwhile may have run ahead of the stored history.
    this.repair(chatId)
  }

  async loadOlder(chatId: ChatId) {
    const timeline = this.timeline(chatId)
    if (!timeline.loaded || !timeline.hasOlder || timeline.loadingOlder) return
    const oldest = timeline.messages[0]?.seq
    if (oldest === undefined || oldest <= 1) {
      timeline.hasOlder = false
      this.changed()
      return
    }
    timeline.loadingOlder = true
    this.changed()
    try {
      const page = await this.client.history(chatId, { before: oldest, limit: 50 })
      this.insert(chatId, page.messages)
      const first = page.messages[0]?.seq
      if (first !== undefined) this.cover(timeline, first, oldest - 1)
      timeline.hasOlder = page.next !== null && (timeline.messages[0]?.seq ?? 1) > 1
    } catch (error) {
      this.say(`Could not load older messages: ${errorText(error)}`)
    } finally {
      timeline.loadingOlder = false
      this.changed()
    }
  }

  /**
   * Where a loaded timeline misses messages: the seq after which one is
   * missing (a hole between two loaded messages, or the newest loaded behind
   * the chat's last seq), or undefined when it is whole.
   */
  private firstHole(chatId: ChatId): number | undefined {
    const timeline = this.timelines.get(chatId)
    if (timeline === undefined || !timeline.loaded) return undefined
    const newest = this.newestSeq(timeline)
    for (let seq = timeline.messages[0]?.seq ?? newest; seq < newest; seq++) {
      if (!timeline.seqs.has(seq + 1) && !timeline.changeSeqs.has(seq + 1)) return seq
    }
    return newest < (this.chats.get(chatId)?.lastSeq ?? 0) ? newest : undefined
  }

  /** The newest seq a timeline accounts for, message or change. */
  private newestSeq(timeline: Timeline) {
    let newest = timeline.messages.at(-1)?.seq ?? 0
    for (const seq of timeline.changeSeqs) if (seq > newest) newest = seq
    return newest
  }

  /** Fills holes from history; the store may lag live delivery a little, so it tries again for a while. */
  private repair(chatId: ChatId, attempt = 0) {
    const hole = this.firstHole(chatId)
    if (hole === undefined) return
    void this.fill(chatId, hole).then(() => {
      if (this.firstHole(chatId) !== undefined && attempt < 20) {
        setTimeout(() => this.repair(chatId, attempt + 1), 500 + attempt * 250)
      }
    })
  }

  /** Fetches the messages after `afterSeq` into a loaded timeline, page by page. */
  private async fill(chatId: ChatId, afterSeq: number) {
    const timeline = this.timelines.get(chatId)
    if (timeline === undefined || !timeline.loaded || this.filling.has(chatId)) return
    this.filling.add(chatId)
    const lastSeq = this.chats.get(chatId)?.lastSeq ?? 0
    try {
      let after = afterSeq
      for (let pages = 0; pages < 100; pages++) {
        const page = await this.client.history(chatId, { after, limit: 100 })
        this.insert(chatId, page.messages)
        const newest = page.messages.at(-1)?.seq
        if (newest !== undefined) this.bumpLastSeq(chatId, newest)
        const end = page.next === null || newest === undefined
        // Up to the end, history has every message the chat had when we asked: the rest are changes.
        this.cover(timeline, after + 1, end ? Math.max(lastSeq, newest ?? 0) : newest)
        if (end) break
        after = newest
      }
    } catch (error) {
      this.say(`Could not catch up: ${errorText(error)}`)
    } finally {
      this.filling.delete(chatId)
      this.changed()
    }
  }

  private bumpLastSeq(chatId: ChatId, seq: number) {
    const entry = this.chats.get(chatId)
    if (entry !== undefined && seq > entry.lastSeq) entry.lastSeq = seq
  }

  private onMessage(message: Message) {
    const chatId = message.chatId
    this.bumpLastSeq(chatId, message.seq)
    const entry = this.chats.get(chatId)
    if (entry !== undefined) entry.activity = Math.max(entry.activity, Date.parse(message.createdAt) || Date.now())
    if (entry !== undefined && message.authorId === this.user?.id) this.readOwn(entry, message.seq)
    this.typing.get(chatId)?.delete(message.authorId)
    const timeline = this.timelines.get(chatId)
    if (timeline?.loaded) {
      const newest = this.newestSeq(timeline)
      this.insert(chatId, [message])
      if (message.seq > newest + 1) this.repair(chatId)
    } else if (timeline !== undefined && message.authorId === this.user?.id) {
      timeline.pending = timeline.pending.filter((pending) => pending.clientMsgId !== message.clientMsgId)
    }
    if (chatId === this.activeChatId) this.markRead(chatId)
    this.changed()
  }

  /**
   * A change to a message, live (in seq order among the messages): applied
   * to its message if the timeline has it; a timeline loaded later shows it
   * from history. A change to a deleted message changes nothing, as on the server.
   */
  private onChange(
    change: { readonly chatId: ChatId; readonly seq: number; readonly targetSeq: number; readonly userId: UserId },
    apply: (timeline: Timeline, index: number, message: Message) => void
  ) {
    const { chatId, seq } = change
    this.bumpLastSeq(chatId, seq)
    const entry = this.chats.get(chatId)
    if (entry !== undefined && change.userId === this.user?.id) this.readOwn(entry, seq)
    const timeline = this.timelines.get(chatId)
    if (timeline?.loaded) {
      const newest = this.newestSeq(timeline)
      timeline.changeSeqs.add(seq)
      const index = timeline.messages.findIndex((message) => message.seq === change.targetSeq)
      const message = timeline.messages[index]
      if (message !== undefined && message.deletedAt === undefined) apply(timeline, index, message)
      if (seq > newest + 1) this.repair(chatId)
    }
    if (chatId === this.activeChatId) this.markRead(chatId)
    this.changed()
  }

  /** Adding a reaction one has, or removing one one has not, changes nothing (the server does the same). */
  private applyReaction(timeline: Timeline, seq: number, userId: UserId, emoji: string, added: boolean) {
    const reactions = timeline.reactions.get(seq) ?? []
    let reaction = reactions.find((candidate) => candidate.emoji === emoji)
    if (reaction === undefined) {
      if (!added) return
      reaction = { emoji, count: 0, me: false, others: new Map() }
      reactions.push(reaction)
      timeline.reactions.set(seq, reactions)
    }
    const mine = userId === this.user?.id
    // Someone not seen live since the load: history counted them if they had it.
    const had = mine ? reaction.me : (reaction.others.get(userId) ?? !added)
    if (had === added) return
    if (mine) reaction.me = added
    else reaction.others.set(userId, added)
    reaction.count += added ? 1 : -1
    if (reaction.count <= 0) {
      reactions.splice(reactions.indexOf(reaction), 1)
      if (reactions.length === 0) timeline.reactions.delete(seq)
    }
  }

  reactionsOf(chatId: ChatId, seq: number): ReadonlyArray<Reaction> {
    return this.timelines.get(chatId)?.reactions.get(seq) ?? []
  }

  /**
   * What I wrote or changed myself is not unread, here or after a reload
   * (the server counts every seq as unread until a read position passes it).
   */
  private readOwn(entry: ChatEntry, seq: number) {
    if (entry.lastReadSeq !== seq - 1) return
    entry.lastReadSeq = seq
    this.client.markRead(entry.id, seq).catch(() => {
      // The next read position covers it.
    })
  }

  private onTyping(chatId: ChatId, userId: UserId) {
    if (userId === this.user?.id) return
    let typists = this.typing.get(chatId)
    if (typists === undefined) {
      typists = new Map()
      this.typing.set(chatId, typists)
    }
    const until = Date.now() + typingFor
    typists.set(userId, until)
    setTimeout(() => {
      if (typists.get(userId) === until) {
        typists.delete(userId)
        this.changed()
      }
    }, typingFor)
    this.changed()
  }

  typists(chatId: ChatId) {
    return [...(this.typing.get(chatId)?.keys() ?? [])]
  }

  private onRead(chatId: ChatId, userId: UserId, seq: number) {
    if (userId === this.user?.id) {
      // Read on another device.
      const entry = this.chats.get(chatId)
      if (entry !== undefined && seq > entry.lastReadSeq) entry.lastReadSeq = seq
    } else {
      let readers = this.reads.get(chatId)
      if (readers === undefined) {
        readers = new Map()
        this.reads.set(chatId, readers)
      }
      if (seq > (readers.get(userId) ?? 0)) readers.set(userId, seq)
    }
    this.changed()
  }

  /**
   * Others' read positions as seq -> readers: each reader shows under the
   * newest loaded message they have read that someone else wrote.
   */
  receipts(chatId: ChatId) {
    const result = new Map<number, Array<UserId>>()
    const messages = this.timelines.get(chatId)?.messages ?? []
    for (const [userId, seq] of this.reads.get(chatId) ?? []) {
      let at: number | undefined
      for (let i = messages.length - 1; i >= 0; i--) {
        if (messages[i]!.seq <= seq && messages[i]!.authorId !== userId) {
          at = messages[i]!.seq
          break
        }
      }
      if (at === undefined) continue
      const readers = result.get(at) ?? []
      readers.push(userId)
      result.set(at, readers)
    }
    return result
  }

  /** Marks the open chat read up to its newest message, when the page is visible (debounced). */
  markRead(chatId: ChatId) {
    if (document.visibilityState !== "visible" || chatId !== this.activeChatId) return
    const entry = this.chats.get(chatId)
    if (entry === undefined || entry.lastSeq <= entry.lastReadSeq) return
    clearTimeout(this.readTimers.get(chatId))
    this.readTimers.set(
      chatId,
      setTimeout(() => {
        this.readTimers.delete(chatId)
        const seq = entry.lastSeq
        if (seq <= entry.lastReadSeq) return
        entry.lastReadSeq = seq
        this.changed()
        this.client.markRead(chatId, seq).catch(() => {
          // The next visible message retries.
        })
      }, 200)
    )
  }

  // --- sending ------------------------------------------------------------------------------

  /**
   * Sends with a clientMsgId chosen here, so the message shows as pending
   * until it comes back live (the SDK resends it across reconnects until the
   * server acks it; the server stores it once).
   */
  send(chatId: ChatId, body: string) {
    const timeline = this.timeline(chatId)
    const pending: Pending = { clientMsgId: newClientMsgId(), body, acked: false }
    timeline.pending.push(pending)
    this.changed()
    this.client.send(chatId, body, { clientMsgId: pending.clientMsgId }).then(
      () => {
        pending.acked = true
        this.changed()
        // Accepted but not seen live after a while (it may have fallen in a gap): look in history.
        setTimeout(() => {
          if (timeline.pending.includes(pending)) void this.fill(chatId, timeline.messages.at(-1)?.seq ?? 0)
        }, 5_000)
      },
      (error) => {
        pending.failed = errorText(error)
        this.changed()
      }
    )
  }

  dismiss(chatId: ChatId, clientMsgId: string) {
    const timeline = this.timeline(chatId)
    timeline.pending = timeline.pending.filter((pending) => pending.clientMsgId !== clientMsgId)
    this.changed()
  }

  // --- edits, deletes and reactions ---------------------------------------------------------
  //
  // Each shows when its frame comes back (the SDK retries a transient failure
  // with the same Idempotency-Key); the promise settles with the server's 202.

  /** The user's own messages only. */
  canEdit(message: Message) {
    return message.authorId === this.user?.id && message.deletedAt === undefined
  }

  /** The user's own messages, and anyone's for the chat's owner and admins. */
  canDelete(chatId: ChatId, message: Message) {
    const role = this.chats.get(chatId)?.role
    return message.deletedAt === undefined && (this.canEdit(message) || role === "owner" || role === "admin")
  }

  async editMessage(chatId: ChatId, seq: number, body: string) {
    await this.client.editMessage(chatId, seq, body)
  }

  async deleteMessage(chatId: ChatId, seq: number) {
    try {
      await this.client.deleteMessage(chatId, seq)
    } catch (error) {
      this.say(`Could not delete the message: ${errorText(error)}`)
    }
  }

  /** Adds the user's reaction, or takes it back if they have it. */
  async toggleReaction(chatId: ChatId, seq: number, emoji: string) {
    const mine = this.reactionsOf(chatId, seq).some((reaction) => reaction.emoji === emoji && reaction.me)
    try {
      if (mine) await this.client.unreact(chatId, seq, emoji)
      else await this.client.react(chatId, seq, emoji)
    } catch (error) {
      this.say(`Could not ${mine ? "remove the" : "add a"} reaction: ${errorText(error)}`)
    }
  }

  typingIn(chatId: ChatId) {
    try {
      this.client.typing(chatId)
    } catch {
      // typing is best effort
    }
  }
}
