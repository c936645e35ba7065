/**
 * Fanout across nodes: a sequenced message is serialized once, as the exact
 * text frame clients receive, and published on the chat's channel; every node
 * with local subscribers to the chat holds one subscription to that channel
 * (the PubSub port ref-counts it) and hands the frame to each session as is.
 *
 * The payload is `<seq> <from> <sentAt> <traceparent> [<ends>] <frame>`:
 * sessions drop a seq they already delivered (a message re-published after a
 * replay) without parsing the frame. Frames that are not messages (typing,
 * read, membership signals) carry seq 0 and, in `from`, the user they come
 * from ("-" for none), so a user's own signals are not echoed to them. Only
 * a frame that ends subscriptions has `ends`: the removed member's id
 * (`member_removed`), or "*" for everyone (`chat_deleted`) — so a payload
 * without it is the one nodes before it wrote, and either reads the other's
 * messages. `sentAt`
 * (milliseconds since the epoch, when the gateway accepted the send) feeds
 * the send→deliver latency where the message is delivered; `traceparent`
 * (W3C) continues the message's trace on every delivering node. Either is
 * "-" when absent.
 */
import { Context, Effect, Layer, Stream } from "effect"
import type { Scope, Tracer } from "effect"
import type { CacheError } from "../ports/Cache.ts"
import { PubSub } from "../ports/PubSub.ts"
import type { ChatId, Message } from "../schema/Domain.ts"
import { encodeMessageFrame, encodeServerFrame, type ServerFrame } from "../schema/ServerFrames.ts"
import { traceparentOf } from "../Tracing.ts"

export interface FanoutItem {
  /** The message's seq, or 0 for a frame that is not a message. */
  readonly seq: number
  /** The user whose action this frame reports, when it is not a message. */
  readonly from?: string | undefined
  /** Whose subscription to the chat this frame ends: a removed member, or `Everyone` when the chat is gone. */
  readonly ends?: string | undefined
  /** The text frame to send, already serialized. */
  readonly frame: string
  /** A message's: when its send was accepted (milliseconds since the epoch). */
  readonly sentAt?: number | undefined
  /** The W3C context of the span that published it, when traced. */
  readonly traceparent?: string | undefined
  /** Where it is delivered, when traced: the span of its delivery to this node's sessions. */
  readonly span?: Tracer.AnySpan | undefined
}

export const channelOf = (chatId: string) => `chat:${chatId}`

/** `FanoutItem.ends` of a frame that ends every subscription to its chat. */
export const Everyone = "*"

export const messageFrame = (message: Message): string => encodeMessageFrame({ type: "message", message })

/**
 * A frame that is not a message, from a user or from nobody, as its fanout
 * item: a removal says whom it ends here, so no session parses the frame.
 */
export const signalItem = (from: string | undefined, frame: ServerFrame): FanoutItem => ({
  seq: 0,
  from,
  ends: frame.type === "chat_deleted" ? Everyone : frame.type === "member_removed" ? frame.userId : undefined,
  frame: encodeServerFrame(frame)
})

const orDash = (value: string | number | undefined) => (value === undefined ? "-" : value)
const dashless = (field: string) => (field === "-" ? undefined : field)

export const encodeItem = (item: FanoutItem): string =>
  `${item.seq} ${orDash(item.from)} ${orDash(item.sentAt)} ${orDash(item.traceparent)} ${item.ends === undefined ? "" : `${item.ends} `}${item.frame}`

/** The fields before the frame, up to the frame's `{` (four, or five with `ends`). */
export const decodeItem = (payload: string): FanoutItem | undefined => {
  const fields: Array<string> = []
  let start = 0
  while (payload[start] !== "{") {
    const space = payload.indexOf(" ", start)
    if (space <= start || fields.length === 5) return undefined
    fields.push(payload.slice(start, space))
    start = space + 1
  }
  if (fields.length < 4) return undefined
  const [seq, from, sentAt, traceparent, ends] = fields.map(dashless)
  const number = Number(seq)
  if (!Number.isSafeInteger(number)) return undefined
  return {
    seq: number,
    from,
    ends,
    sentAt: sentAt === undefined ? undefined : Number(sentAt),
    traceparent,
    frame: payload.slice(start)
  }
}

export class Fanout extends Context.Service<
  Fanout,
  {
    /**
     * Publishes messages on their chats' channels. `parents[i]`, when given,
     * is the span of `messages[i]`'s sequencing: its publish is traced under it.
     */
    readonly publishMessages: (
      messages: ReadonlyArray<Message>,
      parents?: ReadonlyArray<Tracer.AnySpan | undefined>
    ) => Effect.Effect<void, CacheError>
    /** Publishes a frame that is not a message (seq 0) on a chat's channel, from a user or from nobody. */
    readonly publishFrame: (
      chatId: ChatId,
      from: string | undefined,
      frame: ServerFrame
    ) => Effect.Effect<void, CacheError>
    /** The chat's live items for the lifetime of the scope; active once this returns. */
    readonly subscribe: (chatId: ChatId) => Effect.Effect<Stream.Stream<FanoutItem>, CacheError, Scope.Scope>
  }
>()("harmony/messages/Fanout") {
  static readonly layer = Layer.effect(
    Fanout,
    Effect.gen(function* () {
      const pubsub = yield* PubSub
      const publish = (message: Message, traceparent: string | undefined) => {
        const sentAt = Date.parse(message.createdAt)
        return pubsub.publish(
          channelOf(message.chatId),
          encodeItem({
            seq: message.seq,
            frame: messageFrame(message),
            sentAt: Number.isFinite(sentAt) ? sentAt : undefined,
            traceparent
          })
        )
      }
      /** A message's publish, as a producer span under its sequencing; its context travels in the envelope. */
      const publishTraced = (message: Message, parent: Tracer.AnySpan) =>
        Effect.useSpan(
          "Fanout.publish",
          {
            parent,
            kind: "producer",
            attributes: {
              "messaging.system": "redis",
              "messaging.destination.name": channelOf(message.chatId),
              "harmony.message.id": message.id,
              "harmony.seq": message.seq
            }
          },
          (span) => publish(message, traceparentOf(span))
        )
      return Fanout.of({
        publishMessages: (messages, parents) =>
          Effect.forEach(
            messages,
            (message, index) => {
              const parent = parents?.[index]
              return parent === undefined ? publish(message, undefined) : publishTraced(message, parent)
            },
            { concurrency: "unbounded", discard: true }
          ),
        publishFrame: (chatId, from, frame) => pubsub.publish(channelOf(chatId), encodeItem(signalItem(from, frame))),
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
