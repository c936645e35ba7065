/**
 * The persistence sink of one partition: sequenced messages queue here
 * (bounded: a full sink back-pressures the actors and so the partition),
 * are written to the MessageStore in batches, and only then are their
 * records completed in the partition's OffsetTracker — Kafka offsets are
 * committed for the persisted prefix only. A store that fails is retried
 * forever with capped, jittered backoff: live fanout does not wait for it,
 * and nothing is lost when it comes back.
 *
 * Batches are written one after the other, so a chat's messages reach the
 * store in seq order and a crash leaves at most one batch partly written
 * (the actors' restore logic tolerates exactly that).
 *
 * Each write is a span (`PersistenceSink.persist`, a root: a batch belongs to
 * many traces) linking the sequencing spans of the messages it carries.
 */
import { Cause, Deferred, Duration, Effect, Exit, Fiber, FiberSet, Metric, Queue } from "effect"
import { messagesPersisted, observeStage, sinkBatchSize, sinkRetries, stampNow } from "../Metrics.ts"
import type { Scope, Tracer } from "effect"
import { SqlClient } from "effect/sql"
import { MessageStore } from "../ports/MessageStore.ts"
import type { ChatId, LogEntry } from "../schema/Domain.ts"
import * as Chats from "../state/Chats.ts"
import type { OffsetTracker } from "./OffsetTracker.ts"
import { retryForever } from "../Retry.ts"

export interface SinkItem {
  /** A message, or a change to one. */
  readonly message: LogEntry
  readonly offset: number
  /** Called once the message is durable. */
  readonly onPersisted: () => void
  /** The message's sequencing span, when tracing: the write links it. */
  readonly span?: Tracer.AnySpan | undefined
  /** When it was sequenced (`stampNow`). */
  sequencedAt: number
}

export interface SinkOptions {
  readonly partition: number
  /** Where the persisted chats' last seqs are recorded (shared by the node's sinks). */
  readonly lastSeqs: LastSeqs
  readonly tracker: OffsetTracker
  /** The most messages waiting to be persisted before the sink back-pressures. */
  readonly backlog: number
  /** The most messages in one store write. */
  readonly batchSize: number
}

export interface PersistenceSink {
  /** Queues messages for persistence; waits while the backlog is full. */
  readonly offer: (items: ReadonlyArray<SinkItem>) => Effect.Effect<void>
  /** Persists everything queued, then stops (partition revoked or node stopping). */
  readonly drain: Effect.Effect<void>
  /** Messages queued and not yet persisted. */
  readonly backlog: Effect.Effect<number>
}

/** How often `chats.last_seq` is written at most. */
const LastSeqsEvery = Duration.millis(100)

/**
 * `chats.last_seq` (it feeds `lastSeq` of /v1/me/chats) for every sink of
 * the node, group-committed: what the sinks hand in while one UPDATE runs,
 * or in the LastSeqsEvery after it, goes in the next one. One statement
 * serves many store writes instead of one each (at 1,000 messages a second
 * the sinks made ~185 a second) — on PGlite every statement is a round trip
 * through the Postgres protocol on the event loop. A sink does not wait for
 * it before its next write; only its offsets do.
 */
export interface LastSeqs {
  /**
   * Raises the chats' last seqs (never lowers them) and answers once that is
   * done. A failure costs freshness, not messages: it is logged, not returned.
   */
  readonly record: (lastSeqs: ReadonlyMap<ChatId, number>) => Effect.Effect<void>
}

interface LastSeqsRequest {
  readonly lastSeqs: ReadonlyMap<ChatId, number>
  readonly done: Deferred.Deferred<void>
}

/** The node's LastSeqs, for the scope's lifetime (what is queued when it closes is still written). */
export const makeLastSeqs = Effect.fnUntraced(function* (): Effect.fn.Return<
  LastSeqs,
  never,
  Scope.Scope | SqlClient.SqlClient
> {
  const sql = yield* SqlClient.SqlClient
  const write = (lastSeqs: ReadonlyMap<ChatId, number>) =>
    Chats.recordLastSeqs(lastSeqs).pipe(
      Effect.provideService(SqlClient.SqlClient, sql),
      Effect.catchCause((cause) => Effect.logWarning("could not record chats' last seq", cause))
    )
  const queue = yield* Queue.unbounded<LastSeqsRequest, Cause.Done>()
  const flush = (requests: ReadonlyArray<LastSeqsRequest>) => {
    const merged = new Map<ChatId, number>()
    for (const { lastSeqs } of requests)
      for (const [chatId, seq] of lastSeqs) merged.set(chatId, Math.max(merged.get(chatId) ?? 0, seq))
    return write(merged).pipe(
      Effect.ensuring(
        Effect.sync(() => {
          for (const { done } of requests) Deferred.doneUnsafe(done, Exit.void)
        })
      )
    )
  }
  const writer = yield* Queue.takeAll(queue).pipe(
    Effect.flatMap(flush),
    // At most one statement per LastSeqsEvery, whatever the message rate:
    // what comes meanwhile is merged into the next.
    Effect.andThen(Effect.sleep(LastSeqsEvery)),
    Effect.forever,
    Effect.catchIf(Cause.isDone, () => Effect.void),
    Effect.forkScoped
  )
  yield* Effect.addFinalizer(() => Queue.end(queue).pipe(Effect.andThen(Fiber.join(writer))))
  return {
    record: (lastSeqs) =>
      Effect.suspend(() => {
        if (lastSeqs.size === 0) return Effect.void
        const done = Deferred.makeUnsafe<void>()
        // Closed (the node is stopping): written on its own.
        return Queue.offerUnsafe(queue, { lastSeqs, done }) ? Deferred.await(done) : write(lastSeqs)
      })
  }
})

export const make = Effect.fnUntraced(function* (
  options: SinkOptions
): Effect.fn.Return<PersistenceSink, never, Scope.Scope | MessageStore> {
  const store = yield* MessageStore
  const queue = yield* Queue.bounded<SinkItem, Cause.Done>(options.backlog)
  const context = yield* Effect.context<never>()
  /** Written batches whose last seqs are being recorded; their offsets complete after. */
  const recording = yield* FiberSet.make()

  const write = Effect.fnUntraced(function* (batch: ReadonlyArray<SinkItem>) {
    yield* Metric.update(sinkBatchSize, batch.length)
    yield* store.putBatch(batch.map((item) => item.message)).pipe(
      Effect.tapError((error) =>
        Effect.logWarning(
          `partition ${options.partition}: persisting ${batch.length} messages failed, retrying`,
          error
        ).pipe(Effect.andThen(Metric.update(sinkRetries, 1)))
      ),
      Effect.retry(retryForever),
      // The schedule never ends: the store's failures are retried, not returned.
      Effect.orDie
    )
    const now = stampNow()
    for (const item of batch) {
      item.onPersisted()
      observeStage("persist", item.sequencedAt, now, context)
    }
    yield* Metric.update(messagesPersisted, batch.length)
    // Recorded before the offsets complete: once they are committed, nothing
    // replays these messages, and nothing else would record their seqs. In
    // the background: the next batch's write does not wait for it.
    yield* FiberSet.run(
      recording,
      recordLastSeqs(batch).pipe(
        Effect.andThen(
          Effect.sync(() => {
            for (const item of batch) options.tracker.complete(item.offset)
          })
        )
      )
    )
  })
  const persist = (batch: ReadonlyArray<SinkItem>) => {
    const links: Array<Tracer.SpanLink> = []
    for (const item of batch) if (item.span !== undefined) links.push({ span: item.span, attributes: {} })
    return write(batch).pipe(
      Effect.withSpan("PersistenceSink.persist", {
        root: true,
        // Exported when it carries a traced message: a batch of untraced ones is not worth a trace.
        sampled: links.length > 0,
        links,
        attributes: { "harmony.partition": options.partition, "harmony.batch.size": batch.length }
      })
    )
  }

  // `chats.last_seq` trails the store and never goes backwards.
  const recordLastSeqs = (batch: ReadonlyArray<SinkItem>) => {
    const last = new Map<ChatId, number>()
    for (const { message } of batch) last.set(message.chatId, Math.max(last.get(message.chatId) ?? 0, message.seq))
    return options.lastSeqs.record(last)
  }

  const run = Queue.takeBetween(queue, 1, options.batchSize).pipe(
    Effect.flatMap(persist),
    Effect.forever,
    Effect.catchIf(Cause.isDone, () => Effect.void)
  )
  const fiber = yield* Effect.forkScoped(run)

  return {
    offer: (items) => Queue.offerAll(queue, items).pipe(Effect.asVoid),
    drain: Queue.end(queue).pipe(Effect.andThen(Fiber.join(fiber)), Effect.andThen(FiberSet.awaitEmpty(recording))),
    backlog: Queue.size(queue)
  }
})
