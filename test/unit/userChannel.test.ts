/**
 * A session's user channel in process (docs/protocol.md "The user's own
 * channel"): the real Session, ChatFeeds and Fanout over the in-process
 * PubSub, a socket that records what it is sent, and stand-ins for the
 * lookups the scenario needs.
 *
 * `unread` goes to a session for its user's chats only while it is not
 * subscribed to them: one per batch of a chat's messages, with the batch's
 * newest seq, never a seq it already gave; chats added on the channel are
 * watched from then on, chats removed from it no more. The channel's frames
 * reach the socket as they are.
 */
import { assert, describe, it } from "@effect/vitest"
import { type Cause, Effect, Layer, Option, Queue } from "effect"
import type { WebSocket } from "ws"
import * as Memory from "../../src/adapters/memory/Memory.ts"
import { ChatFeeds } from "../../src/gateway/ChatFeeds.ts"
import { UnreadFeeds } from "../../src/gateway/UnreadFeeds.ts"
import { PresenceTracker } from "../../src/gateway/PresenceTracker.ts"
import * as Session from "../../src/gateway/Session.ts"
import { channelOf, encodeItem, Fanout, messageFrame, signalItem } from "../../src/messages/Fanout.ts"
import type { History } from "../../src/messages/History.ts"
import type { Ingest } from "../../src/messages/Ingest.ts"
import { publishToUsers } from "../../src/messages/UserChannel.ts"
import { PubSub } from "../../src/ports/PubSub.ts"
import { Chat, type ChatId, ChatSummary, Member, Message, MessageId, User, UserId } from "../../src/schema/Domain.ts"
import type { Accounts } from "../../src/state/Accounts.ts"
import type { Chats } from "../../src/state/Chats.ts"
import type { Membership } from "../../src/state/Membership.ts"

type Sent = { readonly type: string; readonly [key: string]: unknown }

const recordingSocket = () => {
  const sent: Array<Sent> = []
  const socket = {
    CONNECTING: 0,
    OPEN: 1,
    readyState: 1,
    bufferedAmount: 0,
    send: (text: string) => {
      sent.push(JSON.parse(text))
    },
    close: () => {
      socket.readyState = 3
    }
  }
  return { sent, socket: socket as unknown as WebSocket }
}

const live = UnreadFeeds.layer.pipe(
  Layer.provideMerge(Layer.mergeAll(ChatFeeds.layer, PresenceTracker.layer())),
  Layer.provideMerge(Fanout.layer),
  Layer.provideMerge(Memory.layer)
)

const standIn = <S extends object>(name: string, used: Partial<S> = {}): S =>
  new Proxy(used, {
    get: (target, key) =>
      key in target
        ? target[key as keyof typeof target]
        : () => Effect.die(`the scenario does not use ${name}.${String(key)}`)
  }) as S

const awaitFrame = (sent: ReadonlyArray<Sent>, matches: (frame: Sent) => boolean) =>
  Effect.gen(function* () {
    while (!sent.some(matches)) yield* Effect.sleep("5 millis")
  }).pipe(Effect.timeout("5 seconds"))

describe("Session user channel", () => {
  it.live("unread for chats not subscribed to, coalesced per batch; the list follows the channel", () =>
    Effect.gen(function* () {
      const user = new User({ id: UserId.make(crypto.randomUUID()), username: "reader", displayName: "reader" })
      const known = crypto.randomUUID() as ChatId
      const joined = crypto.randomUUID() as ChatId
      const summary = new ChatSummary({
        id: known,
        name: "known",
        kind: "group",
        role: "member",
        lastSeq: 0,
        lastReadSeq: 0
      })
      const services: Session.SessionServices = {
        accounts: standIn<Accounts["Service"]>("accounts", {
          authenticateSession: () => Effect.succeed({ user, expiresAt: Date.now() + 3_600_000, familyId: undefined })
        }),
        membership: standIn<Membership["Service"]>("membership", {
          roleOf: () => Effect.succeed(Option.some("member" as const))
        }),
        history: standIn<History["Service"]>("history", {
          lastSeq: () => Effect.succeed(2),
          epoch: () => Effect.succeed("epoch-1"),
          since: () => Effect.succeed([])
        }),
        chats: standIn<Chats["Service"]>("chats", { listForUser: () => Effect.succeed([summary]) }),
        ingest: standIn<Ingest["Service"]>("ingest"),
        fanout: yield* Fanout,
        feeds: yield* ChatFeeds,
        presence: yield* PresenceTracker,
        pubsub: yield* PubSub,
        unread: yield* UnreadFeeds,
        register: () => () => {}
      }
      const pubsub = yield* PubSub
      const { sent, socket } = recordingSocket()
      const inbound = yield* Queue.unbounded<Session.Inbound, Cause.Done>()
      yield* Session.run(socket, inbound, services, Session.defaultSessionOptions).pipe(
        Effect.scoped,
        Effect.forkScoped
      )
      const frame = (value: object) => Queue.offer(inbound, { _tag: "Text", text: JSON.stringify(value) })
      let pings = 0
      /** A round trip: everything published before it has been handed to the session. */
      const barrier = Effect.gen(function* () {
        const ref = `ping-${pings++}`
        yield* Effect.sleep("20 millis")
        yield* frame({ type: "ping", ref })
        yield* awaitFrame(sent, (f) => f.ref === ref)
      })
      const message = (chatId: ChatId, seq: number) =>
        encodeItem({
          seq,
          frame: messageFrame(
            new Message({
              id: MessageId.make(`message-${chatId}-${seq}`),
              chatId,
              seq,
              authorId: UserId.make(crypto.randomUUID()),
              body: `message ${seq}`,
              clientMsgId: `client-${seq}`,
              createdAt: new Date().toISOString()
            })
          )
        })
      const publish = (chatId: ChatId, ...seqs: Array<number>) =>
        Effect.forEach(seqs, (seq) => pubsub.publish(channelOf(chatId), message(chatId, seq)))

      yield* frame({ type: "auth", token: "token" })
      yield* awaitFrame(sent, (f) => f.type === "ready")

      // One batch, one unread with its newest seq; a replayed seq gives nothing.
      yield* publish(known, 1, 2)
      yield* barrier
      yield* publish(known, 2)
      yield* barrier
      // Subscribed: the messages, no unread.
      yield* frame({ type: "subscribe", chatId: known, ref: "sub" })
      yield* awaitFrame(sent, (f) => f.type === "presence")
      yield* publish(known, 3)
      yield* barrier
      yield* frame({ type: "unsubscribe", chatId: known, ref: "unsub" })
      yield* awaitFrame(sent, (f) => f.type === "unsubscribed")
      yield* publish(known, 4)
      yield* barrier
      // A chat added on the channel is watched from then on.
      const chat = new Chat({
        id: joined,
        name: "joined",
        kind: "group",
        ownerId: null,
        createdAt: new Date().toISOString(),
        members: [new Member({ userId: user.id, role: "member" })]
      })
      yield* publishToUsers(pubsub, [user.id], { type: "chat_added", chat, lastSeq: 0, lastReadSeq: 0 })
      yield* awaitFrame(sent, (f) => f.type === "chat_added")
      yield* publish(joined, 1)
      yield* barrier
      // Removed: nothing more of it.
      yield* publishToUsers(pubsub, [user.id], { type: "chat_removed", chatId: known })
      yield* awaitFrame(sent, (f) => f.type === "chat_removed")
      yield* publish(known, 5)
      // Another user's channel is not this session's.
      yield* publishToUsers(pubsub, [UserId.make(crypto.randomUUID())], { type: "chat_removed", chatId: joined })
      yield* barrier
      // Subscribed to a chat that is deleted: told once, whichever path is first.
      yield* frame({ type: "subscribe", chatId: joined, ref: "sub-joined" })
      yield* awaitFrame(sent, (f) => f.type === "presence" && f.chatId === joined)
      yield* publishToUsers(pubsub, [user.id], { type: "chat_deleted", chatId: joined })
      yield* barrier
      yield* pubsub.publish(
        channelOf(joined),
        encodeItem(signalItem(undefined, { type: "chat_deleted", chatId: joined }))
      )
      yield* barrier

      const seen = sent
        .filter((f) => f.type !== "pong")
        .map((f) =>
          f.type === "unread"
            ? `unread ${f.chatId === known ? "known" : "joined"} ${f.lastSeq}`
            : f.type === "message"
              ? `message ${(f.message as Message).seq}`
              : f.type
        )
      assert.deepStrictEqual(seen, [
        "ready",
        "unread known 2",
        "subscribed",
        "presence",
        "message 3",
        "unsubscribed",
        "unread known 4",
        "chat_added",
        "unread joined 1",
        "chat_removed",
        "subscribed",
        "presence",
        "chat_deleted"
      ])
    }).pipe(Effect.scoped, Effect.provide(live))
  )
})
