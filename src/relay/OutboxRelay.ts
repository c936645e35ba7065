/**
 * The outbox relay: publishes the `outbox` rows to Kafka `chat.events`
 * (key = aggregate id) in id order, and marks a row published only after the
 * log acknowledged it.
 *
 * One relay is active across all nodes: the one holding a Postgres advisory
 * lock, which Postgres releases when its holder's connection dies (or the
 * relay gives it up), so another node takes over. Each batch is marked
 * attempted before it is published; a relay that takes over first reads the
 * end of the topic: attempted rows a predecessor published but did not mark
 * are found there and marked rather than published twice.
 * LISTEN/NOTIFY wakes the relay at once; polling covers missed wake-ups.
 *
 * Embedded mode is one node with a one-connection pool: no lock, no LISTEN,
 * just polling.
 *
 * Every node samples the outbox's backlog (unpublished rows, and the age of
 * the oldest) for `harmony_outbox_backlog_rows` and
 * `harmony_outbox_relay_lag_seconds`: the same table seen from every node,
 * so take the max across nodes. Each published batch is a span
 * (`OutboxRelay.publish`) whose context rides in the records' `traceparent`
 * header to the event consumers.
 */
import { PgClient } from "@effect/sql-pg"
import { Clock, Duration, Effect, Layer, Metric, Option, Queue, Schedule, Schema } from "effect"
import { outboxBacklog, outboxPublished, outboxRelayLag } from "../Metrics.ts"
import { SqlClient } from "effect/sql"
import { EventLog, type ProduceRecord } from "../ports/EventLog.ts"
import { EventEnvelope, StateEvent } from "../schema/Events.ts"
import { OutboxChannel } from "../state/Outbox.ts"
import { TraceparentHeader, traceparentOf } from "../Tracing.ts"
import { DeadLetterTopic, EventsTopic } from "../schema/Topics.ts"
import { backoff } from "../Retry.ts"

/** The advisory lock key of the relay ("harmony-outbox" as a 64-bit number). */
const RelayLock = 7_243_905_118_431_204_661n

/** The record header that carries the outbox row id. */
export const OutboxIdHeader = "harmony-outbox-id"

export interface RelayOptions {
  /** Cluster mode: compete for the lock and LISTEN; embedded: just poll. */
  readonly exclusive: boolean
  readonly pollInterval: Duration.Duration
  readonly batchSize: number
  /** How often the backlog gauges are sampled (default 2 seconds). */
  readonly sampleInterval?: Duration.Duration | undefined
}

interface OutboxRow {
  /** bigserial: a bigint from Postgres */
  readonly id: bigint | string
  readonly event_id: string
  readonly aggregate_id: string
  readonly type: string
  readonly version: number
  readonly payload: unknown
  readonly created_at: Date
}

const encodeEnvelope = Schema.encodeSync(Schema.fromJsonString(EventEnvelope))
const decodeEvent = Schema.decodeUnknownResult(StateEvent)

const retry = backoff("200 millis")

export const layer = (options: RelayOptions) =>
  Layer.effectDiscard(
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const log = yield* EventLog
      const pg = yield* PgClient.PgClient

      /**
       * Publishes one batch of unpublished rows; answers how many. An empty
       * poll is not traced (the relay polls all the time); a batch is.
       */
      const publishBatch = Effect.gen(function* () {
        const rows = yield* sql<OutboxRow>`
          SELECT id, event_id, aggregate_id, type, version, payload, created_at FROM outbox
          WHERE published_at IS NULL ORDER BY id LIMIT ${options.batchSize}`
        if (rows.length === 0) return 0
        return yield* publishRows(rows).pipe(Effect.withTracerEnabled(true))
      })

      const publishRows = Effect.fn("OutboxRelay.publish")(function* (rows: ReadonlyArray<OutboxRow>) {
        const span = yield* Effect.currentSpan.pipe(Effect.option)
        const trace = span._tag === "Some" ? { [TraceparentHeader]: traceparentOf(span.value) } : {}
        yield* Effect.annotateCurrentSpan("harmony.batch.size", rows.length)
        const published: Array<ProduceRecord> = []
        const undecodable: Array<ProduceRecord> = []
        for (const row of rows) {
          const headers = { [OutboxIdHeader]: String(row.id), ...trace }
          const payload = decodeEvent(typeof row.payload === "string" ? JSON.parse(row.payload) : row.payload)
          if (payload._tag === "Failure") {
            // A row no consumer could read (an event of an older shape): it
            // goes to the dead letters with the reason instead of blocking
            // every event after it.
            undecodable.push({
              key: row.aggregate_id,
              value: JSON.stringify({ ...row, id: String(row.id) }),
              headers: {
                ...headers,
                "harmony-dlq-reason": payload.failure.message,
                "harmony-dlq-group": "outbox-relay"
              }
            })
            continue
          }
          published.push({
            key: row.aggregate_id,
            value: encodeEnvelope({
              id: row.event_id,
              type: row.type,
              version: row.version,
              timestamp: new Date(row.created_at).toISOString(),
              aggregateId: row.aggregate_id,
              payload: payload.success
            }),
            headers
          })
        }
        const attemptedAt = new Date(yield* Clock.currentTimeMillis)
        yield* sql`UPDATE outbox SET attempted_at = ${attemptedAt} WHERE ${sql.in(
          "id",
          rows.map((row) => row.id)
        )}`
        if (undecodable.length > 0) {
          yield* Effect.logError(`outbox relay: ${undecodable.length} undecodable rows sent to ${DeadLetterTopic}`)
          yield* log.produce(DeadLetterTopic, undecodable)
        }
        if (published.length > 0) yield* log.produce(EventsTopic, published)
        const at = new Date(yield* Clock.currentTimeMillis)
        yield* sql`UPDATE outbox SET published_at = ${at} WHERE ${sql.in(
          "id",
          rows.map((row) => row.id)
        )}`
        yield* Metric.update(outboxPublished, rows.length)
        return rows.length
      })

      /** Marks the attempted rows a predecessor published but did not mark. */
      const reconcile = Effect.gen(function* () {
        const inDoubt = yield* sql<{ id: bigint | string }>`
          SELECT id FROM outbox WHERE published_at IS NULL AND attempted_at IS NOT NULL`
        if (inDoubt.length === 0) return
        // An attempt is one batch: its records are among the last batchSize of each partition.
        const [events, deadLetters] = yield* Effect.all([
          log.tail(EventsTopic, options.batchSize),
          log.tail(DeadLetterTopic, options.batchSize)
        ])
        const inLog = new Set([...events, ...deadLetters].map((record) => record.headers[OutboxIdHeader]))
        const found = inDoubt.map((row) => String(row.id)).filter((id) => inLog.has(id))
        if (found.length === 0) return
        const at = new Date(yield* Clock.currentTimeMillis)
        yield* sql`UPDATE outbox SET published_at = ${at} WHERE ${sql.in("id", found)}`
        yield* Effect.logWarning(`outbox relay: ${found.length} rows were published but not marked; marked now`)
      })

      const drain = publishBatch.pipe(Effect.repeat({ while: (published) => published === options.batchSize }))

      const relay = (wakeups: Option.Option<Queue.Dequeue<unknown, unknown>>) =>
        Effect.gen(function* () {
          yield* reconcile
          while (true) {
            yield* drain
            if (wakeups._tag === "Some") {
              yield* Queue.take(wakeups.value).pipe(Effect.timeoutOption(options.pollInterval))
              yield* Queue.clear(wakeups.value)
            } else {
              yield* Effect.sleep(options.pollInterval)
            }
          }
        })

      const exclusive = Effect.gen(function* () {
        const connection = yield* sql.reserve
        const [row] = yield* connection.execute("SELECT pg_try_advisory_lock($1) AS locked", [RelayLock], undefined)
        if (row?.locked !== true) return yield* Effect.sleep(Duration.seconds(2))
        // However this turn ends, the lock is given up before the connection
        // goes back to the pool, so another node (or the next turn) can take it.
        yield* Effect.addFinalizer(() =>
          connection
            .execute("SELECT pg_advisory_unlock($1)", [RelayLock], undefined)
            .pipe(
              Effect.catchCause((cause) =>
                Effect.logDebug("outbox relay: unlock failed (the connection is gone)", cause)
              )
            )
        )
        yield* Effect.logInfo("outbox relay: this node is the active relay")
        const wakeups = yield* pg.listen(OutboxChannel)
        // The lock lives as long as its connection: losing it ends this turn.
        const holdLock = connection
          .execute("SELECT 1", [], undefined)
          .pipe(Effect.repeat(Schedule.spaced("2 seconds")), Effect.asVoid)
        yield* Effect.raceFirst(relay(Option.some(wakeups)), holdLock)
      }).pipe(Effect.scoped)

      // The backlog as every node sees it (cheap: the partial index of unpublished rows).
      const sample = Effect.gen(function* () {
        const [row] = yield* sql<{ backlog: number | string; oldest: Date | string | null }>`
          SELECT
            (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS backlog,
            (SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1) AS oldest`
        const now = yield* Clock.currentTimeMillis
        const oldest = row?.oldest === null || row?.oldest === undefined ? undefined : new Date(row.oldest).getTime()
        yield* Metric.update(outboxBacklog, Number(row?.backlog ?? 0))
        yield* Metric.update(outboxRelayLag, oldest === undefined ? 0 : Math.max(0, now - oldest) / 1000)
      }).pipe(Effect.catchCause((cause) => Effect.logDebug("outbox relay: backlog not sampled", cause)))
      yield* sample.pipe(
        Effect.repeat(Schedule.spaced(options.sampleInterval ?? Duration.seconds(2))),
        Effect.withTracerEnabled(false),
        Effect.forkScoped
      )

      const turn = options.exclusive ? exclusive : relay(Option.none())
      // Failures and defects alike end the turn, never the relay: it backs
      // off and takes another turn (competing for the lock again).
      yield* turn.pipe(
        // Polls, waits and the lock's keep-alive are not worth a trace each.
        Effect.withTracerEnabled(false),
        Effect.sandbox,
        Effect.tapError((cause) => Effect.logWarning("outbox relay interrupted by a failure; retrying", cause)),
        Effect.retry(retry),
        Effect.forever,
        Effect.forkScoped
      )
    })
  )
