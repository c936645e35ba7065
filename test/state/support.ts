/**
 * Shared pieces of the state-path suites: migrated SQL (PGlite, or a fresh
 * database of its own on the services' Postgres that several pools can share),
 * Kafka with topics of its own per test, EventLog and Cache decorators that
 * inject faults, a reader of a whole topic, outbox queries and polling with a
 * deadline.
 */
import { PgClient } from "@effect/sql-pg"
import {
  Cause,
  type Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  Layer,
  Logger,
  Redacted,
  References,
  Schema,
  Scope,
  Stream
} from "effect"
import { SqlClient } from "effect/sql"
import { randomUUID } from "node:crypto"
import { createConnection, createServer, type Server, type Socket } from "node:net"
import { Cache, CacheError } from "../../src/ports/Cache.ts"
import {
  EventLog,
  type EventLogError,
  type LogRecord,
  type ProduceRecord,
  type RecordPosition
} from "../../src/ports/EventLog.ts"
import * as KafkaEventLog from "../../src/adapters/kafka/KafkaEventLog.ts"
import { migrate } from "../../src/state/migrations.ts"
import * as Sql from "../../src/adapters/sql/Sql.ts"
import { EventEnvelope } from "../../src/schema/Events.ts"
import * as OutboxRelay from "../../src/relay/OutboxRelay.ts"
import { serviceUrl } from "../support/services.ts"

// --- logs ----------------------------------------------------------------------

/** Log lines kept in memory (shown when a test fails) instead of flooding the output. */
export class LogBook {
  readonly lines: Array<string> = []
  add(line: string): void {
    this.lines.push(`${new Date().toISOString().slice(11, 23)} ${line}`)
  }
  text(last = 60): string {
    return this.lines.slice(-last).join("\n")
  }
  count(pattern: RegExp): number {
    return this.lines.filter((line) => pattern.test(line)).length
  }
}

/** Routes the effect's logs (Info and up) into `book`. */
export const logInto =
  (book: LogBook) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
    const logger = Logger.make((options) => {
      const parts = Array.isArray(options.message) ? options.message : [options.message]
      const text = parts.map((part) => (typeof part === "string" ? part : String(part))).join(" ")
      book.add(
        `${options.logLevel}: ${text}${Cause.hasFails(options.cause) || Cause.hasDies(options.cause) ? ` ${Cause.pretty(options.cause).split("\n")[0]}` : ""}`
      )
    })
    return self.pipe(
      Effect.provideService(References.MinimumLogLevel, "Info"),
      Effect.provideService(References.CurrentLoggers, new Set([logger]))
    )
  }

// --- SQL -----------------------------------------------------------------------

const migrated = <E, R>(layer: Layer.Layer<PgClient.PgClient | SqlClient.SqlClient, E, R>) =>
  layer.pipe(
    Layer.tap((context) => Effect.provideContext(migrate, context)),
    Layer.orDie
  )

/** PGlite in memory, migrated (embedded mode's SQL: a one-connection pool, no advisory locks needed). */
export const embeddedSql = migrated(Sql.embedded({}))

export { freshDatabaseUrl } from "../support/database.ts"

/** A pool of its own on the database at `url` (migrated when `migrate` is set). */
export const postgresAt = (
  url: string,
  options: { readonly maxConnections?: number; readonly migrate?: boolean } = {}
) => {
  const pool = PgClient.layer({
    url: Redacted.make(url),
    maxConnections: options.maxConnections ?? 6,
    connectTimeout: Duration.seconds(5),
    applicationName: "harmony-state-test"
  })
  return options.migrate === true ? migrated(pool) : Layer.orDie(pool)
}

// --- the log -------------------------------------------------------------------

/** Kafka with short group timeouts (6 s is the broker's minimum session timeout). */
export const kafkaLog = (clientId: string) =>
  KafkaEventLog.layer({
    brokers: serviceUrl("KAFKA_BROKERS").split(","),
    clientId,
    sessionTimeoutMs: 6_000,
    heartbeatIntervalMs: 1_000,
    rebalanceTimeoutMs: 10_000,
    drainTimeout: "10 seconds"
  }).pipe(Layer.orDie)

/**
 * The log with every topic renamed `<topic>.<suffix>`: the relay and the
 * consumers use the fixed `chat.events`, which the services' Kafka shares
 * with every earlier run (their outbox ids would confuse the relay's tail).
 */
export const isolatedTopics = (log: EventLog["Service"], suffix: string): EventLog["Service"] => {
  const rename = (topic: string) => `${topic}.${suffix}`
  return EventLog.of({
    createTopic: (topic, partitions) => log.createTopic(rename(topic), partitions),
    produce: (topic, records) => log.produce(rename(topic), records),
    consume: (options) => log.consume({ ...options, topic: rename(options.topic) }),
    tail: (topic, count) => log.tail(rename(topic), count),
    ping: log.ping
  })
}

export interface ProduceCall {
  readonly topic: string
  /** Per topic, from 0. */
  readonly call: number
  readonly records: ReadonlyArray<ProduceRecord>
  readonly positions: ReadonlyArray<RecordPosition>
}

/**
 * The log with `after` run once each produce has really been acknowledged:
 * it can fail, die or hang there — a relay that dies between the log's
 * acknowledgement and marking its rows. `calls` lists every acknowledged
 * produce (so what is in the log), whatever `after` did.
 */
export const withAfterProduce = (
  log: EventLog["Service"],
  after: (call: ProduceCall) => Effect.Effect<void, EventLogError>,
  calls: Array<ProduceCall> = []
) => {
  const counts = new Map<string, number>()
  const service = EventLog.of({
    ...log,
    produce: (topic, records) =>
      log.produce(topic, records).pipe(
        Effect.tap((positions) =>
          Effect.suspend(() => {
            const call = counts.get(topic) ?? 0
            counts.set(topic, call + 1)
            const entry: ProduceCall = { topic, call, records, positions }
            calls.push(entry)
            return after(entry)
          })
        )
      )
  })
  return { service, calls }
}

/**
 * Everything in `topic` now: the tail gives each partition's end, then a
 * consumer of a fresh group reads every partition from the start up to it.
 * Records in partition and offset order.
 */
export const readTopic = (log: EventLog["Service"], topic: string, timeout: Duration.Input = "30 seconds") =>
  Effect.gen(function* () {
    const tail = yield* log.tail(topic).pipe(Effect.orDie)
    const ends = new Map(tail.map((record) => [record.partition, record.offset + 1]))
    if (ends.size === 0) return [] as Array<LogRecord>
    const seen = new Map<number, Map<number, LogRecord>>()
    const done = yield* Deferred.make<void>()
    const complete = () => [...ends].every(([partition, end]) => (seen.get(partition)?.size ?? 0) >= end)
    yield* Effect.scoped(
      Effect.gen(function* () {
        yield* log
          .consume({
            group: `state-test-reader-${randomUUID()}`,
            topic,
            onClaim: (claim) =>
              claim.records.pipe(
                Stream.runForEachArray((records) =>
                  Effect.sync(() => {
                    const end = ends.get(claim.partition) ?? 0
                    const partition = seen.get(claim.partition) ?? new Map<number, LogRecord>()
                    seen.set(claim.partition, partition)
                    for (const record of records) if (record.offset < end) partition.set(record.offset, record)
                    if (complete()) Deferred.doneUnsafe(done, Exit.void)
                  })
                )
              )
          })
          .pipe(Effect.orDie)
        yield* Deferred.await(done).pipe(
          Effect.timeoutOrElse({
            duration: timeout,
            orElse: () =>
              Effect.die(
                new Error(
                  `reading ${topic}: got ${[...seen].map(([p, m]) => `${p}:${m.size}`).join(",")} of ${[...ends].map(([p, e]) => `${p}:${e}`).join(",")}`
                )
              )
          })
        )
      })
    )
    return [...seen.entries()]
      .sort(([a], [b]) => a - b)
      .flatMap(([, records]) => [...records.values()].sort((a, b) => a.offset - b.offset))
  })

const decodeEnvelopeSync = Schema.decodeUnknownSync(Schema.fromJsonString(EventEnvelope))

export const envelopeOf = (record: LogRecord): EventEnvelope =>
  decodeEnvelopeSync(new TextDecoder().decode(record.value))

/** Envelopes grouped by record key, each group in log order (records in partition/offset order). */
export const byKey = (records: ReadonlyArray<LogRecord>) => {
  const groups = new Map<string, Array<{ readonly record: LogRecord; readonly envelope: EventEnvelope }>>()
  for (const record of records) {
    const list = groups.get(record.key) ?? []
    list.push({ record, envelope: envelopeOf(record) })
    groups.set(record.key, list)
  }
  return groups
}

/** Event ids that occur more than once, with their counts. */
export const duplicates = (records: ReadonlyArray<LogRecord>) => {
  const counts = new Map<string, number>()
  for (const record of records) {
    const id = envelopeOf(record).id
    counts.set(id, (counts.get(id) ?? 0) + 1)
  }
  return [...counts].filter(([, n]) => n > 1)
}

// --- the relay -----------------------------------------------------------------

export interface Running {
  /** Closes the scope the layer was built in (idempotent). */
  readonly stop: Effect.Effect<void>
}

/**
 * Builds `layer` in a scope of its own, which the caller can close (a node
 * stopping, or killed) and which the enclosing scope closes anyway.
 */
export const startIn = <E, RIn>(layer: Layer.Layer<never, E, RIn>) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    let closed = false
    const stop = Effect.suspend(() => {
      if (closed) return Effect.void
      closed = true
      return Scope.close(scope, Exit.void)
    })
    yield* Effect.addFinalizer(() => stop)
    yield* Layer.buildWithScope(layer, scope).pipe(Effect.orDie)
    const running: Running = { stop }
    return running
  })

/** The relay on the given SQL and log. */
export const relayLayer = (
  options: OutboxRelay.RelayOptions,
  context: Context.Context<SqlClient.SqlClient | PgClient.PgClient | EventLog>
) => OutboxRelay.layer(options).pipe(Layer.provide(Layer.succeedContext(context)))

// --- the outbox ------------------------------------------------------------------

export interface OutboxRow {
  readonly id: string
  readonly event_id: string
  readonly aggregate_id: string
  readonly type: string
  readonly published_at: Date | null
}

export const outboxRows = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  return yield* sql<OutboxRow>`SELECT id::text AS id, event_id, aggregate_id, type, published_at FROM outbox ORDER BY outbox.id`.pipe(
    Effect.orDie
  )
})

/** Fails (for `eventually`) while a row is unpublished. */
export const allPublished = Effect.gen(function* () {
  const rows = yield* outboxRows
  const pending = rows.filter((row) => row.published_at === null)
  if (pending.length > 0) {
    return yield* Effect.fail(
      `${pending.length} of ${rows.length} outbox rows unpublished (first id ${pending[0]!.id})`
    )
  }
  return rows
})

// --- polling -------------------------------------------------------------------

/**
 * Runs `check` until it succeeds; dies with its last failure once `timeout`
 * has passed. For waiting on asynchronous effects, never as an assertion of
 * timing by itself.
 */
export const eventually = <A, E, R>(
  what: string,
  check: Effect.Effect<A, E, R>,
  options: { readonly timeout?: Duration.Input; readonly interval?: Duration.Input } = {}
): Effect.Effect<A, never, R> =>
  Effect.gen(function* () {
    const timeout = Duration.toMillis(Duration.fromInputUnsafe(options.timeout ?? "20 seconds"))
    const interval = options.interval ?? "25 millis"
    const deadline = Date.now() + timeout
    while (true) {
      const exit = yield* Effect.exit(check)
      if (Exit.isSuccess(exit)) return exit.value
      if (Date.now() > deadline) {
        const last = Cause.squash(exit.cause)
        return yield* Effect.die(
          new Error(`${what}: not within ${timeout} ms; last: ${last instanceof Error ? last.message : String(last)}`)
        )
      }
      yield* Effect.sleep(interval)
    }
  })

// --- the cache -------------------------------------------------------------------

/** A cache that is down: every call fails as Redis.ts fails when it cannot reach Redis. */
export const downCache: Cache["Service"] = (() => {
  const down = Effect.fail(new CacheError({ message: "Redis GET failed: Connection is closed." }))
  return Cache.of({
    get: () => down,
    set: () => down,
    setIfAbsent: () => down,
    delete: () => down,
    take: () => down,
    ping: down
  })
})()

/**
 * A TCP proxy to `target` (host:port) on a loopback port of its own: `cut`
 * drops every connection and refuses new ones (the service is gone for the
 * client), `restore` listens again on the same port.
 */
export const tcpProxy = (target: string) =>
  Effect.acquireRelease(
    Effect.callback<{ port: number; cut: () => Promise<void>; restore: () => Promise<void>; close: () => void }>(
      (resume) => {
        const [host, port] = [
          target.slice(0, target.lastIndexOf(":")),
          Number(target.slice(target.lastIndexOf(":") + 1))
        ]
        const sockets = new Set<Socket>()
        const handle = (client: Socket) => {
          const upstream = createConnection({ host, port })
          sockets.add(client)
          sockets.add(upstream)
          const drop = () => {
            client.destroy()
            upstream.destroy()
            sockets.delete(client)
            sockets.delete(upstream)
          }
          client.on("error", drop).on("close", drop)
          upstream.on("error", drop).on("close", drop)
          client.pipe(upstream).pipe(client)
        }
        let server: Server = createServer(handle)
        server.listen(0, "127.0.0.1", () => {
          const address = server.address()
          const listening = typeof address === "object" && address !== null ? address.port : 0
          resume(
            Effect.succeed({
              port: listening,
              cut: () =>
                new Promise<void>((done) => {
                  for (const socket of sockets) socket.destroy()
                  sockets.clear()
                  server.close(() => done())
                }),
              restore: () =>
                new Promise<void>((done) => {
                  server = createServer(handle)
                  server.listen(listening, "127.0.0.1", () => done())
                }),
              close: () => {
                for (const socket of sockets) socket.destroy()
                server.close()
              }
            })
          )
        })
      }
    ),
    (proxy) => Effect.sync(() => proxy.close())
  )

/** The redis URL with its host:port replaced by `127.0.0.1:<port>`. */
export const redisVia = (port: number) => {
  const url = new URL(serviceUrl("REDIS_URL"))
  url.hostname = "127.0.0.1"
  url.port = String(port)
  return url.toString()
}

export const redisTarget = () => {
  const url = new URL(serviceUrl("REDIS_URL"))
  return `${url.hostname}:${url.port || "6379"}`
}
