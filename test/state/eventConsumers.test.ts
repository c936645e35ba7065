/**
 * The consumers of `chat.events` (src/relay/EventConsumers.ts) under
 * redelivery, property-based: the real consumers (cache invalidator, gateway
 * signals, store cleaner) on the in-process log, the in-process cache and
 * pubsub, dynalite as the MessageStore and the real Chats/Membership on
 * PGlite.
 *
 * A generated scenario changes memberships through Chats (create, add, leave,
 * kick, delete), reads roles through Membership (cache-aside fills), lets
 * "concurrent readers" fill the cache late with an answer they read from
 * Postgres earlier (set-if-absent), publishes the outbox's events late and in
 * bursts (as the relay would), redelivers arbitrary earlier events again
 * (duplicates, and old events after newer ones: a relay that crashed before
 * marking, a consumer that crashed before committing), and produces records
 * that do not decode. After settling:
 *
 * (a) for every (chat, user) an event touched, or a reader read or filled,
 *     the cache holds exactly what Postgres answers;
 * (b) a deleted chat has no messages left in the store, a live one all of its;
 * (c) every undecodable record reached `chat.events.dlq` from each of the
 *     three groups, with its reason, and the consumers went on;
 * (d) redelivering every event once more changes none of that.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Arbitrary, Context, Duration, Effect, Layer, type Option, Schema, Stream } from "effect"
import type { Arbitrary as ArbitraryT } from "effect/Arbitrary"
import { SqlClient } from "effect/sql"
import { randomUUID } from "node:crypto"
import { Cache } from "../../src/ports/Cache.ts"
import * as Dynalite from "../../src/adapters/dynamo/Dynalite.ts"
import { EventLog, type LogRecord, type ProduceRecord } from "../../src/ports/EventLog.ts"
import * as Memory from "../../src/adapters/memory/Memory.ts"
import * as MemoryEventLog from "../../src/adapters/memory/MemoryEventLog.ts"
import { MessageStore } from "../../src/ports/MessageStore.ts"
import { PubSub } from "../../src/ports/PubSub.ts"
import { type ChatId, Message, MessageId, type Role, UserId } from "../../src/schema/Domain.ts"
import { EventEnvelope, StateEvent } from "../../src/schema/Events.ts"
import { Chats } from "../../src/state/Chats.ts"
import { Membership, MembershipTtl, roleKey } from "../../src/state/Membership.ts"
import { Outbox } from "../../src/state/Outbox.ts"
import { DeadLetterTopic } from "../../src/schema/Topics.ts"
import * as EventConsumers from "../../src/relay/EventConsumers.ts"
import { Fanout } from "../../src/messages/Fanout.ts"
import { OutboxIdHeader } from "../../src/relay/OutboxRelay.ts"
import { EventsTopic } from "../../src/schema/Topics.ts"
import { checkOptions, int } from "../property/generators.ts"
import { embeddedSql, LogBook, logInto, startIn } from "./support.ts"

const runs = (fallback: number) => Number(process.env.PROPERTY_RUNS ?? fallback)

// --- scenarios -------------------------------------------------------------------

type Op =
  | { readonly _tag: "Create"; readonly owner: number; readonly members: number }
  | { readonly _tag: "Add"; readonly chat: number; readonly user: number }
  | { readonly _tag: "Leave"; readonly chat: number; readonly user: number }
  | { readonly _tag: "Kick"; readonly chat: number; readonly user: number }
  | { readonly _tag: "Delete"; readonly chat: number }
  /** Membership.roleOf: a cache-aside read (fills on a miss). */
  | { readonly _tag: "Read"; readonly chat: number; readonly user: number }
  /** A concurrent reader reads Postgres now and fills the cache later (StaleFill). */
  | { readonly _tag: "Snapshot"; readonly chat: number; readonly user: number }
  | { readonly _tag: "StaleFill"; readonly pick: number }
  /** Publishes up to `count` pending outbox rows, in id order (as the relay does). */
  | { readonly _tag: "Publish"; readonly count: number }
  /** Produces an already published event again. */
  | { readonly _tag: "Redeliver"; readonly pick: number }
  | { readonly _tag: "Garbage"; readonly kind: number }

const users = 4

const op: ArbitraryT<Op> = Arbitrary.map(
  Arbitrary.all({ kind: int(0, 21), a: int(0, 7), b: int(0, users - 1), n: int(0, 15) }),
  ({ kind, a, b, n }): Op => {
    if (kind <= 1) return { _tag: "Create", owner: b, members: n }
    if (kind <= 4) return { _tag: "Add", chat: a, user: b }
    if (kind <= 6) return { _tag: "Leave", chat: a, user: b }
    if (kind <= 7) return { _tag: "Kick", chat: a, user: b }
    if (kind <= 8) return { _tag: "Delete", chat: a }
    if (kind <= 11) return { _tag: "Read", chat: a, user: b }
    if (kind <= 12) return { _tag: "Snapshot", chat: a, user: b }
    if (kind <= 13) return { _tag: "StaleFill", pick: n }
    if (kind <= 16) return { _tag: "Publish", count: 1 + (n % 4) }
    if (kind <= 20) return { _tag: "Redeliver", pick: n + a * 16 }
    return { _tag: "Garbage", kind: n % 4 }
  }
)

const scenario = Arbitrary.array(op, { minLength: 4, maxLength: 36 })

// --- helpers ---------------------------------------------------------------------

const encodeEnvelope = Schema.encodeSync(Schema.fromJsonString(EventEnvelope))
const decodeEnvelope = Schema.decodeUnknownSync(Schema.fromJsonString(EventEnvelope))
const decodeEvent = Schema.decodeUnknownSync(StateEvent)

const encodeRole = (role: Option.Option<Role>) => (role._tag === "Some" ? role.value : "-")

interface OutboxRow {
  readonly id: string
  readonly event_id: string
  readonly aggregate_id: string
  readonly type: string
  readonly version: number
  readonly payload: unknown
  readonly created_at: Date
}

/** The record the relay makes of an outbox row. */
const recordOf = (row: OutboxRow): ProduceRecord => ({
  key: row.aggregate_id,
  value: encodeEnvelope({
    id: row.event_id,
    type: row.type,
    version: row.version,
    timestamp: new Date(row.created_at).toISOString(),
    aggregateId: row.aggregate_id,
    payload: decodeEvent(typeof row.payload === "string" ? JSON.parse(row.payload) : row.payload)
  }),
  headers: { [OutboxIdHeader]: String(row.id) }
})

const eventOf = (record: ProduceRecord) =>
  decodeEnvelope(typeof record.value === "string" ? record.value : new TextDecoder().decode(record.value)).payload

/** The (chat, user) pairs whose cached role the invalidator refreshes for an event. */
const refreshedBy = (event: StateEvent): Array<readonly [string, string]> => {
  switch (event._tag) {
    case "member.added":
    case "member.removed":
      return [[event.chatId, event.userId]]
    case "chat.owner_changed":
      return [[event.chatId, event.ownerId]]
    case "chat.deleted":
      return event.memberIds.map((userId) => [event.chatId, userId] as const)
    default:
      return []
  }
}

const garbageValue = (kind: number, id: string): string => {
  switch (kind) {
    case 0:
      return `{"id":"${id}", not json`
    case 1:
      return JSON.stringify({ hello: "world", id })
    case 2:
      return JSON.stringify({
        id,
        type: "chat.exploded",
        version: 1,
        timestamp: new Date().toISOString(),
        aggregateId: id,
        payload: { _tag: "chat.exploded", chatId: id }
      })
    default:
      return JSON.stringify({
        id,
        type: "member.added",
        version: 1,
        timestamp: new Date().toISOString(),
        aggregateId: id,
        payload: { _tag: "member.added", chatId: id }
      })
  }
}

const consumerGroups = ["cache-invalidator", "gateway-signals", "store-cleaner"]

// --- one run ---------------------------------------------------------------------

let runCounter = 0

const runScenario = (ops: ReadonlyArray<Op>, book: LogBook) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const realStore = yield* MessageStore
    const prefix = `ec${++runCounter}-${randomUUID().slice(0, 8)}`
    const userIds = Array.from({ length: users }, (_, i) => UserId.make(`${prefix}-u${i}`))
    for (const id of userIds) {
      yield* sql`INSERT INTO users (id, username, display_name) VALUES (${id}, ${id}, ${id})`.pipe(Effect.orDie)
    }
    const [{ last }] = yield* sql<{ last: string | null }>`SELECT max(id)::text AS last FROM outbox`.pipe(Effect.orDie)
    let lastRow = last ?? "0"

    // Per run: the log, the cache and pubsub, the state services on the shared SQL.
    const log = MemoryEventLog.make({ drainTimeout: Duration.seconds(5) })
    const state = yield* Layer.build(
      Membership.layer.pipe(
        Layer.provideMerge(Chats.layer),
        Layer.provideMerge(Outbox.layer),
        Layer.provideMerge(Memory.layer)
      )
    )
    const chats = Context.get(state, Chats)
    const membership = Context.get(state, Membership)
    const cache = Context.get(state, Cache)
    const pubsub = Context.get(state, PubSub)

    // The consumers see Membership and the store through counters of what they completed.
    const counts = { refresh: 0, deleteChat: 0 }
    const countingMembership = Membership.of({
      ...membership,
      refresh: (chatId, userId) =>
        membership.refresh(chatId, userId).pipe(Effect.tap(() => Effect.sync(() => counts.refresh++)))
    })
    const countingStore = MessageStore.of({
      ...realStore,
      deleteChat: (chatId) =>
        realStore.deleteChat(chatId).pipe(Effect.tap(() => Effect.sync(() => counts.deleteChat++)))
    })

    // Everything that reaches the dead-letter topic.
    const dead: Array<LogRecord> = []
    yield* log
      .consume({
        group: "test-dlq-reader",
        topic: DeadLetterTopic,
        onClaim: (claim) =>
          claim.records.pipe(Stream.runForEachArray((records) => Effect.sync(() => dead.push(...records))))
      })
      .pipe(Effect.orDie)

    yield* startIn(
      EventConsumers.layer.pipe(
        Layer.provide(
          Layer.mergeAll(
            Layer.succeed(EventLog, log),
            Layer.succeed(Membership, countingMembership),
            Layer.succeed(MessageStore, countingStore),
            Layer.succeed(PubSub, pubsub),
            Layer.succeed(Chats, chats),
            Fanout.layer.pipe(Layer.provide(Layer.succeed(PubSub, pubsub)))
          )
        )
      )
    )

    // --- the model's bookkeeping
    const created: Array<ChatId> = []
    const deleted = new Set<ChatId>()
    const produced: Array<ProduceRecord> = []
    const published: Array<ProduceRecord> = []
    const garbage: Array<string> = []
    const looked = new Set<string>()
    const snapshots: Array<{ readonly chatId: ChatId; readonly userId: UserId; readonly value: string }> = []
    const journal: Array<string> = []

    const produce = (record: ProduceRecord) =>
      log.produce(EventsTopic, [record]).pipe(
        Effect.orDie,
        Effect.tap(() => Effect.sync(() => produced.push(record)))
      )

    const publish = (limit: number) =>
      Effect.gen(function* () {
        const rows = yield* sql<OutboxRow>`
          SELECT id::text AS id, event_id, aggregate_id, type, version, payload, created_at FROM outbox
          WHERE id > ${lastRow}::bigint ORDER BY outbox.id LIMIT ${limit}`.pipe(Effect.orDie)
        // (ORDER BY the column: by the text alias "100" comes before "85", and rows were skipped.)
        for (const row of rows) {
          const record = recordOf(row)
          yield* produce(record)
          published.push(record)
          lastRow = row.id
          journal.push(`  published ${row.id} ${row.type} ${JSON.stringify(eventOf(record))}`)
        }
      })

    const chatAt = (index: number) => (created.length === 0 ? undefined : created[index % created.length])
    const ownerOf = (chatId: ChatId) =>
      Effect.map(
        sql<{ owner_id: UserId | null }>`SELECT owner_id FROM chats WHERE id = ${chatId}`.pipe(Effect.orDie),
        (rows) => rows[0]?.owner_id ?? undefined
      )
    const messagesOf = (chatId: ChatId) =>
      [1, 2].map(
        (seq) =>
          new Message({
            chatId,
            seq,
            id: MessageId.make(`${chatId}-${seq}`),
            authorId: userIds[0]!,
            body: `message ${seq}`,
            clientMsgId: `${chatId}-${seq}`,
            createdAt: new Date().toISOString()
          })
      )

    const apply = (op: Op) =>
      Effect.gen(function* () {
        journal.push(JSON.stringify(op))
        switch (op._tag) {
          case "Create": {
            const owner = userIds[op.owner]!
            const members = userIds.filter((_, i) => i !== op.owner && (op.members & (1 << i)) !== 0)
            const chat = yield* chats.create(owner, { kind: "group", name: "c", memberIds: members }).pipe(Effect.orDie)
            yield* realStore.putBatch(messagesOf(chat.id)).pipe(Effect.orDie)
            created.push(chat.id)
            return
          }
          case "Add": {
            const chatId = chatAt(op.chat)
            const owner = chatId === undefined ? undefined : yield* ownerOf(chatId)
            if (chatId === undefined || owner === undefined) return
            yield* chats.addMembers(owner, chatId, [userIds[op.user]!]).pipe(Effect.ignore)
            return
          }
          case "Leave": {
            const chatId = chatAt(op.chat)
            if (chatId === undefined) return
            yield* chats.removeMember(userIds[op.user]!, chatId, userIds[op.user]!).pipe(Effect.ignore)
            return
          }
          case "Kick": {
            const chatId = chatAt(op.chat)
            const owner = chatId === undefined ? undefined : yield* ownerOf(chatId)
            if (chatId === undefined || owner === undefined) return
            yield* chats.removeMember(owner, chatId, userIds[op.user]!).pipe(Effect.ignore)
            return
          }
          case "Delete": {
            const chatId = chatAt(op.chat)
            const owner = chatId === undefined ? undefined : yield* ownerOf(chatId)
            if (chatId === undefined || owner === undefined) return
            yield* chats.delete(owner, chatId).pipe(Effect.orDie)
            return
          }
          case "Read": {
            const chatId = chatAt(op.chat)
            if (chatId === undefined) return
            looked.add(roleKey(chatId, userIds[op.user]!))
            yield* membership.roleOf(chatId, userIds[op.user]!).pipe(Effect.orDie)
            return
          }
          case "Snapshot": {
            const chatId = chatAt(op.chat)
            if (chatId === undefined) return
            const role = yield* chats.roleOf(chatId, userIds[op.user]!).pipe(Effect.orDie)
            snapshots.push({ chatId, userId: userIds[op.user]!, value: encodeRole(role) })
            return
          }
          case "StaleFill": {
            if (snapshots.length === 0) return
            const [snapshot] = snapshots.splice(op.pick % snapshots.length, 1)
            const key = roleKey(snapshot!.chatId, snapshot!.userId)
            looked.add(key)
            const won = yield* cache.setIfAbsent(key, snapshot!.value, MembershipTtl).pipe(Effect.orDie)
            journal.push(`  fill ${key} = ${snapshot!.value}: ${won ? "won" : "lost"}`)
            return
          }
          case "Publish":
            return yield* publish(op.count)
          case "Redeliver": {
            if (published.length === 0) return
            const record = published[op.pick % published.length]!
            journal.push(`  redelivered ${JSON.stringify(eventOf(record))}`)
            return yield* produce(record)
          }
          case "Garbage": {
            const id = `${prefix}-garbage-${garbage.length}`
            garbage.push(id)
            return yield* log
              .produce(EventsTopic, [{ key: id, value: garbageValue(op.kind, id), headers: { "test-garbage": id } }])
              .pipe(Effect.orDie)
          }
        }
      })

    // Two chats to start with, then the generated operations; then the rest of the outbox.
    yield* apply({ _tag: "Create", owner: 0, members: 0b0110 })
    yield* apply({ _tag: "Create", owner: 1, members: 0b1100 })
    for (const o of ops) yield* apply(o)
    yield* publish(1_000_000)

    /** Refreshes and deletions the consumers owe for everything produced so far. */
    const owed = () => {
      const events = produced.map(eventOf)
      return {
        refresh: events.reduce((sum, event) => sum + refreshedBy(event).length, 0),
        deleteChat: events.filter((event) => event._tag === "chat.deleted").length
      }
    }

    const keys = () => {
      const all = new Set(looked)
      for (const record of published)
        for (const [chatId, userId] of refreshedBy(eventOf(record))) all.add(roleKey(chatId, userId))
      return [...all].sort()
    }

    /** What is wrong now; empty when the invariants hold. */
    const violations = Effect.gen(function* () {
      const problems: Array<string> = []
      const want = owed()
      if (counts.refresh < want.refresh) problems.push(`refreshes ${counts.refresh} of ${want.refresh}`)
      if (counts.deleteChat < want.deleteChat) problems.push(`deleteChat ${counts.deleteChat} of ${want.deleteChat}`)
      for (const key of keys()) {
        const [, , chatId, userId] = key.split(":")
        const truth = encodeRole(yield* chats.roleOf(chatId as ChatId, userId as UserId).pipe(Effect.orDie))
        const cached = yield* cache.get(key).pipe(Effect.orDie)
        if (cached !== truth) problems.push(`cache ${key} = ${cached}, Postgres says ${truth}`)
      }
      for (const chatId of created) {
        const gone =
          (yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM chats WHERE id = ${chatId}`.pipe(Effect.orDie))[0]!
            .n === 0
        if (gone) deleted.add(chatId)
        const stored = (yield* realStore.latest(chatId, 10).pipe(Effect.orDie)).length
        if (gone && stored > 0) problems.push(`deleted chat ${chatId} still has ${stored} messages`)
        if (!gone && stored !== 2) problems.push(`live chat ${chatId} has ${stored} of its 2 messages`)
      }
      for (const id of garbage) {
        const copies = dead.filter((record) => record.headers["test-garbage"] === id)
        for (const group of consumerGroups) {
          const copy = copies.find((record) => record.headers["harmony-dlq-group"] === group)
          if (copy === undefined) problems.push(`${id}: not dead-lettered by ${group}`)
          else if ((copy.headers["harmony-dlq-reason"] ?? "") === "") problems.push(`${id}: no reason from ${group}`)
        }
      }
      return problems
    })

    const settle = (what: string) =>
      Effect.gen(function* () {
        const deadline = Date.now() + 20_000
        while (true) {
          const problems = yield* violations
          if (problems.length === 0) return
          if (Date.now() > deadline) {
            return assert.fail(
              `${what}:\n${problems.join("\n")}\n\njournal:\n${journal.join("\n")}\n\nlogs:\n${book.text(30)}`
            )
          }
          yield* Effect.sleep("20 millis")
        }
      })

    yield* settle("after the scenario")
    const before = new Map<string, string | undefined>()
    for (const key of keys()) before.set(key, yield* cache.get(key).pipe(Effect.orDie))

    // Everything again, in the order it was first published.
    for (const record of [...published]) yield* produce(record)
    yield* settle("after redelivering every event")
    for (const key of keys()) {
      const now = yield* cache.get(key).pipe(Effect.orDie)
      assert.strictEqual(now, before.get(key), `redelivery changed ${key}`)
    }
    return { published: published.length, produced: produced.length, garbage: garbage.length, deleted: deleted.size }
  }).pipe(Effect.scoped)

// --- the suite -------------------------------------------------------------------

const infra = Layer.mergeAll(
  embeddedSql,
  Dynalite.embeddedLayer({ table: `state-consumers-${Date.now().toString(36)}` })
)

describe("event consumers under redelivery", () => {
  layer(infra, { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.effect.prop(
      "the cache ends at Postgres's answer, deleted chats lose their messages, garbage is dead-lettered — and redelivery changes nothing",
      { ops: scenario },
      ({ ops }) =>
        Effect.suspend(() => {
          const book = new LogBook()
          return runScenario(ops, book).pipe(
            Effect.tap((stats) => (process.env.PROPERTY_VERBOSE ? Effect.sync(() => console.log(stats)) : Effect.void)),
            logInto(book)
          )
        }),
      { timeout: 120_000, arbitrary: checkOptions(runs(15), 36, 10) }
    )

    it.effect("an undecodable record goes to the dead-letter topic with its reason; the next event is handled", () =>
      Effect.gen(function* () {
        const book = new LogBook()
        const stats = yield* runScenario(
          [
            { _tag: "Garbage", kind: 0 },
            { _tag: "Garbage", kind: 2 },
            { _tag: "Leave", chat: 0, user: 1 },
            { _tag: "Delete", chat: 1 },
            { _tag: "Garbage", kind: 3 },
            { _tag: "Read", chat: 0, user: 1 }
          ],
          book
        ).pipe(logInto(book))
        assert.strictEqual(stats.garbage, 3)
        assert.strictEqual(stats.deleted, 1)
        assert.isAtLeast(book.count(/undecodable event/), 9, "each group logged each record")
      })
    )
  })
})
