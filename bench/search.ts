/**
 * `npm run bench -- --scenario search`: full-text search over a large
 * history, on Postgres (cluster mode's SQL: a fresh database on the services'
 * DATABASE_URL, dropped afterwards) and/or PGlite (embedded mode's, in memory).
 *
 *   1. the state schema (src/state/migrations.ts) on an empty database;
 *   2. seeded: `users` users, `chats` chats, each user a member of
 *      `memberships` chats, and `messages` messages spread evenly over the
 *      chats, 6 to 20 words each drawn Zipf-like from a 20 000-word
 *      vocabulary (so some words match a large part of the history and most
 *      match little). The messages go in through the indexer's own write path
 *      (SearchIndex.add: multi-row INSERT … ON CONFLICT DO NOTHING, the
 *      tsvector computed by the generated column, the GIN index maintained as
 *      rows arrive), `batch` rows per statement;
 *   3. the index's size on disk (table + GIN + btree + TOAST);
 *   4. for `seconds`, `concurrency` workers each run SearchIndex.search (the
 *      very statement GET /v1/search runs, membership join included) for a
 *      random user and a query of one or two words drawn from the same
 *      distribution, a page of 20, one query after the other; queries/s and
 *      latency percentiles over all of them.
 *
 * The HTTP layer (auth, rate limit, JSON) is not in the figure: it is the
 * same for every call and measured by the other scenarios.
 */
import { PgClient } from "@effect/sql-pg"
import { Array as Arr, Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { performance } from "node:perf_hooks"
import * as Sql from "../src/adapters/sql/Sql.ts"
import type { ChatId, MessageId, UserId } from "../src/schema/Domain.ts"
import { migrate } from "../src/state/migrations.ts"
import { type IndexedMessage, SearchIndex } from "../src/state/SearchIndex.ts"

export interface SearchBenchOptions {
  readonly target: "postgres" | "pglite"
  /** The services' DATABASE_URL (postgres target): a database of the bench's own is created beside it. */
  readonly databaseUrl?: string | undefined
  readonly messages: number
  readonly chats: number
  readonly users: number
  readonly memberships: number
  readonly batch: number
  readonly seconds: number
  readonly concurrency: number
  readonly out: (line: string) => void
}

export interface SearchBenchResult {
  readonly target: string
  readonly messages: number
  readonly seedSeconds: number
  readonly indexBytes: number
  readonly ginBytes: number
  readonly queries: number
  /** Of `queries`, refused for matching too many messages (400) or cut off by the statement timeout (503). */
  readonly refused: number
  readonly queriesPerSecond: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly meanHits: number
  readonly loadAverage: string
}

/** A deterministic generator (mulberry32), so every run seeds the same history. */
const random = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const VocabularySize = 20_000
const vocabulary = Array.from({ length: VocabularySize }, (_, i) => `w${i.toString(36)}x`)
/** Zipf-like: rank r drawn with probability ∝ 1/r. */
const zipf = (next: () => number) => {
  const harmonic = Math.log(VocabularySize) + 0.5772
  return () => {
    const rank = Math.min(VocabularySize - 1, Math.floor(Math.exp(next() * harmonic - 0.5772)))
    return vocabulary[rank] as string
  }
}

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? 0 : (sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] as number)

const loadAverage = async () => {
  const { readFileSync } = await import("node:fs")
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")
}

/** Inserts rows into `table`, `size` rows a statement. */
const insertAll = (table: string, rows: ReadonlyArray<Record<string, unknown>>, size: number) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    for (let i = 0; i < rows.length; i += size) {
      const chunk = rows.slice(i, i + size)
      if (Arr.isArrayNonEmpty(chunk)) yield* sql`INSERT INTO ${sql(table)} ${sql.insert(chunk)}`
    }
  })

const seed = (options: SearchBenchOptions) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const index = yield* SearchIndex
    const next = random(42)
    const word = zipf(next)
    const userIds = Array.from({ length: options.users }, (_, i) => `bu${i}` as UserId)
    const chatIds = Array.from({ length: options.chats }, (_, i) => `bc${i}` as ChatId)
    yield* insertAll(
      "users",
      userIds.map((id) => ({ id, username: id, display_name: id })),
      1000
    )
    yield* insertAll(
      "chats",
      chatIds.map((id) => ({ id, kind: "group" })),
      1000
    )
    // User u is a member of chats u, u+1, … (mod chats): every chat has members.
    const members: Array<{ chat_id: string; user_id: string; role: string }> = []
    for (let u = 0; u < options.users; u++)
      for (let k = 0; k < options.memberships; k++)
        members.push({
          chat_id: chatIds[(u + k) % options.chats] as string,
          user_id: userIds[u] as string,
          role: "member"
        })
    yield* insertAll("memberships", members, 5000)

    const started = performance.now()
    const perChat = Math.ceil(options.messages / options.chats)
    let written = 0
    let batch: Array<IndexedMessage> = []
    for (let seq = 1; seq <= perChat && written < options.messages; seq++) {
      for (let c = 0; c < options.chats && written < options.messages; c++) {
        const length = 6 + Math.floor(next() * 15)
        const body = Array.from({ length }, word).join(" ")
        batch.push({
          chatId: chatIds[c] as ChatId,
          seq,
          id: `m${c}-${seq}` as MessageId,
          authorId: userIds[c % options.users] as UserId,
          createdAt: new Date(Date.UTC(2026, 0, 1) + written * 1000).toISOString(),
          body
        })
        written++
        if (batch.length === options.batch) {
          yield* index.add(batch)
          batch = []
        }
      }
      if (seq % 50 === 0)
        options.out(
          `search bench (${options.target}): ${written} messages indexed (${Math.round(written / ((performance.now() - started) / 1000))}/s)`
        )
    }
    yield* index.add(batch)
    yield* sql`ANALYZE search_messages`
    yield* sql`ANALYZE memberships`
    return { seedSeconds: (performance.now() - started) / 1000, userIds, word }
  })

const measure = (options: SearchBenchOptions) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const index = yield* SearchIndex
    const { seedSeconds, userIds, word } = yield* seed(options)
    const indexBytes = yield* index.sizeOnDisk
    const [gin] = yield* sql<{ bytes: string }>`SELECT pg_relation_size('search_messages_tsv') AS bytes`
    options.out(
      `search bench (${options.target}): seeded ${options.messages} messages in ${seedSeconds.toFixed(1)} s; index ${(indexBytes / 2 ** 20).toFixed(0)} MiB on disk`
    )
    const next = random(7)
    const latencies: Array<number> = []
    let hits = 0
    let refused = 0
    const deadline = performance.now() + options.seconds * 1000
    const worker = Effect.gen(function* () {
      while (performance.now() < deadline) {
        const userId = userIds[Math.floor(next() * userIds.length)] as UserId
        const q = next() < 0.5 ? word() : `${word()} ${word()}`
        const started = performance.now()
        // The search limits answer too: they count as queries, and are reported apart.
        const page = yield* index.search(userId, { q, limit: 20 }).pipe(
          Effect.catchIf(
            (error) => error._tag === "BadRequest" || error.message.startsWith("the search took longer"),
            () => Effect.succeed(undefined)
          )
        )
        latencies.push(performance.now() - started)
        if (page === undefined) refused++
        else hits += page.hits.length
      }
    })
    const started = performance.now()
    yield* Effect.all(
      Array.from({ length: options.concurrency }, () => worker),
      { concurrency: "unbounded", discard: true }
    )
    const elapsed = (performance.now() - started) / 1000
    latencies.sort((a, b) => a - b)
    return {
      target: options.target,
      messages: options.messages,
      seedSeconds,
      indexBytes,
      ginBytes: Number(gin?.bytes ?? 0),
      queries: latencies.length,
      refused,
      queriesPerSecond: latencies.length / elapsed,
      p50Ms: percentile(latencies, 50),
      p99Ms: percentile(latencies, 99),
      meanHits: hits / Math.max(1, latencies.length),
      loadAverage: yield* Effect.promise(loadAverage)
    } satisfies SearchBenchResult
  })

/** A fresh database beside `url`, dropped when the scope closes. */
const freshPostgres = (url: string, concurrency: number) =>
  Layer.unwrap(
    Effect.gen(function* () {
      const name = `harmony_bench_search_${Date.now().toString(36)}`
      const admin = PgClient.layer({ url: Redacted.make(url), maxConnections: 1 })
      const run = (statement: string) =>
        Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(statement)).pipe(Effect.provide(admin), Effect.orDie)
      yield* Effect.acquireRelease(run(`CREATE DATABASE ${name}`), () =>
        run(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      )
      const own = new URL(url)
      own.pathname = `/${name}`
      return PgClient.layer({ url: Redacted.make(own.toString()), maxConnections: concurrency + 1 })
    })
  )

export const runSearchBench = (options: SearchBenchOptions): Promise<SearchBenchResult> => {
  const database =
    options.target === "postgres"
      ? freshPostgres(options.databaseUrl ?? "postgres://harmony:harmony@127.0.0.1:5432/harmony", options.concurrency)
      : Sql.embedded({})
  return Effect.runPromise(
    Effect.gen(function* () {
      yield* migrate
      return yield* measure(options)
    }).pipe(Effect.provide(SearchIndex.layer.pipe(Layer.provideMerge(Layer.orDie(database)))), Effect.scoped)
  )
}

export const renderSearch = (results: ReadonlyArray<SearchBenchResult>, header: ReadonlyArray<string>) =>
  [
    ...header,
    "",
    "| SQL | messages | seed (indexer's write path) | index on disk (GIN alone) | queries (refused by the limits) | queries/s | p50 | p99 | hits/query | load average after |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ...results.map(
      (r) =>
        `| ${r.target} | ${r.messages.toLocaleString("en")} | ${r.seedSeconds.toFixed(0)} s (${Math.round(r.messages / r.seedSeconds).toLocaleString("en")}/s) | ${(r.indexBytes / 2 ** 20).toFixed(0)} MiB (${(r.ginBytes / 2 ** 20).toFixed(0)} MiB) | ${r.queries} (${r.refused}) | ${r.queriesPerSecond.toFixed(1)} | ${r.p50Ms.toFixed(1)} ms | ${r.p99Ms.toFixed(1)} ms | ${r.meanHits.toFixed(1)} | ${r.loadAverage} |`
    )
  ].join("\n")
