/**
 * The `user-channel` consumer's handling of a state event: the frames of the
 * members' chat lists, on their user channels (src/messages/UserChannel.ts).
 * Frames carry the chat as it is when the event is handled, read from
 * Postgres; an event handled again (after a crash or a rebalance) sends its
 * frames again, which clients apply idempotently. A chat that is gone, a
 * member who left meanwhile, or one removed and added again, gets nothing
 * for the older event: the later one says so.
 */
import { Effect, Option } from "effect"
import { PubSub } from "../ports/PubSub.ts"
import type { ChatId, UserId } from "../schema/Domain.ts"
import type { EventEnvelope } from "../schema/Events.ts"
import { Chats } from "../state/Chats.ts"
import { publishToUsers } from "../messages/UserChannel.ts"

export const userChannelHandler = Effect.gen(function* () {
  const chats = yield* Chats
  const pubsub = yield* PubSub

  const added = (chatId: ChatId, userId: UserId) =>
    Effect.flatMap(chats.membershipOf(chatId, userId), (found) =>
      Option.match(found, {
        onNone: () => Effect.void,
        onSome: ({ chat, lastSeq, lastReadSeq }) =>
          publishToUsers(pubsub, [userId], { type: "chat_added", chat, lastSeq, lastReadSeq })
      })
    )

  const updated = (chatId: ChatId) =>
    Effect.flatMap(chats.find(chatId), (found) =>
      Option.match(found, {
        onNone: () => Effect.void,
        onSome: (chat) =>
          publishToUsers(
            pubsub,
            chat.members.map((member) => member.userId),
            { type: "chat_updated", chat }
          )
      })
    )

  return (envelope: EventEnvelope) => {
    const event = envelope.payload
    switch (event._tag) {
      case "chat.created": {
        // The others each have their own `member.added`.
        const creator = event.memberIds[0]
        return creator === undefined ? Effect.void : added(event.chatId, creator)
      }
      case "member.added":
        return added(event.chatId, event.userId)
      case "member.removed":
        // A member again by now (an old event handled again): their list keeps the chat.
        return Effect.flatMap(chats.roleOf(event.chatId, event.userId), (role) =>
          Option.isSome(role)
            ? Effect.void
            : publishToUsers(pubsub, [event.userId], { type: "chat_removed", chatId: event.chatId })
        )
      case "chat.deleted":
        return publishToUsers(pubsub, event.memberIds, { type: "chat_deleted", chatId: event.chatId })
      case "chat.renamed":
      case "chat.owner_changed":
      case "member.role_changed":
        return updated(event.chatId)
      default:
        return Effect.void
    }
  }
})
