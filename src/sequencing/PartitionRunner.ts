/**
 * The runner of one `chat.messages` partition, for as long as this node
 * owns it: it decodes each record, routes it to its chat's actor, and
 * commits the group's offset for the prefix of records that are persisted
 * (or needed no persisting: duplicates, undecodable records). When the
 * partition is revoked, it drains — actors, then the sink — and makes its
 * final commit before the partition moves.
 *
 * Its consumer lag (`harmony_consumer_lag_records`) is the partition's end
 * offset minus the committable position, read when metrics are collected.
 * When tracing, each record's receipt is a consumer span (`PartitionRunner.consume`)
 * under the producer span named by its `traceparent` header — the trace
 * crosses Kafka here — and the actor sequences it under that span.
 */
import { Duration, Effect, Exit, Option, Schedule, Scope, Semaphore, Stream, type Tracer } from "effect"
import type { SqlClient } from "effect/sql"
import type { ActiveChats } from "./ActiveChats.ts"
import * as ChatActors from "./ChatActors.ts"
import type { ActorOptions } from "./ChatActor.ts"
import type { LogRecord, PartitionClaim } from "../ports/EventLog.ts"
import type { MessageStore } from "../ports/MessageStore.ts"
import { consumerLag, observeStage, ProducedAtHeader, registerGauge, stampNow } from "../Metrics.ts"
import { decodeChatRecordOption as decodeRecord } from "../schema/Records.ts"
import { parseTraceparent, sampled, syncSpans, TraceparentHeader } from "../Tracing.ts"
import type { Fanout } from "../messages/Fanout.ts"
import { OffsetTracker } from "./OffsetTracker.ts"
import * as PersistenceSink from "./PersistenceSink.ts"
import { ActorsGroup } from "../schema/Topics.ts"

export interface RunnerOptions {
  readonly actors: ActorOptions
  /**
   * Records past the committed offset per partition before consumption
   * pauses: the unpersisted backlog, and what a crash replays. Capped at the
   * actors' dedupe window, so every replayed record is recognised.
   */
  readonly backlog: number
  readonly batchSize: number
  /** How often the committed offset catches up with the persisted prefix. */
  readonly commitInterval: Duration.Duration
  /**
   * How long a revoked partition waits for its backlog to be persisted
   * before it gives up on it: it commits what is persisted and returns, and
   * the next owner replays the rest from the log. Kept below the log's own
   * drain timeout and the node's SHUTDOWN_TIMEOUT.
   */
  readonly drainTimeout: Duration.Duration
}

/** How long the final commit of a revoked partition may take. */
const finalCommitTimeout = Duration.seconds(5)

export const run = (
  claim: PartitionClaim,
  options: RunnerOptions,
  fanout: Fanout["Service"],
  lastSeqs: PersistenceSink.LastSeqs
): Effect.Effect<void, never, MessageStore | SqlClient.SqlClient | ActiveChats> =>
  Effect.gen(function* () {
    const tracker = new OffsetTracker()
    // The actors and the sink live in a scope of their own, closed in the
    // background once the runner is done: after a drain that timed out, an
    // interrupted store call can take its own time to settle (the SDK's
    // request timeout), and the hand-over must not wait for it.
    const workers = yield* Scope.make()
    yield* Effect.addFinalizer(() => Effect.forkDetach(Scope.close(workers, Exit.void)).pipe(Effect.asVoid))
    // A replay must never reach past what the actors remember as sequenced.
    const inFlightLimit = Math.min(options.backlog, options.actors.dedupeWindow)
    const sink = yield* PersistenceSink.make({
      partition: claim.partition,
      lastSeqs,
      tracker,
      backlog: options.backlog,
      batchSize: options.batchSize
    }).pipe(Scope.provide(workers))
    const spans = yield* syncSpans
    const context = yield* Effect.context<never>()
    const actors = yield* ChatActors.make({
      options: options.actors,
      fanout,
      sink,
      tracker,
      partition: claim.partition,
      spans,
      metrics: context
    }).pipe(Scope.provide(workers))

    let committed: number | undefined
    const commits = yield* Semaphore.make(1)
    /** Commits the persisted prefix when it moved; answers whether the log holds it now. One at a time, in order. */
    const commit = Effect.suspend(() => {
      const next = tracker.committable
      if (next === undefined || next === committed) return Effect.succeed(true)
      return claim.commit(next).pipe(
        Effect.as(true),
        Effect.tap(() =>
          Effect.sync(() => {
            committed = next
            tracker.committed(next)
          })
        ),
        Effect.catchCause((cause) =>
          Effect.logWarning(`partition ${claim.partition}: commit of ${next} failed`, cause).pipe(Effect.as(false))
        )
      )
    }).pipe(commits.withPermits(1))
    yield* Effect.forkScoped(commit.pipe(Effect.repeat(Schedule.spaced(options.commitInterval))))
    yield* registerLag(claim, tracker)

    /**
     * Waits until a crash would replay fewer than inFlightLimit records. When
     * persisted records are what holds the runner back, they are committed
     * now rather than at the next periodic commit; otherwise (or when the
     * commit fails) it waits for the next completion or commit.
     */
    const awaitCapacity: Effect.Effect<void> = Effect.suspend(() => {
      if (tracker.inFlight < inFlightLimit) return Effect.void
      const released = tracker.committable === committed ? Effect.succeed(false) : commit
      return released.pipe(
        Effect.flatMap((moved) => (moved ? Effect.void : tracker.changed)),
        Effect.andThen(awaitCapacity)
      )
    })

    const decoder = new TextDecoder()
    /** The record's send or change, or undefined (logged, and completed: nothing to persist) when it is neither. */
    const decode = (record: LogRecord) => {
      const decoded = decodeRecord(decoder.decode(record.value))
      if (decoded._tag === "Some" && decoded.value.chatId === record.key) return decoded.value
      tracker.complete(record.offset)
      return undefined
    }
    const undecodable = (record: LogRecord) =>
      Effect.logError(`partition ${claim.partition}: skipping undecodable record at offset ${record.offset}`)
    /** One record, traced: a consumer span under its producer's, the actor sequencing it under that. */
    const receiveTraced = (record: LogRecord, receivedAt: number, parent: Tracer.AnySpan) =>
      Effect.useSpan(
        "PartitionRunner.consume",
        {
          parent,
          kind: "consumer",
          attributes: {
            "messaging.system": "kafka",
            "messaging.destination.name": claim.topic,
            "messaging.destination.partition.id": String(claim.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": ActorsGroup
          }
        },
        (span) =>
          Effect.gen(function* () {
            yield* awaitCapacity
            tracker.register(record.offset)
            const send = decode(record)
            if (send === undefined) return yield* undecodable(record)
            yield* actors.route(send, record.offset, receivedAt, span)
          }).pipe(Effect.withParentSpan(span, { captureStackTrace: false }))
      )
    // A fetched chunk at a time: most records go to their actor's mailbox
    // synchronously, with no fiber step of their own.
    const consume = claim.records.pipe(
      Stream.runForEachArray((records) =>
        Effect.gen(function* () {
          const receivedAt = stampNow()
          const tracing = spans?.active() === true
          for (const record of records) {
            observeStage("log", Number(record.headers[ProducedAtHeader]), receivedAt, context)
            const parent = tracing ? sampled(parseTraceparent(record.headers[TraceparentHeader])) : undefined
            if (parent !== undefined) {
              yield* receiveTraced(record, receivedAt, parent)
              continue
            }
            if (tracker.inFlight >= inFlightLimit) yield* awaitCapacity
            tracker.register(record.offset)
            const send = decode(record)
            if (send === undefined) yield* undecodable(record)
            else if (!actors.routeNow(send, record.offset, receivedAt))
              yield* actors.route(send, record.offset, receivedAt)
          }
        })
      )
    )
    // Revoked or stopping: everything routed gets sequenced and persisted
    // before the final commit, so the next owner starts exactly after it —
    // unless the store is too slow for that (the runner may then be stuck
    // waiting for capacity, or on a full mailbox). Then the runner gives up
    // on the backlog before anyone interrupts it: its final commit covers
    // the persisted prefix only, and the next owner replays the rest from
    // the log (a write still in flight may land later; replay sequences the
    // same records identically, so it rewrites what that write holds).
    const drained = yield* Effect.raceFirst(
      consume.pipe(Effect.andThen(actors.drain), Effect.andThen(sink.drain), Effect.asSome),
      claim.revoked.pipe(Effect.andThen(Effect.sleep(options.drainTimeout)), Effect.as(Option.none()))
    )
    if (drained._tag === "None") {
      yield* Effect.logWarning(
        `partition ${claim.partition}: the store did not take the backlog within ${Duration.format(options.drainTimeout)} of the revocation; ${tracker.inFlight} records are left to the next owner`
      )
    }
    // Bounded too: with the log unreachable the commit is lost either way, and the next owner replays.
    yield* commit.pipe(Effect.timeoutOption(finalCommitTimeout))
    yield* Effect.logDebug(`partition ${claim.partition}: released at offset ${committed}`)
  }).pipe(Effect.scoped, Effect.withSpan("PartitionRunner.run", { attributes: { partition: claim.partition } }))

/** The claim's consumer lag, read when metrics are collected, for as long as the claim lasts. */
const registerLag = (claim: PartitionClaim, tracker: OffsetTracker) =>
  registerGauge(
    consumerLag,
    () => {
      const position = tracker.committable
      return position === undefined ? 0 : Math.max(0, claim.endOffset() - position)
    },
    { group: ActorsGroup, topic: claim.topic, partition: String(claim.partition) }
  )
