/**
 * A session's side of its user's own channel (docs/protocol.md "The user's
 * own channel"): the chat-list frames published on the user's channel
 * (src/messages/UserChannel.ts) go to the socket as they are, and `unread`
 * tells the session of messages in its chats that it is not subscribed to.
 *
 * Unread costs a message little on its way: the session watches each of its
 * user's chats through the node's UnreadFeeds (per chat, one listener on
 * the chat feed that already carries its messages, and the set of local
 * sessions watching it, told after the subscribed sessions got the
 * messages) — per coalesced batch, one check and at most one small write per
 * session not subscribed to the chat. Which chats are the user's comes from Postgres once, at
 * authentication, and then from the channel's own `chat_added`,
 * `chat_removed` and `chat_deleted`.
 */
import { Deferred, Duration, Effect, Schema, Stream } from "effect"
import { userChannelOf } from "../messages/UserChannel.ts"
import type { PubSub } from "../ports/PubSub.ts"
import type { ChatId, User } from "../schema/Domain.ts"
import { UserChannelFrame } from "../schema/ServerFrames.ts"
import type { Chats } from "../state/Chats.ts"
import { retryForever } from "../Retry.ts"
import type { UnreadFeeds } from "./UnreadFeeds.ts"
import type { Connection } from "./Connection.ts"

export interface UserChannelServices {
  readonly pubsub: PubSub["Service"]
  readonly chats: Chats["Service"]
  readonly unread: UnreadFeeds["Service"]
}

/** Chats of one session that get `unread` frames: a user in more gets them for this many (docs/protocol.md). */
export const MaxUnreadChats = 1000

/** Chat feeds joined at once when a session starts. */
const ListenConcurrency = 16

const decodeFrame = Schema.decodeUnknownOption(Schema.fromJsonString(UserChannelFrame))

interface Watch {
  remove: Effect.Effect<void> | undefined
  closed: boolean
}

/**
 * Starts the user channel for a session, in its scope: once this returns the
 * channel is live and the user's chats are watched (those whose feed could
 * not be joined yet are retried in the background).
 */
export const start = Effect.fnUntraced(function* (
  user: User,
  connection: Connection,
  services: UserChannelServices,
  subscriptions: {
    /** Whether the session follows the chat (then it gets its messages, not `unread`). */
    readonly has: (chatId: ChatId) => boolean
    /** Whether the session's subscription to the chat says `chat_deleted` itself (or said it lately). */
    readonly tells: (chatId: ChatId) => boolean
  }
) {
  const isSubscribed = subscriptions.has
  const scope = yield* Effect.scope
  const watches = new Map<ChatId, Watch>()
  yield* Effect.addFinalizer(() => Effect.forEach([...watches.keys()], (chatId) => unwatch(chatId), { discard: true }))

  const unwatch = (chatId: ChatId) =>
    Effect.suspend(() => {
      const watch = watches.get(chatId)
      if (watch === undefined) return Effect.void
      watches.delete(chatId)
      watch.closed = true
      return watch.remove ?? Effect.void
    })

  /** Watches the chat for `unread`; a feed that cannot be joined now is retried in the background. */
  const watch = (chatId: ChatId) =>
    Effect.suspend(() => {
      if (watches.has(chatId) || watches.size >= MaxUnreadChats) return Effect.void
      const entry: Watch = { remove: undefined, closed: false }
      watches.set(chatId, entry)
      const prefix = `{"type":"unread","chatId":${JSON.stringify(chatId)},"lastSeq":`
      let last = 0
      const listen = services.unread.watch(chatId, (seq) => {
        if (entry.closed || seq <= last || isSubscribed(chatId)) return
        last = seq
        connection.write(`${prefix}${seq}}`)
      })
      const joined = (remove: Effect.Effect<void>) =>
        entry.closed
          ? remove
          : Effect.sync(() => {
              entry.remove = remove
            })
      return listen.pipe(
        Effect.flatMap(joined),
        Effect.catchTag("CacheError", (error) =>
          Effect.logWarning("unread: chat feed not joined, retrying", error).pipe(
            Effect.andThen(listen.pipe(Effect.retry(retryForever), Effect.flatMap(joined), Effect.forkIn(scope))),
            Effect.asVoid
          )
        )
      )
    })

  const onPayload = (payload: string) =>
    Effect.suspend(() => {
      const frame = decodeFrame(payload)
      if (frame._tag === "None") return Effect.logWarning("user channel: undecodable frame ignored")
      // A subscribed session hears of the deletion from its subscription: once is enough.
      if (!(frame.value.type === "chat_deleted" && subscriptions.tells(frame.value.chatId))) connection.write(payload)
      switch (frame.value.type) {
        case "chat_added":
          return watch(frame.value.chat.id)
        case "chat_removed":
        case "chat_deleted":
          return unwatch(frame.value.chatId)
        case "chat_updated":
          return Effect.void
      }
    })

  // The channel first, then the list: a change after the list was read
  // arrives on the channel. A store that is away delays this, not the session.
  const started = yield* Deferred.make<void>()
  yield* Effect.gen(function* () {
    const payloads = yield* services.pubsub.subscribe(userChannelOf(user.id)).pipe(retrying("user channel"))
    const chats = yield* services.chats.listForUser(user.id).pipe(retrying("chat list"))
    yield* Effect.forEach(chats, (chat) => watch(chat.id), { concurrency: ListenConcurrency, discard: true })
    yield* Deferred.succeed(started, undefined)
    yield* payloads.pipe(Stream.runForEach(onPayload))
  }).pipe(Effect.forkIn(scope))
  yield* Deferred.await(started).pipe(Effect.timeoutOption(StartDeadline))
})

/** How long a session's start waits for its user channel before going on without it (it keeps trying). */
const StartDeadline = Duration.seconds(5)

const retrying =
  (what: string) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    effect.pipe(
      Effect.tapError((error) => Effect.logWarning(`${what} unavailable, retrying`, error)),
      Effect.retry(retryForever)
    )
