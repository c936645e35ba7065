/**
 * Fanout across nodes: a sequenced message is serialized once, as the exact
 * text frame clients receive, and published on the chat's channel; every node
 * with local subscribers to the chat holds one subscription to that channel
 * (the PubSub port ref-counts it) and hands the frame to each session as is.
 *
 * The payload is `<seq> <from> <frame>`: sessions drop a seq they already
 * delivered (a message re-published after a replay) without parsing the
 * frame. Frames that are not messages (typing, read, membership signals)
 * carry seq 0 and, in `from`, the user they come from ("-" for none), so a
 * user's own signals are not echoed to them.
 */
import { Context, Effect, Layer, Schema, Stream } from "effect"
import type { Scope } from "effect"
import type { CacheError } from "../infra/Cache.ts"
import { PubSub } from "../infra/PubSub.ts"
import { type ChatId, Message } from "../schema/Domain.ts"
import type { ServerFrame } from "../schema/Protocol.ts"

export interface FanoutItem {
  /** The message's seq, or 0 for a frame that is not a message. */
  readonly seq: number
  /** The user whose action this frame reports, when it is not a message. */
  readonly from?: string | undefined
  /** The text frame to send, already serialized. */
  readonly frame: string
}

export const channelOf = (chatId: string) => `chat:${chatId}`

const encodeMessage = Schema.encodeSync(Message)

export const messageFrame = (message: Message): string =>
  JSON.stringify({ type: "message", message: encodeMessage(message) } satisfies ServerFrame)

const encodeItem = (item: FanoutItem) => `${item.seq} ${item.from ?? "-"} ${item.frame}`

const decodeItem = (payload: string): FanoutItem | undefined => {
  const first = payload.indexOf(" ")
  const second = payload.indexOf(" ", first + 1)
  const seq = Number(payload.slice(0, first))
  if (first <= 0 || second < 0 || !Number.isSafeInteger(seq)) return undefined
  const from = payload.slice(first + 1, second)
  return { seq, from: from === "-" ? undefined : from, frame: payload.slice(second + 1) }
}

export class Fanout extends Context.Service<
  Fanout,
  {
    /** Publishes messages on their chats' channels. */
    readonly publishMessages: (messages: ReadonlyArray<Message>) => Effect.Effect<void, CacheError>
    /** Publishes a frame that is not a message (seq 0) on a chat's channel, from a user or from nobody. */
    readonly publishFrame: (
      chatId: ChatId,
      from: string | undefined,
      frame: ServerFrame
    ) => Effect.Effect<void, CacheError>
    /** The chat's live items for the lifetime of the scope; active once this returns. */
    readonly subscribe: (chatId: ChatId) => Effect.Effect<Stream.Stream<FanoutItem>, CacheError, Scope.Scope>
  }
>()("harmony/streams/Fanout") {
  static readonly layer = Layer.effect(
    Fanout,
    Effect.gen(function* () {
      const pubsub = yield* PubSub
      return Fanout.of({
        publishMessages: Effect.fn("Fanout.publishMessages")(function* (messages: ReadonlyArray<Message>) {
          yield* Effect.forEach(
            messages,
            (message) =>
              pubsub.publish(channelOf(message.chatId), encodeItem({ seq: message.seq, frame: messageFrame(message) })),
            { concurrency: "unbounded", discard: true }
          )
        }),
        publishFrame: (chatId, from, frame) =>
          pubsub.publish(channelOf(chatId), encodeItem({ seq: 0, from, frame: JSON.stringify(frame) })),
        subscribe: (chatId) =>
          Effect.map(pubsub.subscribe(channelOf(chatId)), (payloads) =>
            payloads.pipe(
              Stream.map(decodeItem),
              Stream.filter((item): item is FanoutItem => item !== undefined)
            )
          )
      })
    })
  )
}
