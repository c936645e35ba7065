/**
 * A session's live delivery around a membership signal, in process: the real
 * Session, ChatFeeds, Fanout and PresenceTracker over the in-process PubSub
 * and Presence, a socket that records what it is sent, and stand-ins for the
 * lookups the scenario needs (the token's user, the member's role, the
 * chat's last seq; anything else the session calls dies).
 *
 * `member_removed` and the chat's next message can reach a node in one
 * PubSub batch (they travel the same channel from different nodes). Nothing
 * of the chat may follow `member_removed` on the socket — the cluster suite
 * once saw exactly that.
 */
import { assert, describe, it } from "@effect/vitest"
import { type Cause, Effect, Layer, Option, Queue } from "effect"
import type { WebSocket } from "ws"
import * as Memory from "../../src/adapters/memory/Memory.ts"
import { PubSub } from "../../src/ports/PubSub.ts"
import { PresenceTracker } from "../../src/gateway/PresenceTracker.ts"
import * as Session from "../../src/gateway/Session.ts"
import { type ChatId, Message, MessageId, User, UserId } from "../../src/schema/Domain.ts"
import type { Accounts } from "../../src/state/Accounts.ts"
import type { Membership } from "../../src/state/Membership.ts"
import type { History } from "../../src/messages/History.ts"
import type { Ingest } from "../../src/messages/Ingest.ts"
import type { Chats } from "../../src/state/Chats.ts"
import { ChatFeeds } from "../../src/gateway/ChatFeeds.ts"
import { UnreadFeeds } from "../../src/gateway/UnreadFeeds.ts"
import { channelOf, encodeItem, Fanout, messageFrame, signalItem } from "../../src/messages/Fanout.ts"

/** What the session writes, as the `ws` socket it expects. */
const recordingSocket = () => {
  const sent: Array<{ readonly type: string; readonly [key: string]: unknown }> = []
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

/** A service of which the scenario uses only `used`: anything else dies, naming what was called. */
const standIn = <S extends object>(name: string, used: Partial<S> = {}): S =>
  new Proxy(used, {
    get: (target, key) =>
      key in target
        ? target[key as keyof typeof target]
        : () => Effect.die(`the scenario does not use ${name}.${String(key)}`)
  }) as S

describe("Session live delivery", () => {
  it.live("nothing of a chat follows member_removed, even in the same batch", () =>
    Effect.gen(function* () {
      const user = new User({ id: UserId.make(crypto.randomUUID()), username: "member", displayName: "member" })
      const chatId = crypto.randomUUID() as ChatId
      const services: Session.SessionServices = {
        accounts: standIn<Accounts["Service"]>("accounts", {
          authenticateSession: () => Effect.succeed({ user, expiresAt: Date.now() + 3_600_000, familyId: undefined })
        }),
        membership: standIn<Membership["Service"]>("membership", {
          roleOf: () => Effect.succeed(Option.some("member" as const))
        }),
        history: standIn<History["Service"]>("history", {
          lastSeq: () => Effect.succeed(1),
          epoch: () => Effect.succeed("epoch-1"),
          since: () => Effect.succeed([])
        }),
        chats: standIn<Chats["Service"]>("chats", { listForUser: () => Effect.succeed([]) }),
        ingest: standIn<Ingest["Service"]>("ingest"),
        fanout: yield* Fanout,
        feeds: yield* ChatFeeds,
        presence: yield* PresenceTracker,
        pubsub: yield* PubSub,
        unread: yield* UnreadFeeds,
        register: () => () => {}
      }
      const { sent, socket } = recordingSocket()
      const inbound = yield* Queue.unbounded<Session.Inbound, Cause.Done>()
      yield* Session.run(socket, inbound, services, Session.defaultSessionOptions).pipe(
        Effect.scoped,
        Effect.forkScoped
      )
      const frame = (value: object) => Queue.offer(inbound, { _tag: "Text", text: JSON.stringify(value) })
      yield* frame({ type: "auth", token: "token" })
      yield* frame({ type: "subscribe", chatId })
      yield* awaitFrame(sent, "presence")

      const message = (seq: number) =>
        encodeItem({
          seq,
          frame: messageFrame(
            new Message({
              id: MessageId.make(`message-${seq}`),
              chatId,
              seq,
              authorId: UserId.make(crypto.randomUUID()),
              body: `message ${seq}`,
              clientMsgId: `client-${seq}`,
              createdAt: new Date().toISOString()
            })
          )
        })
      const removed = encodeItem(signalItem(undefined, { type: "member_removed", chatId, userId: user.id }))
      // One synchronous run of publishes: the feed hands them over as one batch.
      const pubsub = yield* PubSub
      yield* Effect.forEach([message(2), removed, message(3), message(4)], (payload) =>
        pubsub.publish(channelOf(chatId), payload)
      )
      yield* awaitFrame(sent, "member_removed")
      // Later batches too: the session is no longer subscribed.
      yield* pubsub.publish(channelOf(chatId), message(5))
      yield* frame({ type: "ping", ref: "last" })
      yield* awaitFrame(sent, "pong")

      const types = sent.map((f) => (f.type === "message" ? `message ${(f.message as Message).seq}` : f.type))
      assert.deepStrictEqual(types, ["ready", "subscribed", "presence", "message 2", "member_removed", "pong"])
    }).pipe(Effect.scoped, Effect.provide(live))
  )

  it.live("a gap in the live stream is filled from history before what follows it, then live goes on", () =>
    Effect.gen(function* () {
      const user = new User({ id: UserId.make(crypto.randomUUID()), username: "member", displayName: "member" })
      const chatId = crypto.randomUUID() as ChatId
      const stored = (seq: number) =>
        new Message({
          id: MessageId.make(`message-${seq}`),
          chatId,
          seq,
          authorId: UserId.make("author"),
          body: `message ${seq}`,
          clientMsgId: `client-${seq}`,
          createdAt: new Date().toISOString()
        })
      let reads = 0
      const services: Session.SessionServices = {
        accounts: standIn<Accounts["Service"]>("accounts", {
          authenticateSession: () => Effect.succeed({ user, expiresAt: Date.now() + 3_600_000, familyId: undefined })
        }),
        membership: standIn<Membership["Service"]>("membership", {
          roleOf: () => Effect.succeed(Option.some("member" as const))
        }),
        history: standIn<History["Service"]>("history", {
          lastSeq: () => Effect.succeed(1),
          epoch: () => Effect.succeed("epoch-1"),
          // The store has 3 only on the second read: the fill asks again.
          since: (_chatId, sinceSeq, untilSeq) =>
            Effect.sync(() => {
              reads++
              const have = reads === 1 ? [2] : [2, 3, 4]
              return have.filter((seq) => seq > sinceSeq && seq <= (untilSeq ?? 9)).map(stored)
            })
        }),
        chats: standIn<Chats["Service"]>("chats", { listForUser: () => Effect.succeed([]) }),
        ingest: standIn<Ingest["Service"]>("ingest"),
        fanout: yield* Fanout,
        feeds: yield* ChatFeeds,
        presence: yield* PresenceTracker,
        pubsub: yield* PubSub,
        unread: yield* UnreadFeeds,
        register: () => () => {}
      }
      const { sent, socket } = recordingSocket()
      const inbound = yield* Queue.unbounded<Session.Inbound, Cause.Done>()
      yield* Session.run(socket, inbound, services, Session.defaultSessionOptions).pipe(
        Effect.scoped,
        Effect.forkScoped
      )
      const frame = (value: object) => Queue.offer(inbound, { _tag: "Text", text: JSON.stringify(value) })
      yield* frame({ type: "auth", token: "token" })
      yield* frame({ type: "subscribe", chatId, sinceSeq: 1 })
      yield* awaitFrame(sent, "presence")

      const pubsub = yield* PubSub
      const publish = (seq: number) =>
        pubsub.publish(channelOf(chatId), encodeItem({ seq, frame: messageFrame(stored(seq)) }))
      // 2 live; 3 and 4 never reach this node; 5 and 6 arrive while the gap is filled.
      yield* publish(2)
      yield* publish(5)
      yield* publish(6)
      yield* Effect.gen(function* () {
        while (sent.filter((f) => f.type === "message").length < 5) yield* Effect.sleep("5 millis")
      }).pipe(Effect.timeout("10 seconds"))
      yield* publish(7)
      yield* frame({ type: "ping", ref: "last" })
      yield* awaitFrame(sent, "pong")
      yield* Effect.gen(function* () {
        while (sent.filter((f) => f.type === "message").length < 6) yield* Effect.sleep("5 millis")
      }).pipe(Effect.timeout("5 seconds"))

      const seqs = sent.filter((f) => f.type === "message").map((f) => (f.message as Message).seq)
      assert.deepStrictEqual(seqs, [2, 3, 4, 5, 6, 7])
      assert.isAtLeast(reads, 2)
    }).pipe(Effect.scoped, Effect.provide(live))
  )
})

const awaitFrame = (sent: ReadonlyArray<{ readonly type: string }>, type: string) =>
  Effect.gen(function* () {
    while (!sent.some((f) => f.type === type)) yield* Effect.sleep("5 millis")
  }).pipe(Effect.timeout("5 seconds"))
