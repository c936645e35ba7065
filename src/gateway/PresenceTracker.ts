/**
 * Presence, node side: which users this node's sessions hold in which chats
 * (a user subscribed from several sessions counts once), reported to the
 * Presence port with a heartbeat that expires — a node that dies stops
 * renewing and its users drop out within the TTL. Joins and leaves are
 * announced on the chat's fanout channel as `join` / `leave` frames.
 */
import { Context, Duration, Effect, Layer, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { Presence } from "../ports/Presence.ts"
import type { ChatId, UserId } from "../schema/Domain.ts"
import { Fanout } from "../messages/Fanout.ts"

export const PresenceTtl = Duration.seconds(30)

export class PresenceTracker extends Context.Service<
  PresenceTracker,
  {
    /** A session of `userId` subscribed to `chatId`. */
    readonly join: (userId: UserId, chatId: ChatId) => Effect.Effect<void>
    /** A session of `userId` left `chatId` (unsubscribed or closed). */
    readonly leave: (userId: UserId, chatId: ChatId) => Effect.Effect<void>
    /** The users online in the chat on any node; empty when presence cannot be read. */
    readonly online: (chatId: ChatId) => Effect.Effect<ReadonlyArray<UserId>>
  }
>()("harmony/gateway/PresenceTracker") {
  static readonly layer = (options: { readonly ttl?: Duration.Duration } = {}) =>
    Layer.effect(
      PresenceTracker,
      Effect.gen(function* () {
        const presence = yield* Presence
        const fanout = yield* Fanout
        const ttl = options.ttl ?? PresenceTtl
        const nodeId = randomUUID()
        /** user → chat → local sessions */
        const local = new Map<UserId, Map<ChatId, number>>()

        const announce = (type: "join" | "leave", userId: UserId, chatId: ChatId) =>
          fanout
            .publishFrame(chatId, userId, { type, chatId, userId })
            .pipe(Effect.catchTag("CacheError", (error) => Effect.logWarning(`presence ${type} not published`, error)))

        const enter = (userId: UserId, chatIds: ReadonlyArray<ChatId>) =>
          presence.enter(nodeId, userId, chatIds, ttl).pipe(
            Effect.flatMap((joined) =>
              Effect.forEach(joined, (chatId) => announce("join", userId, chatId as ChatId), { discard: true })
            ),
            Effect.catchTag("CacheError", (error) => Effect.logWarning("presence not recorded", error))
          )

        // The heartbeat renews everything this node holds.
        yield* Effect.suspend(() =>
          Effect.forEach(local, ([userId, chats]) => enter(userId, [...chats.keys()]), { discard: true })
        ).pipe(Effect.repeat(Schedule.spaced(Duration.millis(Duration.toMillis(ttl) / 3))), Effect.forkScoped)

        return PresenceTracker.of({
          join: (userId, chatId) =>
            Effect.suspend(() => {
              const chats = local.get(userId) ?? new Map<ChatId, number>()
              local.set(userId, chats)
              const sessions = (chats.get(chatId) ?? 0) + 1
              chats.set(chatId, sessions)
              return sessions === 1 ? enter(userId, [chatId]) : Effect.void
            }),
          leave: (userId, chatId) =>
            Effect.suspend(() => {
              const chats = local.get(userId)
              const sessions = (chats?.get(chatId) ?? 0) - 1
              if (chats === undefined || sessions > 0) {
                chats?.set(chatId, sessions)
                return Effect.void
              }
              chats.delete(chatId)
              if (chats.size === 0) local.delete(userId)
              return presence.leave(nodeId, userId, chatId).pipe(
                Effect.flatMap((left) => (left ? announce("leave", userId, chatId) : Effect.void)),
                Effect.catchTag("CacheError", (error) => Effect.logWarning("presence leave not recorded", error))
              )
            }),
          online: (chatId) =>
            presence.online(chatId).pipe(
              Effect.map((users) => users as ReadonlyArray<UserId>),
              Effect.catchTag("CacheError", (error) =>
                Effect.logWarning("presence unavailable", error).pipe(Effect.as([] as ReadonlyArray<UserId>))
              )
            )
        })
      })
    )
}
