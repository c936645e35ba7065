/**
 * The outbox relay: publishes the `outbox` rows to Kafka `chat.events`
 * (key = aggregate id) in id order, and marks a row published only after the
 * log acknowledged it.
 *
 * One relay is active across all nodes: the one holding a Postgres advisory
 * lock, which Postgres releases when its holder's connection dies, so another
 * node takes over. A relay that takes over first reads the topic's tail: a
 * predecessor that died between publishing and marking left rows that are in
 * the log but not marked, and they are marked rather than published twice.
 * LISTEN/NOTIFY wakes the relay at once; polling covers missed wake-ups.
 *
 * Embedded mode is one node with a one-connection pool: no lock, no LISTEN,
 * just polling.
 */
import { PgClient } from "@effect/sql-pg"
import { Clock, Duration, Effect, Layer, Metric, Option, Queue, Schedule, Schema } from "effect"
import { outboxPublished } from "../Metrics.ts"
import { SqlClient } from "effect/sql"
import { EventLog, type ProduceRecord } from "../infra/EventLog.ts"
import { EventEnvelope, StateEvent } from "../schema/Events.ts"
import { OutboxChannel } from "../state/Outbox.ts"
import { DeadLetterTopic } from "./EventConsumers.ts"
import { EventsTopic } from "./Topics.ts"

/** The advisory lock key of the relay ("harmony-outbox" as a 64-bit number). */
const RelayLock = 7_243_905_118_431_204_661n

/** The record header that carries the outbox row id. */
export const OutboxIdHeader = "harmony-outbox-id"

export interface RelayOptions {
  /** Cluster mode: compete for the lock and LISTEN; embedded: just poll. */
  readonly exclusive: boolean
  readonly pollInterval: Duration.Duration
  readonly batchSize: number
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

const retry = Schedule.min([Schedule.exponential("200 millis"), Schedule.spaced("5 seconds")]).pipe(Schedule.jittered)

export const layer = (options: RelayOptions) =>
  Layer.effectDiscard(
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const log = yield* EventLog
      const pg = yield* PgClient.PgClient

      /** Publishes one batch of unpublished rows; answers how many. */
      const publishBatch = Effect.fn("OutboxRelay.publish")(function* () {
        const rows = yield* sql<OutboxRow>`
          SELECT id, event_id, aggregate_id, type, version, payload, created_at FROM outbox
          WHERE published_at IS NULL ORDER BY id LIMIT ${options.batchSize}`
        if (rows.length === 0) return 0
        const published: Array<ProduceRecord> = []
        const undecodable: Array<ProduceRecord> = []
        for (const row of rows) {
          const headers = { [OutboxIdHeader]: String(row.id) }
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

      /** Marks rows a predecessor published but did not mark. */
      const reconcile = Effect.gen(function* () {
        const tail = yield* log.tail(EventsTopic)
        const published = tail
          .map((record) => Number(record.headers[OutboxIdHeader]))
          .filter((id) => Number.isSafeInteger(id))
        if (published.length === 0) return
        const highest = Math.max(...published)
        const at = new Date(yield* Clock.currentTimeMillis)
        const marked = yield* sql`
          UPDATE outbox SET published_at = ${at} WHERE published_at IS NULL AND id <= ${highest} RETURNING id`
        if (marked.length > 0) {
          yield* Effect.logWarning(`outbox relay: ${marked.length} rows were published but not marked; marked now`)
        }
      })

      const drain = publishBatch().pipe(Effect.repeat({ while: (published) => published === options.batchSize }))

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
        yield* Effect.logInfo("outbox relay: this node is the active relay")
        const wakeups = yield* pg.listen(OutboxChannel)
        // The lock lives as long as its connection: losing it ends this turn.
        const holdLock = connection
          .execute("SELECT 1", [], undefined)
          .pipe(Effect.repeat(Schedule.spaced("2 seconds")), Effect.asVoid)
        yield* Effect.raceFirst(relay(Option.some(wakeups)), holdLock)
      }).pipe(Effect.scoped)

      const turn = options.exclusive ? exclusive : relay(Option.none())
      yield* turn.pipe(
        Effect.tapCause((cause) => Effect.logWarning("outbox relay interrupted by a failure; retrying", cause)),
        Effect.retry(retry),
        Effect.forever,
        Effect.forkScoped
      )
    })
  )
