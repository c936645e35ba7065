/**
 * The EventLog port: a partitioned, replicated log with consumer groups.
 * Kafka in cluster mode (KafkaEventLog.ts), a durable in-process log on
 * SQLite in embedded mode (SqliteEventLog.ts), and the same in memory for
 * tests (MemoryEventLog.ts). All pass test/contract/EventLog.contract.ts.
 *
 * Consumption is modelled on Kafka's own unit of ownership, the partition: a
 * consumer joins a group and, for every partition the group assigns it, gets a
 * `PartitionClaim` with the records from the group's committed offset on. When
 * the partition is revoked (rebalance) or the consumer leaves, the claim's
 * record stream ends, the consumer waits for the claim's handler to finish
 * (it drains and makes its final commit), and only then gives the partition
 * up. A consumer that dies without committing has its records redelivered to
 * whichever member gets the partition next.
 */
import { Context, Schema } from "effect"
import type { Effect, Scope, Stream } from "effect"

export class EventLogError extends Schema.TaggedError<EventLogError>()("EventLogError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {}

/** A record as read from the log. */
export interface LogRecord {
  readonly topic: string
  readonly partition: number
  /** Position in the partition, from 0, increasing by one per record. */
  readonly offset: number
  readonly key: string
  readonly value: Uint8Array
  readonly headers: Readonly<Record<string, string>>
  /** Milliseconds since the epoch at which the log accepted the record. */
  readonly timestamp: number
}

/** A record to append. Records with the same key go to the same partition, in order. */
export interface ProduceRecord {
  readonly key: string
  readonly value: Uint8Array | string
  readonly headers?: Readonly<Record<string, string>> | undefined
}

/** Where the log put a produced record. */
export interface RecordPosition {
  readonly partition: number
  readonly offset: number
}

/** One assigned partition, owned by this consumer until its records end. */
export interface PartitionClaim {
  readonly topic: string
  readonly partition: number
  /**
   * The records from the group's committed offset on (from the start of the
   * partition when nothing was committed), in offset order. Ends when the
   * partition is revoked or the consumer leaves; it back-pressures the log
   * when not pulled.
   */
  readonly records: Stream.Stream<LogRecord>
  /**
   * Completes when the partition is revoked or the consumer leaves — when
   * `records` ends — even while the handler is busy elsewhere, so it can
   * bound its drain.
   */
  readonly revoked: Effect.Effect<void>
  /**
   * Commits the group's position: `nextOffset` is the offset of the next
   * record to process (the last processed offset + 1).
   */
  readonly commit: (nextOffset: number) => Effect.Effect<void, EventLogError>
  /**
   * The partition's end offset (the offset the next appended record gets) as
   * this consumer last learned it — for consumer lag, so it may trail the
   * log by a fetch or a few seconds, never more.
   */
  readonly endOffset: () => number
}

export interface ConsumeOptions {
  readonly group: string
  readonly topic: string
  /**
   * Runs once per assigned partition, in its own fiber, for as long as the
   * claim lasts. It should consume `claim.records` to their end and commit
   * what it has made durable; the partition is handed over when it returns.
   */
  readonly onClaim: (claim: PartitionClaim) => Effect.Effect<void>
}

export class EventLog extends Context.Service<
  EventLog,
  {
    /** Creates the topic when missing (idempotent). */
    readonly createTopic: (topic: string, partitions: number) => Effect.Effect<void, EventLogError>
    /**
     * Appends records durably (Kafka: idempotent producer, acks from all
     * in-sync replicas) and answers only once the log holds all of them.
     */
    readonly produce: (
      topic: string,
      records: ReadonlyArray<ProduceRecord>
    ) => Effect.Effect<ReadonlyArray<RecordPosition>, EventLogError>
    /**
     * Joins `group` on `topic` for the lifetime of the scope. Returns once the
     * consumer has joined; partitions are claimed and released in the
     * background as the group rebalances. Closing the scope releases every
     * claim (draining its handler) and leaves the group.
     */
    readonly consume: (options: ConsumeOptions) => Effect.Effect<void, EventLogError, Scope.Scope>
    /**
     * The last `count` records (default 1) of every non-empty partition of
     * `topic`, oldest first within a partition (none for an unknown or empty
     * topic). The outbox relay reads it on taking over to learn what its
     * predecessor published.
     */
    readonly tail: (topic: string, count?: number) => Effect.Effect<ReadonlyArray<LogRecord>, EventLogError>
    /** Answers when the log is reachable (readiness). */
    readonly ping: Effect.Effect<void, EventLogError>
  }
>()("harmony/ports/EventLog") {}
