/**
 * Ingest: an authorized send becomes a record on Kafka `chat.messages`,
 * keyed by chat id, and is acknowledged only once the log holds it
 * (docs/protocol.md: `ack` once Kafka has it). Concurrent sends are produced
 * together: while one produce is in flight, the next ones gather into the
 * following batch, so throughput does not pay one round trip per message.
 *
 * When tracing, each send's wait for the log is a producer span
 * (`Ingest.produce`) whose context rides in the record's `traceparent`
 * header, and each produce request is a span (`Ingest.produceBatch`) linking
 * the sends it carries.
 */
import { Clock, Context, Deferred, Duration, Effect, Exit, Layer, Metric, Option, Queue, type Tracer } from "effect"
import { messagesAccepted } from "../Metrics.ts"
import { EventLog, EventLogError, type ProduceRecord } from "../ports/EventLog.ts"
import type { ChatId, MessageId, UserId } from "../schema/Domain.ts"
import { type NotFound, type RateLimited, Unavailable } from "../schema/Errors.ts"
import { encodeSendRecord, messageIdOf } from "../schema/Records.ts"
import { Membership } from "../state/Membership.ts"
import { RateLimits } from "../state/RateLimits.ts"
import { ExportGate, sampled, TraceparentHeader, traceparentOf } from "../Tracing.ts"
import { MessagesTopic } from "../schema/Topics.ts"
import { memberRole } from "./ChatRules.ts"

export interface Accepted {
  readonly id: MessageId
  readonly clientMsgId: string
}

interface Pending {
  readonly record: ProduceRecord
  /** The record's size on the wire, roughly. */
  readonly size: number
  readonly done: Deferred.Deferred<void, EventLogError>
  /** The send's producer span, when tracing. */
  readonly span?: Tracer.AnySpan | undefined
}

/** Sends waiting for a produce request before further senders wait. */
const MaxQueued = 10_000
/** The most records in one produce request. */
const MaxBatch = 500
/** The most bytes in one produce request: well under Kafka's default 1 MB message batch limit. */
const MaxBatchBytes = 512 * 1024

/** Splits a batch into chunks of at most MaxBatchBytes (a single record always goes alone if it must). */
const byBytes = (batch: ReadonlyArray<Pending>): Array<Array<Pending>> => {
  const chunks: Array<Array<Pending>> = []
  let chunk: Array<Pending> = []
  let bytes = 0
  for (const pending of batch) {
    const size = pending.size
    if (chunk.length > 0 && bytes + size > MaxBatchBytes) {
      chunks.push(chunk)
      chunk = []
      bytes = 0
    }
    chunk.push(pending)
    bytes += size
  }
  if (chunk.length > 0) chunks.push(chunk)
  return chunks
}

export class Ingest extends Context.Service<
  Ingest,
  {
    readonly send: (
      authorId: UserId,
      chatId: ChatId,
      clientMsgId: string,
      body: string
    ) => Effect.Effect<Accepted, NotFound | RateLimited | Unavailable>
  }
>()("harmony/messages/Ingest") {
  static readonly layerWith = (options: {
    /** How long a send waits for the log to take it before it is answered `unavailable` (default 5 s). */
    readonly sendTimeout?: Duration.Input | undefined
  }) =>
    Layer.effect(
      Ingest,
      Effect.gen(function* () {
        const sendTimeout = Duration.fromInputUnsafe(options.sendTimeout ?? Duration.seconds(5))
        const log = yield* EventLog
        const membership = yield* Membership
        const limits = yield* RateLimits
        // Bounded: when the log cannot keep up, senders wait here (their acks
        // come later) instead of the node buffering without limit.
        const queue = yield* Queue.bounded<Pending>(MaxQueued)
        const gate = yield* ExportGate

        const produceRequest = (chunk: ReadonlyArray<Pending>) => {
          const request = log.produce(
            MessagesTopic,
            chunk.map((pending) => pending.record)
          )
          const links: Array<Tracer.SpanLink> = []
          for (const pending of chunk)
            if (pending.span !== undefined) links.push({ span: pending.span, attributes: {} })
          if (links.length === 0) return request
          return request.pipe(
            Effect.withSpan("Ingest.produceBatch", {
              kind: "producer",
              root: true,
              links,
              attributes: {
                "messaging.system": "kafka",
                "messaging.destination.name": MessagesTopic,
                "messaging.batch.message_count": chunk.length
              }
            })
          )
        }
        const produce = (all: ReadonlyArray<Pending>) => {
          // Sends already answered (timed out while queued) are not produced late.
          const chunk = all.filter((pending) => !Deferred.isDoneUnsafe(pending.done))
          if (chunk.length === 0) return Effect.void
          return produceRequest(chunk).pipe(
            Effect.exit,
            Effect.flatMap((exit) => {
              const outcome = Exit.asVoid(exit)
              return Effect.forEach(chunk, (pending) => Deferred.done(pending.done, outcome))
            })
          )
        }
        yield* Queue.takeBetween(queue, 1, MaxBatch).pipe(
          Effect.flatMap((batch) => Effect.forEach(byBytes(batch), produce, { discard: true })),
          Effect.forever,
          Effect.forkScoped
        )

        const send = Effect.fn("Ingest.send")(function* (
          authorId: UserId,
          chatId: ChatId,
          clientMsgId: string,
          body: string
        ) {
          yield* limits.take("send", authorId)
          yield* memberRole(membership, chatId, authorId)
          const id = messageIdOf(chatId, authorId, clientMsgId)
          const sentAt = new Date(yield* Clock.currentTimeMillis).toISOString()
          const done = yield* Deferred.make<void, EventLogError>()
          const value = encodeSendRecord({ id, chatId, authorId, clientMsgId, body, sentAt })
          const size = Buffer.byteLength(value) + chatId.length + 64
          const traced =
            gate.open() && sampled(Option.getOrUndefined(yield* Effect.option(Effect.currentSpan))) !== undefined
          const enqueue = traced
            ? Effect.useSpan(
                "Ingest.produce",
                {
                  kind: "producer",
                  attributes: {
                    "messaging.system": "kafka",
                    "messaging.destination.name": MessagesTopic,
                    "harmony.message.id": id
                  }
                },
                (span) =>
                  Queue.offer(queue, {
                    record: { key: chatId, value, headers: { [TraceparentHeader]: traceparentOf(span) } },
                    size: size + 64,
                    done,
                    span
                  }).pipe(Effect.andThen(Deferred.await(done)))
              )
            : Queue.offer(queue, { record: { key: chatId, value }, size, done }).pipe(
                Effect.andThen(Deferred.await(done))
              )
          yield* enqueue.pipe(
            // Bounded, however the log fares: a send not taken in time is answered
            // `unavailable` (it may still be written; the client sends it again
            // with the same clientMsgId, which is stored once).
            Effect.timeoutOrElse({
              duration: sendTimeout,
              orElse: () => {
                const error = new EventLogError({
                  message: `the log did not take the send within ${Duration.format(sendTimeout)}`
                })
                return Deferred.fail(done, error).pipe(Effect.andThen(Effect.fail(error)))
              }
            }),
            Effect.catchTag("EventLogError", (error) =>
              Effect.logWarning("produce failed: the send is not acknowledged", error).pipe(
                Effect.andThen(Effect.fail(new Unavailable({ message: "the message log is unavailable, try again" })))
              )
            )
          )
          yield* Metric.update(messagesAccepted, 1)
          return { id, clientMsgId }
        })

        return Ingest.of({ send })
      })
    )

  static readonly layer = Ingest.layerWith({})
}
