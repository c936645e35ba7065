/**
 * The outbox relay (src/relay/OutboxRelay.ts), embedded (PGlite, the
 * in-process log, polling) and real (a fresh Postgres database, Kafka,
 * `exclusive: true`: advisory lock, LISTEN/NOTIFY):
 *
 * - order: every committed event reaches `chat.events` exactly once, each
 *   aggregate's events in one partition in commit order; rolled-back events
 *   never; every outbox row ends published;
 * - a relay that dies between the log's acknowledgement and marking its rows
 *   (a decorated EventLog that really produces, then fails, dies or hangs)
 *   publishes nothing twice once it (or another node) takes over;
 * - two relays on two pools: one active; killing it mid-stream hands over to
 *   the other, still exactly once and in order;
 * - NOTIFY wakes a relay whose poll interval is 30 s.
 *
 * Kafka's `chat.events` is shared with every earlier run, so each real test
 * sees the log through `isolatedTopics` (a topic of its own).
 */
import { assert, describe, it } from "@effect/vitest"
import type { PgClient } from "@effect/sql-pg"
import { Context, Deferred, Duration, Effect, Fiber, Layer } from "effect"
import { SqlClient } from "effect/sql"
import { randomUUID } from "node:crypto"
import { EventLog, EventLogError, type LogRecord } from "../../src/ports/EventLog.ts"
import * as MemoryEventLog from "../../src/adapters/memory/MemoryEventLog.ts"
import { ChatId } from "../../src/schema/Domain.ts"
import type { StateEvent } from "../../src/schema/Events.ts"
import { Outbox } from "../../src/state/Outbox.ts"
import * as OutboxRelay from "../../src/relay/OutboxRelay.ts"
import { OutboxIdHeader, type RelayOptions } from "../../src/relay/OutboxRelay.ts"
import { EventsTopic } from "../../src/schema/Topics.ts"
import { DeadLetterTopic } from "../../src/schema/Topics.ts"
import {
  allPublished,
  byKey,
  duplicates,
  embeddedSql,
  envelopeOf,
  eventually,
  freshDatabaseUrl,
  isolatedTopics,
  kafkaLog,
  LogBook,
  logInto,
  outboxRows,
  type OutboxRow,
  type ProduceCall,
  postgresAt,
  readTopic,
  relayLayer,
  startIn,
  withAfterProduce
} from "./support.ts"

// --- workload ------------------------------------------------------------------

/**
 * Appends `perAggregate` events to each aggregate, in transactions of one to
 * three events; the aggregates run concurrently, each one's transactions one
 * after another (as Chats serialises a chat's changes with a row lock), so
 * an aggregate's commit order is its `chat.renamed` names 0, 1, 2, ... Every
 * `rollbackEvery`-th transaction appends a `rolled-back` event and then fails.
 */
const appendWorkload = (options: {
  readonly aggregates: ReadonlyArray<string>
  readonly perAggregate: number
  readonly rollbackEvery?: number
  readonly pause?: Duration.Input
}) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const outbox = yield* Outbox
    let transactions = 0
    yield* Effect.forEach(
      options.aggregates,
      (aggregate, index) =>
        Effect.gen(function* () {
          const chatId = ChatId.make(aggregate)
          let next = 0
          while (next < options.perAggregate) {
            const size = Math.min(1 + ((next + index) % 3), options.perAggregate - next)
            const events: Array<StateEvent> = Array.from({ length: size }, (_, i) => ({
              _tag: "chat.renamed",
              chatId,
              name: String(next + i)
            }))
            if (options.rollbackEvery !== undefined && ++transactions % options.rollbackEvery === 0) {
              const rolledBack = sql.withTransaction(
                outbox
                  .append([{ _tag: "chat.renamed", chatId, name: "rolled-back" }])
                  .pipe(Effect.andThen(Effect.fail("rollback" as const)))
              )
              yield* rolledBack.pipe(Effect.ignore)
            }
            yield* sql.withTransaction(outbox.append(events)).pipe(Effect.orDie)
            next += size
            if (options.pause !== undefined) yield* Effect.sleep(options.pause)
          }
        }),
      { concurrency: "unbounded", discard: true }
    )
  })

const aggregatesOf = (count: number) => {
  const run = randomUUID().slice(0, 8)
  return Array.from({ length: count }, (_, i) => `chat-${run}-${i}`)
}

/**
 * What the topic must hold for the outbox: each row's event exactly once
 * (with its row id in the header), nothing else; per aggregate one
 * partition, the names 0..n-1 in offset order.
 */
const checkTopic = (
  records: ReadonlyArray<LogRecord>,
  rows: ReadonlyArray<OutboxRow>,
  expected: { readonly aggregates: ReadonlyArray<string>; readonly perAggregate: number }
) => {
  assert.deepStrictEqual(duplicates(records), [], "event ids published more than once")
  const rowByEvent = new Map(rows.map((row) => [row.event_id, row]))
  const published = new Set<string>()
  for (const record of records) {
    const envelope = envelopeOf(record)
    const row = rowByEvent.get(envelope.id)
    assert.isDefined(row, `record ${record.partition}/${record.offset} (${envelope.id}) is no outbox row`)
    assert.strictEqual(record.headers[OutboxIdHeader], row!.id, `outbox id header of ${envelope.id}`)
    assert.strictEqual(record.key, row!.aggregate_id, `key of ${envelope.id}`)
    assert.strictEqual(envelope.aggregateId, row!.aggregate_id)
    published.add(envelope.id)
  }
  const missing = rows.filter((row) => !published.has(row.event_id))
  assert.deepStrictEqual(
    missing.map((row) => `${row.id} ${row.aggregate_id}`),
    [],
    "outbox rows whose event is not in the topic"
  )
  const groups = byKey(records)
  for (const aggregate of expected.aggregates) {
    const list = groups.get(aggregate) ?? []
    const partitions = new Set(list.map((entry) => entry.record.partition))
    assert.isAtMost(partitions.size, 1, `${aggregate} spread over partitions ${[...partitions]}`)
    const names = list.map((entry) => (entry.envelope.payload as { name?: string }).name)
    assert.deepStrictEqual(
      names,
      Array.from({ length: expected.perAggregate }, (_, i) => String(i)),
      `${aggregate}: events not in commit order (or missing, or rolled back ones published)`
    )
  }
  assert.strictEqual(records.length, rows.length, "records in the topic vs outbox rows")
}

const withBook = <A, E, R>(body: (book: LogBook) => Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    const book = new LogBook()
    return body(book).pipe(
      logInto(book),
      Effect.onError(() => Effect.sync(() => console.error(`relay logs (last lines):\n${book.text()}`)))
    )
  })

const sqlContext = Effect.context<SqlClient.SqlClient | PgClient.PgClient>()

// --- embedded --------------------------------------------------------------------

const embedded = Outbox.layer.pipe(Layer.provideMerge(embeddedSql))
const embeddedRelay: RelayOptions = { exclusive: false, pollInterval: Duration.millis(10), batchSize: 16 }

describe("outbox relay, embedded (PGlite, in-process log)", () => {
  it.live(
    "publishes each committed event exactly once, per aggregate in commit order; rolled-back events never",
    () =>
      withBook(() =>
        Effect.gen(function* () {
          const log = MemoryEventLog.make()
          const context = Context.add(yield* sqlContext, EventLog, log)
          yield* startIn(relayLayer(embeddedRelay, context))
          const aggregates = aggregatesOf(6)
          yield* appendWorkload({ aggregates, perAggregate: 40, rollbackEvery: 7 })
          const rows = yield* eventually("every outbox row published", allPublished)
          assert.strictEqual(rows.length, 6 * 40)
          checkTopic(yield* readTopic(log, EventsTopic), rows, { aggregates, perAggregate: 40 })
        }).pipe(Effect.scoped, Effect.provide(embedded))
      ),
    60_000
  )

  it.live(
    "a relay that fails between the log's acknowledgement and the mark publishes nothing twice",
    () =>
      withBook((book) =>
        Effect.gen(function* () {
          const memory = MemoryEventLog.make()
          // The third batch is in the log, then the relay's turn fails before marking it.
          const { service: log, calls } = withAfterProduce(memory, (call) =>
            call.topic === EventsTopic && call.call === 2
              ? Effect.fail(new EventLogError({ message: "relay crashed after the log acknowledged" }))
              : Effect.void
          )
          const aggregates = aggregatesOf(4)
          // Rows first, so the batches are full and the failure falls on rows in the middle.
          yield* appendWorkload({ aggregates, perAggregate: 20 })
          yield* startIn(relayLayer(embeddedRelay, Context.add(yield* sqlContext, EventLog, log)))
          const rows = yield* eventually("every outbox row published", allPublished)
          assert.isAbove(calls.length, 2, "the fault was reached")
          checkTopic(yield* readTopic(memory, EventsTopic), rows, { aggregates, perAggregate: 20 })
          assert.isAtLeast(book.count(/published but not marked/), 1, "the relay reconciled with the tail")
        }).pipe(Effect.scoped, Effect.provide(embedded))
      ),
    60_000
  )

  it.live(
    "an outbox row no consumer could decode goes to the dead letters with its reason; the rows around it are published",
    () =>
      withBook(() =>
        Effect.gen(function* () {
          const sql = yield* SqlClient.SqlClient
          const outbox = yield* Outbox
          const log = MemoryEventLog.make()
          const [aggregate] = aggregatesOf(1)
          const chatId = ChatId.make(aggregate!)
          const rename = (name: string) =>
            sql.withTransaction(outbox.append([{ _tag: "chat.renamed", chatId, name }])).pipe(Effect.orDie)
          yield* rename("0")
          // An event of a shape this version does not know (written by a newer node, say).
          yield* sql`INSERT INTO outbox (event_id, aggregate_id, type, version, payload)
            VALUES (${randomUUID()}, ${aggregate!}, 'chat.archived', 2, ${JSON.stringify({ _tag: "chat.archived", chatId })}::jsonb)`.pipe(
            Effect.orDie
          )
          yield* rename("1")
          yield* startIn(relayLayer(embeddedRelay, Context.add(yield* sqlContext, EventLog, log)))
          const rows = yield* eventually("every outbox row published or dead-lettered", allPublished)
          assert.strictEqual(rows.length, 3)
          const records = yield* readTopic(log, EventsTopic)
          assert.deepStrictEqual(
            records.map((record) => (envelopeOf(record).payload as { name?: string }).name),
            ["0", "1"]
          )
          const dead = yield* readTopic(log, DeadLetterTopic)
          assert.strictEqual(dead.length, 1)
          assert.strictEqual(dead[0]!.headers[OutboxIdHeader], rows[1]!.id)
          assert.notStrictEqual(dead[0]!.headers["harmony-dlq-reason"] ?? "", "")
        }).pipe(Effect.scoped, Effect.provide(embedded))
      ),
    60_000
  )

  // Dying (a defect) instead of failing between acknowledgement and mark.
  // FAILS: OutboxRelay retries a turn with Effect.retry, which retries typed
  // failures only; a defect ends the relay's fiber for good (after logging
  // "outbox relay interrupted by a failure; retrying"), so nothing after it is
  // ever published by this node — and in cluster mode its reserved connection
  // goes back to the pool still holding the advisory lock, so no other node
  // takes over either. (Any defect inside a turn does it: a throwing log
  // adapter, encodeEnvelope's sync encode, JSON.parse of a text payload.)
  it.live(
    "a relay that dies (a defect) between the log's acknowledgement and the mark recovers, publishing nothing twice",
    () =>
      withBook(() =>
        Effect.gen(function* () {
          const memory = MemoryEventLog.make()
          const { service: log } = withAfterProduce(memory, (call) =>
            call.topic === EventsTopic && call.call === 1
              ? Effect.die(new Error("relay died after the log acknowledged"))
              : Effect.void
          )
          const aggregates = aggregatesOf(3)
          yield* appendWorkload({ aggregates, perAggregate: 20 })
          yield* startIn(relayLayer(embeddedRelay, Context.add(yield* sqlContext, EventLog, log)))
          const rows = yield* eventually("every outbox row published", allPublished, { timeout: "6 seconds" })
          checkTopic(yield* readTopic(memory, EventsTopic), rows, { aggregates, perAggregate: 20 })
        }).pipe(Effect.scoped, Effect.provide(embedded))
      ),
    60_000
  )
})

// --- real: Postgres + Kafka ---------------------------------------------------------

const exclusiveRelay: RelayOptions = { exclusive: true, pollInterval: Duration.seconds(1), batchSize: 25 }

/** A fresh database with an appender pool (Outbox, SqlClient, PgClient), migrated. */
const freshSetup = Effect.gen(function* () {
  const url = yield* freshDatabaseUrl
  const context = yield* Layer.build(Outbox.layer.pipe(Layer.provideMerge(postgresAt(url, { migrate: true }))))
  return { url, context }
})

/** A node's own pool on the database at `url`. */
const poolAt = (url: string) => Layer.build(postgresAt(url, { maxConnections: 4 }))

/**
 * A relay node: its own pool on the database at `url` and its own Kafka
 * client (topics suffixed `topicSuffix`) seen through `withAfterProduce`;
 * closing its scope is the node dying (connections closed, lock released).
 */
const relayNode = (
  url: string,
  clientId: string,
  topicSuffix: string,
  after: Parameters<typeof withAfterProduce>[1]
) => {
  const calls: Array<ProduceCall> = []
  const log = Layer.effect(
    EventLog,
    Effect.gen(function* () {
      const kafkaService = yield* EventLog
      return withAfterProduce(isolatedTopics(kafkaService, topicSuffix), after, calls).service
    })
  ).pipe(Layer.provide(kafkaLog(clientId)))
  const layer = OutboxRelay.layer(exclusiveRelay).pipe(
    Layer.provide(Layer.mergeAll(postgresAt(url, { maxConnections: 4 }), log))
  )
  return { layer, calls }
}

const advisoryLocks = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql<{ n: number }>`
    SELECT count(*)::int AS n FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`.pipe(
    Effect.orDie
  )
  return rows[0]!.n
})

describe("outbox relay, real (Postgres, Kafka, exclusive)", () => {
  const kafka = kafkaLog("harmony-state-relay")

  it.live(
    "publishes each committed event exactly once, per aggregate in commit order",
    () =>
      withBook(() =>
        Effect.gen(function* () {
          const kafkaLogService = Context.get(yield* Layer.build(kafka), EventLog)
          const log = isolatedTopics(kafkaLogService, randomUUID())
          const { url, context } = yield* freshSetup
          const relayPool = yield* poolAt(url)
          yield* startIn(relayLayer(exclusiveRelay, Context.add(relayPool, EventLog, log)))
          const aggregates = aggregatesOf(8)
          yield* appendWorkload({ aggregates, perAggregate: 30, rollbackEvery: 5 }).pipe(Effect.provideContext(context))
          const rows = yield* eventually("every outbox row published", allPublished).pipe(
            Effect.provideContext(context)
          )
          assert.strictEqual(rows.length, 8 * 30)
          checkTopic(yield* readTopic(log, EventsTopic), rows, { aggregates, perAggregate: 30 })
        })
      ),
    90_000
  )

  it.live(
    "a relay that fails between the log's acknowledgement and the mark takes its turn again and publishes nothing twice",
    () =>
      withBook((book) =>
        Effect.gen(function* () {
          const kafkaLogService = Context.get(yield* Layer.build(kafka), EventLog)
          const log = isolatedTopics(kafkaLogService, randomUUID())
          const { service: faulty, calls } = withAfterProduce(log, (call) =>
            call.topic === EventsTopic && call.call === 1
              ? Effect.fail(new EventLogError({ message: "relay crashed after the log acknowledged" }))
              : Effect.void
          )
          const { url, context } = yield* freshSetup
          const aggregates = aggregatesOf(4)
          yield* appendWorkload({ aggregates, perAggregate: 25 }).pipe(Effect.provideContext(context))
          yield* startIn(relayLayer(exclusiveRelay, Context.add(yield* poolAt(url), EventLog, faulty)))
          const rows = yield* eventually("every outbox row published", allPublished, { timeout: "30 seconds" }).pipe(
            Effect.provideContext(context)
          )
          assert.isAbove(calls.length, 1, "the fault was reached")
          checkTopic(yield* readTopic(log, EventsTopic), rows, { aggregates, perAggregate: 25 })
          assert.isAtLeast(book.count(/published but not marked/), 1, "the relay reconciled with the tail")
        })
      ),
    90_000
  )

  it.live(
    "two relays on two nodes: one is active; killing it between publish and mark hands over exactly once, in order",
    () =>
      withBook((book) =>
        Effect.gen(function* () {
          const topicSuffix = randomUUID()
          const reader = isolatedTopics(Context.get(yield* Layer.build(kafka), EventLog), topicSuffix)
          const { url, context } = yield* freshSetup

          // Node A's 4th batch is acknowledged, then A hangs there until it is killed.
          const hung = yield* Deferred.make<ReadonlyArray<string>>()
          const a = relayNode(url, `a-${topicSuffix}`, topicSuffix, (call) =>
            call.topic === EventsTopic && call.call === 3
              ? Deferred.succeed(
                  hung,
                  call.records.map((record) => record.headers?.[OutboxIdHeader] ?? "?")
                ).pipe(Effect.andThen(Effect.never))
              : Effect.void
          )
          const b = relayNode(url, `b-${topicSuffix}`, topicSuffix, () => Effect.void)
          const nodeA = yield* startIn(a.layer)

          const aggregates = aggregatesOf(6)
          const perAggregate = 40
          const workload = yield* appendWorkload({ aggregates, perAggregate, pause: "15 millis" }).pipe(
            Effect.provideContext(context),
            Effect.forkChild
          )
          yield* eventually(
            "node A publishes",
            Effect.suspend(() => (a.calls.length > 0 ? Effect.void : Effect.fail("nothing yet")))
          )
          yield* startIn(b.layer)

          const inFlight = yield* Deferred.await(hung).pipe(
            Effect.timeoutOrElse({
              duration: "30 seconds",
              orElse: () => Effect.die(new Error("node A never reached its 4th batch"))
            })
          )
          assert.strictEqual(yield* advisoryLocks.pipe(Effect.provideContext(context)), 1, "one relay holds the lock")
          assert.strictEqual(b.calls.length, 0, "node B published while A was active")
          const rowsAtKill = yield* outboxRows.pipe(Effect.provideContext(context))
          const unmarked = new Set(rowsAtKill.filter((row) => row.published_at === null).map((row) => row.id))
          assert.isTrue(
            inFlight.every((id) => unmarked.has(id)),
            "A's last batch is in the log but not marked"
          )

          // Kill node A: its relay is interrupted mid-turn, its pool closes (and the lock's session with it).
          yield* nodeA.stop
          const aCallsAtKill = a.calls.length
          yield* Fiber.join(workload)
          const rows = yield* eventually("every outbox row published", allPublished, { timeout: "40 seconds" }).pipe(
            Effect.provideContext(context)
          )
          assert.strictEqual(a.calls.length, aCallsAtKill, "node A published after it was killed")
          assert.isAbove(b.calls.length, 0, "node B took over")
          const bIds = new Set(
            b.calls.flatMap((call) => call.records.map((record) => record.headers?.[OutboxIdHeader]))
          )
          assert.isTrue(
            inFlight.every((id) => !bIds.has(id)),
            "node B published A's acknowledged but unmarked batch again"
          )
          assert.isAtLeast(book.count(/published but not marked/), 1, "node B reconciled with the tail")
          checkTopic(yield* readTopic(reader, EventsTopic), rows, { aggregates, perAggregate })
        })
      ),
    120_000
  )

  // Node A's relay dies (a defect right after the log acknowledged a batch)
  // while node A itself lives on (its pool, its HTTP server); node B stands
  // by. FAILS: the defect is not retried (see the embedded test), and the
  // relay's reserved connection goes back to A's pool still holding the
  // session-level advisory lock (OutboxRelay never unlocks; it counts on the
  // connection dying with the process), so B's pg_try_advisory_lock keeps
  // failing: no node publishes until that pooled connection happens to be
  // closed (idle timeout, if nothing else uses it).
  it.live(
    "when the active relay dies but its node lives on, another node takes over",
    () =>
      withBook(() =>
        Effect.gen(function* () {
          const topicSuffix = randomUUID()
          const reader = isolatedTopics(Context.get(yield* Layer.build(kafka), EventLog), topicSuffix)
          const { url, context } = yield* freshSetup
          const a = relayNode(url, `a-${topicSuffix}`, topicSuffix, (call) =>
            call.topic === EventsTopic && call.call === 0
              ? Effect.die(new Error("relay died after the log acknowledged"))
              : Effect.void
          )
          const b = relayNode(url, `b-${topicSuffix}`, topicSuffix, () => Effect.void)
          const aggregates = aggregatesOf(2)
          yield* appendWorkload({ aggregates, perAggregate: 10 }).pipe(Effect.provideContext(context))
          yield* startIn(a.layer)
          yield* eventually(
            "node A publishes",
            Effect.suspend(() => (a.calls.length > 0 ? Effect.void : Effect.fail("nothing yet")))
          )
          yield* startIn(b.layer)
          yield* appendWorkload({ aggregates: aggregatesOf(2), perAggregate: 5 }).pipe(Effect.provideContext(context))
          const rows = yield* eventually("every outbox row published", allPublished, { timeout: "12 seconds" }).pipe(
            Effect.provideContext(context)
          )
          assert.deepStrictEqual(duplicates(yield* readTopic(reader, EventsTopic)), [])
          assert.isAbove(rows.length, 0)
        })
      ),
    60_000
  )

  it.live(
    "NOTIFY wakes a relay whose poll interval is 30 s: an appended event is published within about a second",
    () =>
      withBook(() =>
        Effect.gen(function* () {
          const log = isolatedTopics(Context.get(yield* Layer.build(kafka), EventLog), randomUUID())
          yield* log.createTopic(EventsTopic, 8).pipe(Effect.orDie)
          const { url, context } = yield* freshSetup
          const slow: RelayOptions = { exclusive: true, pollInterval: Duration.seconds(30), batchSize: 100 }
          yield* startIn(relayLayer(slow, Context.add(yield* poolAt(url), EventLog, log)))
          const outbox = Context.get(context, Outbox)
          const sql = Context.get(context, SqlClient.SqlClient)
          const append = (name: string) =>
            sql
              .withTransaction(
                outbox.append([{ _tag: "chat.renamed", chatId: ChatId.make(`notify-${randomUUID()}`), name }])
              )
              .pipe(Effect.orDie)
          // The first may be published by the relay's first drain; after it the relay waits on its wakeups.
          yield* append("warm-up")
          yield* eventually("the warm-up event published", allPublished, { timeout: "20 seconds" }).pipe(
            Effect.provideContext(context)
          )
          for (const name of ["one", "two", "three"]) {
            const started = Date.now()
            yield* append(name)
            yield* eventually(`event ${name} published`, allPublished, {
              timeout: "5 seconds",
              interval: "10 millis"
            }).pipe(Effect.provideContext(context))
            const took = Date.now() - started
            assert.isBelow(took, 1_500, `event ${name} took ${took} ms (the poll interval is 30 s)`)
          }
        })
      ),
    90_000
  )

  // A transaction that took its outbox id before another one but commits
  // after it: the relay publishes the later id, dies before marking it, and
  // the earlier transaction commits meanwhile. FAILS: on taking over the
  // relay marks every unpublished row up to the highest outbox id in the
  // topic's tail (OutboxRelay.reconcile: `id <= highest`), so the earlier
  // row is marked published without ever having been published — its event
  // is lost (no cache invalidation, no member_removed, no store cleanup).
  // Ids are not assigned in commit order, so "highest id in the tail" says
  // nothing about lower ids. (The same holds for a produce that wrote some
  // partitions of a batch and failed: the tail's maximum covers partitions
  // that were never written.)
  it.live(
    "a row committed late below a published-but-unmarked id is still published after a takeover",
    () =>
      withBook(() =>
        Effect.gen(function* () {
          const { url, context } = yield* freshSetup
          const outbox = Context.get(context, Outbox)
          const sql = Context.get(context, SqlClient.SqlClient)
          const memory = MemoryEventLog.make()
          const gate = yield* Deferred.make<void>()
          const { service: log } = withAfterProduce(memory, (call) =>
            call.topic === EventsTopic && call.call === 0
              ? Deferred.await(gate).pipe(
                  Effect.andThen(
                    Effect.fail(new EventLogError({ message: "relay crashed after the log acknowledged" }))
                  )
                )
              : Effect.void
          )
          const early = ChatId.make(`early-${randomUUID()}`)
          const late = ChatId.make(`late-${randomUUID()}`)

          // T1 takes the lower id and stays open.
          const appended = yield* Deferred.make<void>()
          const commit = yield* Deferred.make<void>()
          const t1 = yield* sql
            .withTransaction(
              outbox
                .append([{ _tag: "member.removed", chatId: early, userId: "u-early" as never }])
                .pipe(Effect.andThen(Deferred.succeed(appended, undefined)), Effect.andThen(Deferred.await(commit)))
            )
            .pipe(Effect.orDie, Effect.forkChild)
          yield* Deferred.await(appended)
          // T2 takes the higher id and commits.
          yield* sql
            .withTransaction(outbox.append([{ _tag: "member.removed", chatId: late, userId: "u-late" as never }]))
            .pipe(Effect.orDie)

          yield* startIn(relayLayer(exclusiveRelay, Context.add(yield* poolAt(url), EventLog, log)))
          // The relay publishes T2's row (T1's is not visible yet) and is about to fail before marking it.
          yield* eventually(
            "T2's event in the log",
            Effect.flatMap(memory.tail(EventsTopic), (tail) => (tail.length > 0 ? Effect.void : Effect.fail("empty")))
          )
          yield* Deferred.succeed(commit, undefined)
          yield* Fiber.join(t1)
          yield* Deferred.succeed(gate, undefined)

          const rows = yield* eventually("every outbox row published", allPublished).pipe(
            Effect.provideContext(context)
          )
          // Marked; but in the log?
          const inLog = new Set((yield* readTopic(memory, EventsTopic)).map((record) => envelopeOf(record).id))
          const lost = rows.filter((row) => !inLog.has(row.event_id))
          assert.deepStrictEqual(
            lost.map((row) => `outbox row ${row.id} (${row.aggregate_id}) marked published but never published`),
            []
          )
        })
      ),
    60_000
  )
})
