/**
 * The `user-channel` consumer's handling of state events
 * (src/relay/UserChannelSignals.ts), in process: the real handler over the
 * in-process PubSub, with Chats answering from a small model. Each event
 * gives its frames to exactly the users it concerns, read as the chat is
 * now; an event older than the state (handled again after a crash or a
 * rebalance, or replayed by a new consumer group) gives nothing that would
 * undo a later change.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Option, Stream } from "effect"
import * as Memory from "../../src/adapters/memory/Memory.ts"
import { userChannelOf } from "../../src/messages/UserChannel.ts"
import { PubSub } from "../../src/ports/PubSub.ts"
import { userChannelHandler } from "../../src/relay/UserChannelSignals.ts"
import { Chat, type ChatId, Member, type Role, UserId } from "../../src/schema/Domain.ts"
import { type EventEnvelope, EventVersion, type StateEvent } from "../../src/schema/Events.ts"
import { Chats } from "../../src/state/Chats.ts"

const owner = UserId.make("owner")
const member = UserId.make("member")
const outsider = UserId.make("outsider")
const chatId = "chat-1" as ChatId

/** Chats as the model holds them now: members and roles by chat. */
const model = new Map<ChatId, Map<UserId, Role>>()

const chatOf = (id: ChatId) => {
  const members = model.get(id)
  return members === undefined
    ? Option.none<Chat>()
    : Option.some(
        new Chat({
          id,
          name: "model",
          kind: "group",
          ownerId: owner,
          createdAt: "2026-01-01T00:00:00.000Z",
          members: [...members].map(([userId, role]) => new Member({ userId, role }))
        })
      )
}

const chats = Layer.succeed(
  Chats,
  new Proxy(
    {
      find: (id: ChatId) => Effect.succeed(chatOf(id)),
      roleOf: (id: ChatId, userId: UserId) => Effect.succeed(Option.fromNullishOr(model.get(id)?.get(userId))),
      membershipOf: (id: ChatId, userId: UserId) =>
        Effect.succeed(
          model.get(id)?.has(userId)
            ? Option.map(chatOf(id), (chat) => ({ chat, lastSeq: 7, lastReadSeq: 3 }))
            : Option.none()
        )
    },
    {
      get: (target, key) =>
        key in target ? target[key as keyof typeof target] : () => Effect.die(`unexpected Chats.${String(key)}`)
    }
  ) as unknown as Chats["Service"]
)

const envelope = (payload: StateEvent): EventEnvelope => ({
  id: crypto.randomUUID(),
  type: payload._tag,
  version: EventVersion,
  timestamp: new Date().toISOString(),
  aggregateId: chatId,
  payload
})

describe("user-channel consumer", () => {
  it.live("each event's frames reach exactly the users it concerns; stale events undo nothing", () =>
    Effect.gen(function* () {
      const pubsub = yield* PubSub
      const handle = yield* userChannelHandler
      const heard = new Map<UserId, Array<string>>()
      for (const userId of [owner, member, outsider]) {
        const frames: Array<string> = []
        heard.set(userId, frames)
        const stream = yield* pubsub.subscribe(userChannelOf(userId))
        yield* stream.pipe(
          Stream.runForEach((payload) =>
            Effect.sync(() => {
              const frame = JSON.parse(payload)
              frames.push(
                `${frame.type} ${frame.chatId ?? frame.chat.id}${"lastSeq" in frame ? ` ${frame.lastSeq}/${frame.lastReadSeq}` : ""}`
              )
            })
          ),
          Effect.forkScoped
        )
      }
      const settle = Effect.sleep("30 millis")

      model.set(chatId, new Map([[owner, "owner"]]))
      yield* handle(envelope({ _tag: "chat.created", chatId, kind: "group", memberIds: [owner, member] }))
      model.get(chatId)?.set(member, "member")
      yield* handle(envelope({ _tag: "member.added", chatId, userId: member }))
      yield* handle(envelope({ _tag: "chat.renamed", chatId, name: "renamed" }))
      // Removed, then added again: the removal handled again now says nothing.
      yield* handle(envelope({ _tag: "member.removed", chatId, userId: member }))
      model.get(chatId)?.delete(member)
      yield* handle(envelope({ _tag: "member.removed", chatId, userId: member }))
      // An addition handled after the member left again gives nothing either.
      yield* handle(envelope({ _tag: "member.added", chatId, userId: member }))
      model.delete(chatId)
      yield* handle(envelope({ _tag: "chat.renamed", chatId, name: "gone" }))
      yield* handle(envelope({ _tag: "chat.deleted", chatId, memberIds: [owner] }))
      yield* settle

      assert.deepStrictEqual(heard.get(owner), [
        `chat_added ${chatId} 7/3`,
        `chat_updated ${chatId}`,
        `chat_deleted ${chatId}`
      ])
      assert.deepStrictEqual(heard.get(member), [
        `chat_added ${chatId} 7/3`,
        `chat_updated ${chatId}`,
        `chat_removed ${chatId}`
      ])
      assert.deepStrictEqual(heard.get(outsider), [])
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(Memory.layer, chats)))
  )
})
