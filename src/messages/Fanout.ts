/**
 * Fanout across nodes: a sequenced message is serialized once, as the exact
 * text frame clients receive, and published on the chat's channel; every node
 * with local subscribers to the chat holds one subscription to that channel
 * (the PubSub port ref-counts it) and hands the frame to each session as is.
 *
 * A payload holds one item, or several of one chat separated by newlines (a
 * chat actor's batch goes out as one publish); each item is
 * `<seq> <from> <stamps> <traceparent> [<ends>] <frame>` (frames are JSON,
 * which never holds a raw newline): sessions drop a seq they already
 * delivered (a message re-published after a replay) without parsing the
 * frame. Frames that are not messages (typing, read, membership signals)
 * carry seq 0 and, in `from`, the user they come from ("-" for none), so a
 * user's own signals are not echoed to them. Only a frame that ends
 * subscriptions has `ends`: the removed member's id (`member_removed`), or
 * "*" for everyone (`chat_deleted`). `stamps` is `<sentAt>` or
 * `<sentAt>,<publishedAt>`: when the gateway accepted the send (milliseconds
 * since the epoch; it feeds the send→deliver latency where the message is
 * delivered) and when its publish was issued (the `fanout` stage of
 * `harmony_message_stage_seconds`). `traceparent` (W3C) continues the
 * message's trace on every delivering node. Either is "-" when absent.
 */
import { Context, Effect, Layer, Stream } from "effect"
import type { Scope, Tracer } from "effect"
import type { CacheError } from "../ports/Cache.ts"
import { PubSub } from "../ports/PubSub.ts"
import { type ChatId, isChange, type LogEntry, type Message } from "../schema/Domain.ts"
import { encodeMessageFrame, encodeServerFrame, type ServerFrame } from "../schema/ServerFrames.ts"
import { observeStage, stampNow } from "../Metrics.ts"
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
  /** The frame as UTF-8, made once per node for all its sockets (live items only). */
  readonly frameBytes?: Buffer | undefined
  /** A message's: when its send was accepted (milliseconds since the epoch). */
  readonly sentAt?: number | undefined
  /** A message's: when its publish was issued (`stampNow`). */
  readonly publishedAt?: number | undefined
  /** When this node received it (`stampNow`). */
  readonly receivedAt?: number | undefined
  /** The W3C context of the span that published it, when traced. */
  readonly traceparent?: string | undefined
  /** Where it is delivered, when traced: the span of its delivery to this node's sessions. */
  readonly span?: Tracer.AnySpan | undefined
}

export const channelOf = (chatId: string) => `chat:${chatId}`

/** `FanoutItem.ends` of a frame that ends every subscription to its chat. */
export const Everyone = "*"

export const messageFrame = (message: Message): string => encodeMessageFrame({ type: "message", message })

/** The frame of a log entry: a `message` frame, or the change itself (`message_edited`, `message_deleted`, `reaction`). */
export const entryFrame = (entry: LogEntry): string =>
  isChange(entry) ? encodeServerFrame(entry) : messageFrame(entry)

/** When the entry's record was accepted, as its frame tells it (a reaction's frame does not). */
const acceptedAt = (entry: LogEntry): string | undefined =>
  !isChange(entry)
    ? entry.createdAt
    : entry.type === "message_edited"
      ? entry.editedAt
      : entry.type === "message_deleted"
        ? entry.deletedAt
        : undefined

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

const stampsOf = (item: FanoutItem) =>
  item.sentAt === undefined
    ? "-"
    : item.publishedAt === undefined
      ? `${item.sentAt}`
      : `${item.sentAt},${item.publishedAt}`

export const encodeItem = (item: FanoutItem): string =>
  `${item.seq} ${orDash(item.from)} ${stampsOf(item)} ${orDash(item.traceparent)} ${item.ends === undefined ? "" : `${item.ends} `}${item.frame}`

const stamp = (field: string | undefined) => {
  if (field === undefined || field === "") return undefined
  const number = Number(field)
  return Number.isFinite(number) ? number : undefined
}

/** One item: the fields before the frame, up to the frame's `{` (four, or five with `ends`). */
export const decodeItem = (payload: string, receivedAt?: number, withBytes = false): FanoutItem | undefined => {
  const fields: Array<string> = []
  let start = 0
  while (payload[start] !== "{") {
    const space = payload.indexOf(" ", start)
    if (space <= start || fields.length === 5) return undefined
    fields.push(payload.slice(start, space))
    start = space + 1
  }
  if (fields.length < 4) return undefined
  const [seq, from, stamps, traceparent, ends] = fields.map(dashless)
  const number = Number(seq)
  if (!Number.isSafeInteger(number)) return undefined
  const comma = stamps === undefined ? -1 : stamps.indexOf(",")
  const frame = payload.slice(start)
  return {
    seq: number,
    from,
    ends,
    sentAt: comma < 0 ? stamp(stamps) : stamp(stamps?.slice(0, comma)),
    publishedAt: comma < 0 ? undefined : stamp(stamps?.slice(comma + 1)),
    receivedAt,
    traceparent,
    ...(withBytes ? { frame, frameBytes: Buffer.from(frame) } : { frame })
  }
}

/** Every item of a payload, in order, each with its frame's bytes; undecodable ones are dropped. */
export const decodeItems = (payload: string, receivedAt?: number): Array<FanoutItem> => {
  const items: Array<FanoutItem> = []
  let start = 0
  while (start < payload.length) {
    const end = payload.indexOf("\n", start)
    const item = decodeItem(end < 0 ? payload.slice(start) : payload.slice(start, end), receivedAt, true)
    if (item !== undefined) items.push(item)
    if (end < 0) break
    start = end + 1
  }
  return items
}

export class Fanout extends Context.Service<
  Fanout,
  {
    /**
     * Publishes log entries (messages and changes) on their chats' channels.
     * `parents[i]`, when given, is the span of `messages[i]`'s sequencing:
     * its publish is traced under it. Untraced, a chat's entries go out in
     * one publish. `sequencedAt` (`stampNow`) feeds the `publish` stage.
     */
    readonly publishMessages: (
      messages: ReadonlyArray<LogEntry>,
      parents?: ReadonlyArray<Tracer.AnySpan | undefined>,
      sequencedAt?: number
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
      const context = yield* Effect.context<never>()
      const itemOf = (message: LogEntry, traceparent: string | undefined, publishedAt: number) => {
        const sentAt = Date.parse(acceptedAt(message) ?? "")
        return encodeItem({
          seq: message.seq,
          frame: entryFrame(message),
          sentAt: Number.isFinite(sentAt) ? sentAt : undefined,
          publishedAt,
          traceparent
        })
      }
      /** A message's publish, as a producer span under its sequencing; its context travels in the envelope. */
      const publishTraced = (message: LogEntry, parent: Tracer.AnySpan) =>
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
          (span) => pubsub.publish(channelOf(message.chatId), itemOf(message, traceparentOf(span), stampNow()))
        )
      /** One publish per chat: its messages' items, newline-separated, in order. */
      const publishBatched = (messages: ReadonlyArray<LogEntry>, sequencedAt: number | undefined) =>
        Effect.suspend(() => {
          const publishedAt = stampNow()
          const byChat = new Map<string, Array<string>>()
          for (const message of messages) {
            observeStage("publish", sequencedAt, publishedAt, context)
            const items = byChat.get(message.chatId)
            const item = itemOf(message, undefined, publishedAt)
            if (items === undefined) byChat.set(message.chatId, [item])
            else items.push(item)
          }
          return Effect.forEach(byChat, ([chatId, items]) => pubsub.publish(channelOf(chatId), items.join("\n")), {
            concurrency: "unbounded",
            discard: true
          })
        })
      return Fanout.of({
        publishMessages: (messages, parents, sequencedAt) =>
          parents === undefined || parents.every((parent) => parent === undefined)
            ? publishBatched(messages, sequencedAt)
            : Effect.forEach(
                messages,
                (message, index) => {
                  const parent = parents[index]
                  return parent === undefined
                    ? pubsub.publish(channelOf(message.chatId), itemOf(message, undefined, stampNow()))
                    : publishTraced(message, parent)
                },
                { concurrency: "unbounded", discard: true }
              ),
        publishFrame: (chatId, from, frame) => pubsub.publish(channelOf(chatId), encodeItem(signalItem(from, frame))),
        subscribe: (chatId) =>
          Effect.map(pubsub.subscribe(channelOf(chatId)), (payloads) =>
            payloads.pipe(
              Stream.map((payload) => decodeItems(payload, stampNow())),
              Stream.flattenIterable
            )
          )
      })
    })
  )
}
