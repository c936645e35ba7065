/**
 * No stale authorization (Membership's cache-aside in front of Postgres, kept
 * fresh by the cache invalidator): the whole state path runs — Chats writes
 * the outbox, the relay publishes, the consumers refresh the cache — and
 * Membership.roleOf must stop answering a removed member's role once the
 * event is consumed, even when a concurrent reader read the old answer from
 * Postgres just before and fills the cache with it afterwards. With the cache
 * down, roleOf answers from Postgres.
 *
 * Embedded (PGlite, the in-process log and cache), cluster (a fresh Postgres
 * database, Kafka with topics of its own, Redis), and a Redis that goes away
 * and comes back (through a TCP proxy the test cuts).
 */
import { assert, describe, layer } from "@effect/vitest"
import type { PgClient } from "@effect/sql-pg"
import { Context, Duration, Effect, Layer, Option } from "effect"
import { SqlClient } from "effect/sql"
import { randomUUID } from "node:crypto"
import { Cache } from "../../src/ports/Cache.ts"
import * as Dynalite from "../../src/adapters/dynamo/Dynalite.ts"
import { EventLog } from "../../src/ports/EventLog.ts"
import * as Memory from "../../src/adapters/memory/Memory.ts"
import * as MemoryEventLog from "../../src/adapters/memory/MemoryEventLog.ts"
import { MessageStore } from "../../src/ports/MessageStore.ts"
import type { PubSub } from "../../src/ports/PubSub.ts"
import * as Redis from "../../src/adapters/redis/Redis.ts"
import { type ChatId, UserId } from "../../src/schema/Domain.ts"
import { Chats } from "../../src/state/Chats.ts"
import { Membership, MembershipTtl, roleKey } from "../../src/state/Membership.ts"
import { Outbox } from "../../src/state/Outbox.ts"
import * as EventConsumers from "../../src/relay/EventConsumers.ts"
import { Fanout } from "../../src/messages/Fanout.ts"
import type { RelayOptions } from "../../src/relay/OutboxRelay.ts"
import { serviceUrl } from "../support/services.ts"
import {
  downCache,
  embeddedSql,
  eventually,
  freshDatabaseUrl,
  isolatedTopics,
  kafkaLog,
  LogBook,
  logInto,
  postgresAt,
  redisTarget,
  redisVia,
  relayLayer,
  startIn,
  tcpProxy
} from "./support.ts"

const insertUsers = (count: number) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const prefix = `auth-${randomUUID().slice(0, 8)}`
    const ids = Array.from({ length: count }, (_, i) => UserId.make(`${prefix}-u${i}`))
    for (const id of ids) {
      yield* sql`INSERT INTO users (id, username, display_name) VALUES (${id}, ${id}, ${id})`.pipe(Effect.orDie)
    }
    return ids
  })

/**
 * The state path on the SQL in context: Chats, Outbox and Membership over
 * `cacheLayer`, the relay on `log`, and the consumers of `chat.events`.
 */
const statePath = <E>(options: {
  readonly cacheLayer: Layer.Layer<Cache | PubSub, E>
  readonly log: EventLog["Service"]
  readonly relay: RelayOptions
}) =>
  Effect.gen(function* () {
    const state = yield* Layer.build(
      Membership.layer.pipe(
        Layer.provideMerge(Chats.layer),
        Layer.provideMerge(Outbox.layer),
        Layer.provideMerge(options.cacheLayer)
      )
    ).pipe(Effect.orDie)
    const sqlContext = yield* Effect.context<SqlClient.SqlClient | PgClient.PgClient>()
    yield* startIn(relayLayer(options.relay, Context.add(sqlContext, EventLog, options.log)))
    const store = yield* MessageStore
    yield* startIn(
      EventConsumers.layer.pipe(
        Layer.provide(
          Layer.mergeAll(
            Layer.succeed(EventLog, options.log),
            Layer.succeed(MessageStore, store),
            Layer.succeedContext(state),
            Fanout.layer.pipe(Layer.provide(Layer.succeedContext(state)))
          )
        )
      )
    )
    return {
      chats: Context.get(state, Chats),
      membership: Context.get(state, Membership),
      cache: Context.get(state, Cache)
    }
  })

type Path = Effect.Success<ReturnType<typeof statePath>>

const isNone = (role: Option.Option<unknown>) =>
  Option.isNone(role) ? Effect.void : Effect.fail(`still ${role.value}`)
const isSome = (role: Option.Option<unknown>) => (Option.isSome(role) ? Effect.void : Effect.fail("still none"))

/**
 * The scenario: a member's role is cached; a reader reads it from Postgres;
 * the member is removed; once the invalidator has run roleOf answers none,
 * and the reader's late fill of the old answer does not win. Then the
 * opposite direction (a cached "not a member" after an add) and a deletion.
 */
const noStaleAuthorization = (path: Path, timeout: Duration.Input) =>
  Effect.gen(function* () {
    const { chats, membership, cache } = path
    const [owner, member, newcomer] = yield* insertUsers(3)
    const chat = yield* chats.create(owner!, { kind: "group", name: "auth", memberIds: [member!] }).pipe(Effect.orDie)
    const chatId = chat.id as ChatId
    const key = roleKey(chatId, member!)

    // Warm: the member's role is in the cache.
    assert.deepStrictEqual(yield* membership.roleOf(chatId, member!).pipe(Effect.orDie), Option.some("member"))
    assert.strictEqual(yield* cache.get(key).pipe(Effect.orDie), "member", "the role was cached")
    // A concurrent reader missed the cache and read Postgres just before the removal.
    const staleRead = yield* chats.roleOf(chatId, member!).pipe(Effect.orDie)
    assert.deepStrictEqual(staleRead, Option.some("member"))

    yield* chats.removeMember(owner!, chatId, member!).pipe(Effect.orDie)
    yield* eventually(
      "roleOf answers none after the removal",
      Effect.flatMap(membership.roleOf(chatId, member!), isNone),
      {
        timeout
      }
    )
    // The reader now fills the cache with what it read: it must not win.
    const won = yield* cache.setIfAbsent(key, "member", MembershipTtl).pipe(Effect.orDie)
    assert.isFalse(won, "a stale fill overwrote the invalidator's answer")
    assert.deepStrictEqual(yield* membership.roleOf(chatId, member!).pipe(Effect.orDie), Option.none())
    assert.strictEqual(yield* cache.get(key).pipe(Effect.orDie), "-")

    // The other direction: "not a member" is cached, then the user is added.
    assert.deepStrictEqual(yield* membership.roleOf(chatId, newcomer!).pipe(Effect.orDie), Option.none())
    assert.strictEqual(
      yield* cache.get(roleKey(chatId, newcomer!)).pipe(Effect.orDie),
      "-",
      "the negative answer was cached"
    )
    yield* chats.addMembers(owner!, chatId, [newcomer!]).pipe(Effect.orDie)
    yield* eventually(
      "roleOf answers member after the add",
      Effect.flatMap(membership.roleOf(chatId, newcomer!), isSome),
      {
        timeout
      }
    )

    // A deleted chat: every cached role of its members ends with it.
    assert.deepStrictEqual(yield* membership.roleOf(chatId, owner!).pipe(Effect.orDie), Option.some("owner"))
    yield* chats.delete(owner!, chatId).pipe(Effect.orDie)
    for (const user of [owner!, newcomer!]) {
      yield* eventually(
        `roleOf ${user} answers none after the deletion`,
        Effect.flatMap(membership.roleOf(chatId, user), isNone),
        {
          timeout
        }
      )
    }
  })

const withBook = <A, E, R>(body: (book: LogBook) => Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    const book = new LogBook()
    return body(book).pipe(
      logInto(book),
      Effect.onError(() => Effect.sync(() => console.error(`logs (last lines):\n${book.text()}`)))
    )
  })

const embeddedRelay: RelayOptions = { exclusive: false, pollInterval: Duration.millis(20), batchSize: 100 }
const store = Dynalite.embeddedLayer({ table: `state-auth-${Date.now().toString(36)}` })

describe("no stale authorization", () => {
  layer(Layer.mergeAll(embeddedSql, store), { excludeTestServices: true, timeout: "60 seconds" })("embedded", (it) => {
    it.effect("once the event is consumed roleOf answers the change; a stale fill loses", () =>
      withBook(() =>
        Effect.gen(function* () {
          const path = yield* statePath({ cacheLayer: Memory.layer, log: MemoryEventLog.make(), relay: embeddedRelay })
          yield* noStaleAuthorization(path, "15 seconds")
        })
      )
    )

    it.effect("with the cache down, roleOf answers from Postgres", () =>
      Effect.gen(function* () {
        const state = yield* Layer.build(
          Membership.layer.pipe(
            Layer.provideMerge(Chats.layer),
            Layer.provideMerge(Outbox.layer),
            Layer.provide(Layer.succeed(Cache, downCache))
          )
        )
        const chats = Context.get(state, Chats)
        const membership = Context.get(state, Membership)
        const [owner, member, stranger] = yield* insertUsers(3)
        const chat = yield* chats.create(owner!, { kind: "group", memberIds: [member!] }).pipe(Effect.orDie)
        assert.deepStrictEqual(yield* membership.roleOf(chat.id, owner!).pipe(Effect.orDie), Option.some("owner"))
        assert.deepStrictEqual(yield* membership.roleOf(chat.id, member!).pipe(Effect.orDie), Option.some("member"))
        assert.deepStrictEqual(yield* membership.roleOf(chat.id, stranger!).pipe(Effect.orDie), Option.none())
        yield* chats.removeMember(owner!, chat.id, member!).pipe(Effect.orDie)
        // No relay, no invalidator: only Postgres can answer, and does at once.
        assert.deepStrictEqual(yield* membership.roleOf(chat.id, member!).pipe(Effect.orDie), Option.none())
      }).pipe(logInto(new LogBook()))
    )

    it.effect("the owner leaves: the heir's cached role is written with the answer, before any event", () =>
      Effect.gen(function* () {
        // No relay, no invalidator: only what the removal answers refreshes the cache.
        const state = yield* Layer.build(
          Membership.layer.pipe(
            Layer.provideMerge(Chats.layer),
            Layer.provideMerge(Outbox.layer),
            Layer.provideMerge(Memory.layer)
          )
        )
        const chats = Context.get(state, Chats)
        const membership = Context.get(state, Membership)
        const [owner, heir] = yield* insertUsers(2)
        const chat = yield* chats.create(owner!, { kind: "group", memberIds: [heir!] }).pipe(Effect.orDie)
        assert.deepStrictEqual(yield* membership.roleOf(chat.id, heir!).pipe(Effect.orDie), Option.some("member"))
        // What the HTTP handler does with the answer (src/http/Handlers.ts, removeMember).
        const changed = yield* chats.removeMember(owner!, chat.id, owner!).pipe(Effect.orDie)
        assert.deepStrictEqual([...changed].sort(), [owner!, heir!].sort())
        yield* membership.changed(chat.id, changed)
        assert.deepStrictEqual(yield* membership.roleOf(chat.id, heir!).pipe(Effect.orDie), Option.some("owner"))
        assert.deepStrictEqual(yield* membership.roleOf(chat.id, owner!).pipe(Effect.orDie), Option.none())
      }).pipe(logInto(new LogBook()))
    )

    it.effect(
      "Redis goes away and comes back: roleOf falls back to Postgres meanwhile, and ends at the fresh answer",
      () =>
        withBook((book) =>
          Effect.gen(function* () {
            const proxy = yield* tcpProxy(redisTarget())
            const path = yield* statePath({
              cacheLayer: Redis.layer({ url: redisVia(proxy.port) }),
              log: MemoryEventLog.make(),
              relay: embeddedRelay
            })
            const { chats, membership, cache } = path
            const [owner, member] = yield* insertUsers(2)
            const chat = yield* chats.create(owner!, { kind: "group", memberIds: [member!] }).pipe(Effect.orDie)
            const key = roleKey(chat.id, member!)
            assert.deepStrictEqual(yield* membership.roleOf(chat.id, member!).pipe(Effect.orDie), Option.some("member"))
            assert.strictEqual(yield* cache.get(key).pipe(Effect.orDie), "member")

            yield* Effect.promise(() => proxy.cut())
            const down = yield* Effect.flip(cache.get(key))
            assert.strictEqual(down._tag, "CacheError", "Redis is away")
            yield* chats.removeMember(owner!, chat.id, member!).pipe(Effect.orDie)
            const started = Date.now()
            assert.deepStrictEqual(
              yield* membership.roleOf(chat.id, member!).pipe(Effect.orDie),
              Option.none(),
              "with Redis away roleOf must answer from Postgres"
            )
            assert.isBelow(Date.now() - started, 6_000, "the fallback must not wait out long timeouts")
            assert.isAtLeast(book.count(/membership lookups: the cache is unavailable; reading Postgres/), 1)

            yield* Effect.promise(() => proxy.restore())
            // The invalidator retried while Redis was away; once back, the cache holds the fresh answer.
            yield* eventually(
              "the cache holds the fresh answer once Redis is back",
              Effect.flatMap(cache.get(key), (value) =>
                value === "-" ? Effect.void : Effect.fail(`cache says ${value}`)
              ),
              { timeout: "25 seconds", interval: "100 millis" }
            )
            assert.deepStrictEqual(yield* membership.roleOf(chat.id, member!).pipe(Effect.orDie), Option.none())
          })
        ),
      60_000
    )
  })

  layer(store, { excludeTestServices: true, timeout: "60 seconds" })("cluster", (it) => {
    it.effect(
      "on Postgres, Kafka and Redis: once the event is consumed roleOf answers the change; a stale fill loses",
      () =>
        withBook(() =>
          Effect.gen(function* () {
            const url = yield* freshDatabaseUrl
            const sql = yield* Layer.build(postgresAt(url, { migrate: true }))
            const kafka = Context.get(yield* Layer.build(kafkaLog("harmony-state-auth")), EventLog)
            const path = yield* statePath({
              cacheLayer: Redis.layer({ url: serviceUrl("REDIS_URL") }),
              log: isolatedTopics(kafka, randomUUID()),
              relay: { exclusive: true, pollInterval: Duration.seconds(1), batchSize: 100 }
            }).pipe(Effect.provideContext(Context.merge(yield* Effect.context<MessageStore>(), sql)))
            yield* noStaleAuthorization(path, "30 seconds").pipe(Effect.provideContext(sql))
          })
        ),
      90_000
    )
  })
})
