/**
 * The SDK's public shape: the options, the events, and the client as
 * Promises (`HarmonyClient`) and as Effects (`HarmonyClientEffect`).
 */
import type { Effect } from "effect"
import type {
  Chat,
  ChatSummary,
  Message,
  MessageDeleted,
  MessageEdited,
  ReactionChanged,
  ReadPosition,
  Role,
  SearchHit,
  Session,
  User
} from "../schema/Domain.ts"
import type { HarmonyError } from "./HarmonyError.ts"

/**
 * The WebSocket's state: `idle` (not wanted yet, or logged out), `connecting`
 * (until the first connection opens), `open` (authenticated), `reconnecting`
 * (an open connection was lost; trying again), `closed` (after `close()`).
 */
export type Status = "idle" | "connecting" | "open" | "reconnecting" | "closed"

export interface ClientOptions {
  /** `"http://host:port"`; the WebSocket URL is derived from it (http → ws, + "/v1/ws"). */
  readonly baseUrl: string
  /** Defaults to `globalThis.fetch`. */
  readonly fetch?: typeof fetch
  /** Defaults to `globalThis.WebSocket`. */
  readonly WebSocket?: typeof WebSocket
  /** Reconnect backoff: exponential from `initialDelayMs` (250) to `maxDelayMs` (10 000), each delay jittered ±20 %. */
  readonly reconnect?: { readonly initialDelayMs?: number; readonly maxDelayMs?: number }
  /** Called whenever the tokens change (login, refresh, logout → null), so apps can persist them. */
  readonly onSession?: (session: Session | null) => void
}

export interface SubscribeResult {
  readonly lastSeq: number
  readonly recovered: boolean
  /** The epoch of the chat's history (absent from older servers): keep it with `lastSeq` to resume later. */
  readonly epoch?: string | undefined
}

export interface SubscribeOptions {
  /** Resume after this seq: what came after it is replayed. */
  readonly sinceSeq?: number
  /** The epoch `sinceSeq` belongs to (from an earlier `SubscribeResult`): another epoch means a `reset`. */
  readonly epoch?: string
}

export interface Accepted {
  readonly id: string
  readonly clientMsgId: string
}

/** A change (edit, delete, reaction) the server accepted: its id. */
export interface ChangeAccepted {
  readonly id: string
}

export interface ChangeOptions {
  /**
   * Makes the change idempotent (1–128 characters): the same key is one
   * change however often it is sent. Default: a fresh key per call (its own
   * retries reuse it).
   */
  readonly idempotencyKey?: string
}

export interface HistoryPage {
  readonly messages: ReadonlyArray<Message>
  /** The cursor for the next page the same way (`before` or `after`), or null at the end. */
  readonly next: number | null
}

export interface SearchQuery {
  /** Words, "quoted phrases", `or`, `-word` (1 to 200 characters). */
  readonly q: string
  /** Only this chat's messages. */
  readonly chatId?: string
  /** The previous page's `next`. */
  readonly before?: string
  /** Hits per page, 1 to 50 (default 20). */
  readonly limit?: number
}

export interface SearchPage {
  /** Best first; only from chats the caller is a member of. */
  readonly hits: ReadonlyArray<SearchHit>
  /** Pass as `before` for the next page; null on the last one. */
  readonly next: string | null
}

export interface ClientEvents {
  /**
   * Decoded; each (chatId, seq) exactly once, in seq order per chat — seqs
   * shared with the three change events below, which take seqs of their own.
   */
  readonly message: Message
  /** Message `targetSeq` now reads `body` (docs/protocol.md "Edits, deletes and reactions"). */
  readonly message_edited: MessageEdited
  /** Message `targetSeq` was deleted: show a tombstone. A change to a deleted message changes nothing. */
  readonly message_deleted: MessageDeleted
  /** `userId` added (`added`) or removed their `emoji` on message `targetSeq` (a no-op when nothing changes). */
  readonly reaction: ReactionChanged
  readonly typing: { readonly chatId: string; readonly userId: string }
  readonly read: { readonly chatId: string; readonly userId: string; readonly seq: number }
  readonly presence: { readonly chatId: string; readonly online: ReadonlyArray<string> }
  readonly join: { readonly chatId: string; readonly userId: string }
  readonly leave: { readonly chatId: string; readonly userId: string }
  readonly member_added: { readonly chatId: string; readonly userId: string }
  readonly member_removed: { readonly chatId: string; readonly userId: string }
  /** The user's chat list (docs/protocol.md "The user's own channel"); also on a chat the client never subscribed to. */
  readonly chat_deleted: { readonly chatId: string }
  /** The user joined a chat (created it elsewhere, was added, a direct chat was started with them). */
  readonly chat_added: { readonly chat: Chat; readonly lastSeq: number; readonly lastReadSeq: number }
  /** The user left or was removed from the chat (a subscription to it ends). */
  readonly chat_removed: { readonly chatId: string }
  /** Renamed, or its owner or a member's role changed: the chat as it is now. */
  readonly chat_updated: { readonly chat: Chat }
  /** A message arrived in a chat this client is not subscribed to: its newest seq (badge = lastSeq - lastReadSeq). */
  readonly unread: { readonly chatId: string; readonly lastSeq: number }
  readonly status: Status
  /** Server error frames not tied to a pending call, and connection problems. */
  readonly error: HarmonyError
  /**
   * The server could not replay what this client missed (`recovered:false`):
   * seqs `fromSeq..toSeq` will not arrive live — fetch them with
   * `history(chatId, { after: fromSeq - 1 })`, which shows messages as they
   * are now (the seqs of changes in the range are not in history: their
   * effect is). Live delivery goes on after `toSeq`.
   */
  readonly gap: { readonly chatId: string; readonly fromSeq: number; readonly toSeq: number }
  /**
   * The chat's history is not the one this client's seqs belong to (its
   * epoch changed: the server lost history): drop what is kept of the chat
   * and reload it from `history`. Live delivery goes on after `lastSeq`.
   */
  readonly reset: { readonly chatId: string; readonly lastSeq: number; readonly epoch: string | undefined }
}

export interface RegisterInput {
  readonly username: string
  readonly password: string
  readonly displayName?: string
}
export interface LoginInput {
  readonly username: string
  readonly password: string
}
export interface CreateChatInput {
  readonly name?: string
  readonly kind: "group" | "direct"
  readonly memberIds: ReadonlyArray<string>
}
export interface HistoryQuery {
  readonly before?: number
  readonly after?: number
  readonly limit?: number
}

/** A stored session: a `Session` or its JSON (e.g. from localStorage). */
export type StoredSession = Session | typeof Session.Encoded

/** The client as Effects: every call fails with `HarmonyError` only. */
export interface HarmonyClientEffect {
  register(input: RegisterInput): Effect.Effect<Session, HarmonyError>
  login(input: LoginInput): Effect.Effect<Session, HarmonyError>
  resume(session: StoredSession): Effect.Effect<User, HarmonyError>
  logout(): Effect.Effect<void>
  me(): Effect.Effect<User, HarmonyError>
  chats(): Effect.Effect<ReadonlyArray<ChatSummary>, HarmonyError>
  searchUsers(prefix: string): Effect.Effect<ReadonlyArray<User>, HarmonyError>
  /** One user by id (a message's author, a chat member); a closed account answers as "Deleted user". */
  getUser(userId: string): Effect.Effect<User, HarmonyError>
  createChat(input: CreateChatInput): Effect.Effect<Chat, HarmonyError>
  chat(chatId: string): Effect.Effect<Chat, HarmonyError>
  renameChat(chatId: string, name: string): Effect.Effect<Chat, HarmonyError>
  deleteChat(chatId: string): Effect.Effect<void, HarmonyError>
  addMembers(chatId: string, userIds: ReadonlyArray<string>): Effect.Effect<Chat, HarmonyError>
  removeMember(chatId: string, userId: string): Effect.Effect<void, HarmonyError>
  /** Owner only: `admin` or `member`, or `owner` to hand the chat over (the caller becomes an admin). */
  setRole(chatId: string, userId: string, role: Role): Effect.Effect<Chat, HarmonyError>
  history(chatId: string, page: HistoryQuery): Effect.Effect<HistoryPage, HarmonyError>
  /** Full-text search over the messages of the caller's chats (`GET /v1/search`). */
  search(query: SearchQuery): Effect.Effect<SearchPage, HarmonyError>
  markRead(chatId: string, seq: number): Effect.Effect<void, HarmonyError>
  /** Every member's read position (read receipts that survive a reload; live ones arrive as `read` events). */
  readPositions(chatId: string): Effect.Effect<ReadonlyArray<ReadPosition>, HarmonyError>
  /** The author edits message `seq`; transient failures are retried with the same Idempotency-Key. */
  editMessage(
    chatId: string,
    seq: number,
    body: string,
    options?: ChangeOptions
  ): Effect.Effect<ChangeAccepted, HarmonyError>
  /** The author, the owner or an admin deletes message `seq` (retried like `editMessage`). */
  deleteMessage(chatId: string, seq: number, options?: ChangeOptions): Effect.Effect<ChangeAccepted, HarmonyError>
  /** Adds the caller's `emoji` to message `seq` (retried like `editMessage`). */
  react(
    chatId: string,
    seq: number,
    emoji: string,
    options?: ChangeOptions
  ): Effect.Effect<ChangeAccepted, HarmonyError>
  /** Removes the caller's `emoji` from message `seq` (retried like `editMessage`). */
  unreact(
    chatId: string,
    seq: number,
    emoji: string,
    options?: ChangeOptions
  ): Effect.Effect<ChangeAccepted, HarmonyError>
  connect(): Effect.Effect<void, HarmonyError>
  subscribe(chatId: string, options?: SubscribeOptions): Effect.Effect<SubscribeResult, HarmonyError>
  unsubscribe(chatId: string): Effect.Effect<void>
  send(chatId: string, body: string, options?: { readonly clientMsgId?: string }): Effect.Effect<Accepted, HarmonyError>
  close(): Effect.Effect<void>
}

export interface HarmonyClient {
  /** The logged-in user, if any. */
  readonly user: User | undefined
  readonly status: Status
  /** The same client as Effects, for Effect programs. */
  readonly effect: HarmonyClientEffect
  register(input: RegisterInput): Promise<Session>
  login(input: LoginInput): Promise<Session>
  /** Starts from stored tokens: refreshes if the access token expired; rejects with `unauthorized` if the refresh token is dead. */
  resume(session: StoredSession): Promise<User>
  /** Revokes the tokens (best effort: local state is cleared even if the server cannot be reached). */
  logout(): Promise<void>
  me(): Promise<User>
  chats(): Promise<ReadonlyArray<ChatSummary>>
  searchUsers(prefix: string): Promise<ReadonlyArray<User>>
  /** One user by id (a message's author, a chat member); a closed account answers as "Deleted user". */
  getUser(userId: string): Promise<User>
  createChat(input: CreateChatInput): Promise<Chat>
  chat(chatId: string): Promise<Chat>
  renameChat(chatId: string, name: string): Promise<Chat>
  deleteChat(chatId: string): Promise<void>
  addMembers(chatId: string, userIds: ReadonlyArray<string>): Promise<Chat>
  removeMember(chatId: string, userId: string): Promise<void>
  /** Owner only: `admin` or `member`, or `owner` to hand the chat over (the caller becomes an admin). */
  setRole(chatId: string, userId: string, role: Role): Promise<Chat>
  history(chatId: string, page: HistoryQuery): Promise<HistoryPage>
  /** Full-text search over the messages of the caller's chats, best first (`GET /v1/search`). */
  search(query: SearchQuery): Promise<SearchPage>
  /** HTTP `POST /read`: stores the position; the server sends the other members a `read` frame. */
  markRead(chatId: string, seq: number): Promise<void>
  /** Every member's read position (read receipts that survive a reload; live ones arrive as `read` events). */
  readPositions(chatId: string): Promise<ReadonlyArray<ReadPosition>>
  /**
   * The author edits message `seq` (`PATCH /v1/chats/{chatId}/messages/{seq}`): resolves once the chat's
   * log holds it; transient failures are retried with the same Idempotency-Key, so it is made once.
   * Subscribers (this client too) get `message_edited`.
   */
  editMessage(chatId: string, seq: number, body: string, options?: ChangeOptions): Promise<ChangeAccepted>
  /** The author, the chat's owner or an admin deletes message `seq`; subscribers get `message_deleted`. */
  deleteMessage(chatId: string, seq: number, options?: ChangeOptions): Promise<ChangeAccepted>
  /** Adds the caller's reaction `emoji` (1–32 characters, no whitespace) to message `seq`; subscribers get `reaction`. */
  react(chatId: string, seq: number, emoji: string, options?: ChangeOptions): Promise<ChangeAccepted>
  /** Removes the caller's reaction `emoji` from message `seq`; subscribers get `reaction` with `added: false`. */
  unreact(chatId: string, seq: number, emoji: string, options?: ChangeOptions): Promise<ChangeAccepted>
  /** Opens the WebSocket now instead of on the first subscribe/send; resolves once it is authenticated. */
  connect(): Promise<void>
  subscribe(chatId: string, options?: SubscribeOptions): Promise<SubscribeResult>
  unsubscribe(chatId: string): Promise<void>
  /** Resolves on the ack; retries across reconnects with the same clientMsgId; rejects only on a non-transient error. */
  send(chatId: string, body: string, options?: { readonly clientMsgId?: string }): Promise<Accepted>
  /** Ephemeral: sent only if the socket is open right now. */
  typing(chatId: string): void
  /** Returns a function that removes the handler. */
  on<K extends keyof ClientEvents>(event: K, handler: (payload: ClientEvents[K]) => void): () => void
  /** Ends the client for good: the socket closes, pending calls reject with `closed`. The tokens stay valid. */
  close(): Promise<void>
}
