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
import {
  Clock,
  Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  Layer,
  Metric,
  Option,
  Queue,
  Result,
  Schedule,
  type Tracer
} from "effect"
import { messagesAccepted, observeStage, ProducedAtHeader, stampNow } from "../Metrics.ts"
import { EventLog, EventLogError, type ProduceRecord } from "../ports/EventLog.ts"
import type { ChatId, MessageId, UserId } from "../schema/Domain.ts"
import { type NotFound, type RateLimited, Unavailable } from "../schema/Errors.ts"
import { type ChangeRecord, encodeChangeRecord, encodeSendRecord, messageIdOf } from "../schema/Records.ts"
import { Membership } from "../state/Membership.ts"
import { RateLimits } from "../state/RateLimits.ts"
import { ExportGate, sampled, spanWhenExported, TraceparentHeader, traceparentOf } from "../Tracing.ts"
import { MessagesTopic } from "../schema/Topics.ts"
import { memberRole } from "./ChatRules.ts"

export interface Accepted {
  readonly id: MessageId
  readonly clientMsgId: string
}

interface Pending {
  readonly record: ProduceRecord
  /** The record's headers, stamped with the produce request's start. */
  readonly headers: Record<string, string>
  /** When the send was queued (`stampNow`). */
  readonly queuedAt: number
  /** When it is answered `unavailable` if the log has not taken it (the Clock's milliseconds). */
  readonly deadline: number
  /** The record's size on the wire, roughly. */
  readonly size: number
  readonly done: Deferred.Deferred<void, EventLogError>
  /** The send's producer span, when tracing. */
  readonly span?: Tracer.AnySpan | undefined
}

/** At most one warning about unacknowledged sends per this long: an outage of the log fails thousands. */
const WarnEvery = 10_000

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
    /**
     * Puts a change (edit, delete, reaction) on the chat's log, like a send:
     * answered once the log holds it. Admission (membership, the target,
     * roles, the rate limit) is the caller's (Changes.ts).
     */
    readonly change: (record: ChangeRecord) => Effect.Effect<void, Unavailable>
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
        const context = yield* Effect.context<never>()

        /** A warning logged at most once per WarnEvery, with how many times it stands for. */
        const warning = (message: string) => {
          let lastWarning: number | undefined
          let unwarned = 0
          return (error: EventLogError) =>
            Effect.flatMap(Clock.currentTimeMillis, (now) => {
              if (lastWarning !== undefined && now - lastWarning < WarnEvery) {
                unwarned++
                return Effect.void
              }
              const more = unwarned > 0 ? ` (${unwarned} more since the last warning)` : ""
              lastWarning = now
              unwarned = 0
              return Effect.logWarning(`${message}${more}`, error)
            })
        }
        const warnUnacknowledged = warning("produce failed: the send is not acknowledged")
        const warnProduceFailed = warning("a produce request failed")

        const produceRequest = (chunk: ReadonlyArray<Pending>) => {
          const startedAt = stampNow()
          const records: Array<ProduceRecord> = []
          for (const pending of chunk) {
            observeStage("produce_wait", pending.queuedAt, startedAt, context)
            pending.headers[ProducedAtHeader] = String(startedAt)
            records.push(pending.record)
          }
          const request = log.produce(MessagesTopic, records).pipe(
            Effect.tap(() =>
              Effect.sync(() => {
                const now = stampNow()
                for (let i = 0; i < chunk.length; i++) observeStage("produce", startedAt, now, context)
              })
            )
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
        /**
         * The sends waiting for the log, oldest first. One sweeper answers those
         * past their deadline `unavailable`: no timer or fiber per send.
         */
        const outstanding = new Set<Pending>()
        const timedOut = new EventLogError({
          message: `the log did not take the send within ${Duration.format(sendTimeout)}`
        })
        const answer = (pending: Pending, outcome: Exit.Exit<void, EventLogError>) => {
          outstanding.delete(pending)
          Deferred.doneUnsafe(pending.done, outcome)
        }
        const sweep = Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.sync(() => {
            // Every send has the same timeout, so deadlines come in insertion order.
            for (const pending of outstanding) {
              if (pending.deadline > now) break
              answer(pending, Exit.fail(timedOut))
            }
          })
        )
        const sweepEvery = Duration.millis(Math.min(250, Math.max(10, Duration.toMillis(sendTimeout) / 10)))
        yield* sweep.pipe(Effect.repeat(Schedule.spaced(sweepEvery)), Effect.forkScoped)

        const produce = (all: ReadonlyArray<Pending>) => {
          // Sends already answered (timed out while queued) are not produced late.
          const chunk = all.filter((pending) => !Deferred.isDoneUnsafe(pending.done))
          if (chunk.length === 0) return Effect.void
          return produceRequest(chunk).pipe(
            // The cause, which a send already answered `unavailable` by its deadline does not show.
            Effect.tapError(warnProduceFailed),
            Effect.exit,
            Effect.flatMap((exit) =>
              Effect.sync(() => {
                const outcome = Exit.asVoid(exit)
                for (const pending of chunk) answer(pending, outcome)
              })
            )
          )
        }
        yield* Queue.takeBetween(queue, 1, MaxBatch).pipe(
          Effect.flatMap((batch) => Effect.forEach(byBytes(batch), produce, { discard: true })),
          Effect.forever,
          Effect.forkScoped
        )

        /**
         * Queues the send and waits for the log's answer, bounded by its
         * deadline: the sweeper's when the queue has room, a timeout of its own
         * when the sender must wait for room (the log is not keeping up).
         */
        const enqueueAndWait = (pending: Pending) =>
          Effect.suspend(() => {
            if (Queue.offerUnsafe(queue, pending)) {
              outstanding.add(pending)
              return Deferred.await(pending.done)
            }
            return Queue.offer(queue, pending).pipe(
              Effect.andThen(Deferred.await(pending.done)),
              Effect.timeoutOrElse({
                duration: sendTimeout,
                orElse: () => Deferred.fail(pending.done, timedOut).pipe(Effect.andThen(Effect.fail(timedOut)))
              })
            )
          })

        /** Produces one record of the chat's log and waits for the log to hold it (or the deadline). */
        const accept = Effect.fnUntraced(function* (
          chatId: ChatId,
          id: MessageId,
          value: string,
          arrivedAt: number,
          acceptedAt: number
        ) {
          const done = yield* Deferred.make<void, EventLogError>()
          const size = Buffer.byteLength(value) + chatId.length + 64
          const queuedAt = stampNow()
          observeStage("admit", arrivedAt, queuedAt, context)
          const traced =
            gate.open() && sampled(Option.getOrUndefined(yield* Effect.option(Effect.currentSpan))) !== undefined
          const deadline = acceptedAt + Duration.toMillis(sendTimeout)
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
                (span) => {
                  const headers = { [TraceparentHeader]: traceparentOf(span) }
                  return enqueueAndWait({
                    record: { key: chatId, value, headers },
                    headers,
                    queuedAt,
                    deadline,
                    size: size + 64,
                    done,
                    span
                  })
                }
              )
            : Effect.suspend(() => {
                const headers: Record<string, string> = {}
                return enqueueAndWait({
                  record: { key: chatId, value, headers },
                  headers,
                  queuedAt,
                  deadline,
                  size,
                  done
                })
              })
          // Bounded, however the log fares: a send not taken in time is answered
          // `unavailable` (it may still be written; the client sends it again
          // with the same clientMsgId, which is stored once).
          yield* enqueue.pipe(
            Effect.catchTag("EventLogError", (error) =>
              warnUnacknowledged(error).pipe(
                Effect.andThen(Effect.fail(new Unavailable({ message: "the message log is unavailable, try again" })))
              )
            )
          )
        })

        const send = Effect.fnUntraced(
          function* (authorId: UserId, chatId: ChatId, clientMsgId: string, body: string) {
            const arrivedAt = stampNow()
            // Together, so both lookups share one round trip; a rate limit is still answered first.
            const [limit, role] = yield* Effect.all(
              [limits.take("send", authorId), memberRole(membership, chatId, authorId)],
              { concurrency: 2, mode: "result" }
            )
            if (Result.isFailure(limit)) return yield* Effect.fail(limit.failure)
            if (Result.isFailure(role)) return yield* Effect.fail(role.failure)
            const id = messageIdOf(chatId, authorId, clientMsgId)
            const acceptedAt = yield* Clock.currentTimeMillis
            const sentAt = new Date(acceptedAt).toISOString()
            const value = encodeSendRecord({ id, chatId, authorId, clientMsgId, body, sentAt })
            yield* accept(chatId, id, value, arrivedAt, acceptedAt)
            yield* Metric.update(messagesAccepted, 1)
            return { id, clientMsgId }
          },
          spanWhenExported(gate, "Ingest.send")
        )

        const change = (record: ChangeRecord) =>
          Effect.flatMap(Clock.currentTimeMillis, (acceptedAt) =>
            accept(record.chatId, record.id, encodeChangeRecord(record), stampNow(), acceptedAt)
          )

        return Ingest.of({ send, change })
      })
    )

  static readonly layer = Ingest.layerWith({})
}
