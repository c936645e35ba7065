/**
 * The durable embedded log: the EventLog contract, plus what only a durable
 * log promises — records, topics and committed offsets survive a reopen; a
 * write interrupted by a crash (and a torn tail of its write-ahead log) is
 * dropped whole on the next open while everything committed is kept; a
 * second process on a data directory in use is refused.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Scope, Stream } from "effect"
import { spawnSync } from "node:child_process"
import { appendFileSync, existsSync, mkdtempSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as DataDirLock from "../../src/adapters/sqlite/DataDirLock.ts"
import * as SqliteEventLog from "../../src/adapters/sqlite/SqliteEventLog.ts"
import { EventLog, type LogRecord } from "../../src/ports/EventLog.ts"
import { repoRoot } from "../support/harmony.ts"
import { eventLogContract } from "./EventLog.contract.ts"

const freshDir = (prefix: string) => join(mkdtempSync(join(tmpdir(), prefix)), "log")

eventLogContract("SqliteEventLog", SqliteEventLog.layer({ directory: freshDir("harmony-log-") }))

const decoder = new TextDecoder()

/** Runs `use` with the log in `directory` open, and closes it after. */
const withLog = <A, E>(directory: string, use: (log: EventLog["Service"]) => Effect.Effect<A, E, Scope.Scope>) =>
  Effect.scoped(
    Layer.build(SqliteEventLog.layer({ directory, partitions: 1 })).pipe(
      Effect.flatMap((context) => use(Context.get(context, EventLog)))
    )
  )

/** Everything a fresh claim of `group` on the 1-partition `topic` gets until it has `count` records. */
const readAll = (log: EventLog["Service"], topic: string, group: string, count: number) =>
  Effect.gen(function* () {
    const seen: Array<LogRecord> = []
    const scope = yield* Scope.make()
    yield* log
      .consume({
        group,
        topic,
        onClaim: (claim) => Stream.runForEach(claim.records, (record) => Effect.sync(() => seen.push(record)))
      })
      .pipe(Scope.provide(scope))
    const deadline = Date.now() + 30_000
    while (seen.length < count && Date.now() < deadline) yield* Effect.sleep("20 millis")
    // A moment more: anything past `count` would show up as an extra record.
    yield* Effect.sleep("200 millis")
    yield* Scope.close(scope, Exit.void)
    return seen
  })

/** Opens the database in a separate node, writes a large transaction, and SIGKILLs itself before COMMIT. */
const crashMidTransaction = (directory: string) => {
  const script = `
    const { DatabaseSync } = require("node:sqlite")
    const db = new DatabaseSync(${JSON.stringify(join(directory, "events.db"))})
    db.exec("PRAGMA journal_mode = WAL"); db.exec("PRAGMA synchronous = FULL"); db.exec("PRAGMA cache_size = 16")
    db.exec("BEGIN IMMEDIATE")
    const insert = db.prepare("INSERT INTO records (topic, partition, offset, key, value, headers, timestamp) VALUES (?, 0, ?, 'k', ?, NULL, 0)")
    for (let i = 0; i < 3000; i++) insert.run("durable", 100 + i, Buffer.alloc(2000, 120))
    process.kill(process.pid, "SIGKILL")`
  const node = join(repoRoot, "node_modules", ".bin", "node")
  return spawnSync(existsSync(node) ? node : process.execPath, ["-e", script], { encoding: "utf8" })
}

describe("SqliteEventLog durability", () => {
  it.live(
    "records, topics and committed offsets survive a reopen; appends go on from the end",
    () =>
      Effect.gen(function* () {
        const directory = freshDir("harmony-log-reopen-")
        yield* withLog(directory, (log) =>
          Effect.gen(function* () {
            yield* log.createTopic("durable", 1)
            yield* log.produce(
              "durable",
              Array.from({ length: 10 }, (_, i) => ({ key: "k", value: `m${i}`, headers: { n: String(i) } }))
            )
            let claimed: { commit: (next: number) => Effect.Effect<void, unknown> } | undefined
            const scope = yield* Scope.make()
            yield* log
              .consume({
                group: "g",
                topic: "durable",
                onClaim: (claim) =>
                  Effect.sync(() => {
                    claimed = claim
                  }).pipe(Effect.andThen(Stream.runDrain(claim.records)))
              })
              .pipe(Scope.provide(scope))
            while (claimed === undefined) yield* Effect.sleep("20 millis")
            yield* Effect.sleep("200 millis")
            yield* claimed.commit(4)
            yield* Scope.close(scope, Exit.void)
          })
        )
        yield* withLog(directory, (log) =>
          Effect.gen(function* () {
            const positions = yield* log.produce("durable", [{ key: "k", value: "m10" }])
            assert.deepStrictEqual(positions, [{ partition: 0, offset: 10 }])
            const rest = yield* readAll(log, "durable", "g", 7)
            assert.deepStrictEqual(
              rest.map((r) => decoder.decode(r.value)),
              ["m4", "m5", "m6", "m7", "m8", "m9", "m10"]
            )
            assert.deepStrictEqual({ ...rest[0]!.headers }, { n: "4" })
            const all = yield* readAll(log, "durable", "fresh", 11)
            assert.deepStrictEqual(
              all.map((r) => r.offset),
              Array.from({ length: 11 }, (_, i) => i)
            )
          })
        )
      }),
    60_000
  )

  it.live(
    "a transaction interrupted by kill -9, and a torn tail of the write-ahead log, are dropped whole on open",
    () =>
      Effect.gen(function* () {
        const directory = freshDir("harmony-log-torn-")
        yield* withLog(directory, (log) =>
          log.produce(
            "durable",
            Array.from({ length: 100 }, (_, i) => ({ key: "k", value: `m${i}` }))
          )
        )
        const crashed = crashMidTransaction(directory)
        assert.strictEqual(crashed.signal, "SIGKILL", `the writer did not die as planned: ${crashed.stderr}`)
        const wal = join(directory, "events.db-wal")
        // The interrupted transaction spilled pages into the WAL, without a commit frame.
        assert.isTrue(statSync(wal).size > 1_000_000, `WAL holds ${statSync(wal).size} bytes`)
        // And a torn frame at its very end, as a power cut mid-write leaves it.
        appendFileSync(wal, Buffer.alloc(1500, 7))

        yield* withLog(directory, (log) =>
          Effect.gen(function* () {
            const seen = yield* readAll(log, "durable", "after-crash", 100)
            assert.deepStrictEqual(
              seen.map((r) => decoder.decode(r.value)),
              Array.from({ length: 100 }, (_, i) => `m${i}`)
            )
            const positions = yield* log.produce("durable", [{ key: "k", value: "next" }])
            assert.deepStrictEqual(positions, [{ partition: 0, offset: 100 }])
          })
        )
      }),
    60_000
  )

  it.live(
    "retention deletes only what every group has committed past, keeping the newest `retain` below it",
    () =>
      Effect.gen(function* () {
        const directory = freshDir("harmony-log-retain-")
        const layer = SqliteEventLog.layer({ directory, partitions: 1, retain: 5, retentionInterval: "50 millis" })
        yield* Effect.scoped(
          Effect.gen(function* () {
            const log = Context.get(yield* Layer.build(layer), EventLog)
            yield* log.produce(
              "kept",
              Array.from({ length: 30 }, (_, i) => ({ key: "k", value: `m${i}` }))
            )
            const commitAt = (group: string, next: number) =>
              Effect.gen(function* () {
                const scope = yield* Scope.make()
                let done = false
                yield* log
                  .consume({
                    group,
                    topic: "kept",
                    onClaim: (claim) =>
                      Stream.runForEach(claim.records, (record) =>
                        record.offset + 1 === next
                          ? claim.commit(next).pipe(
                              Effect.orDie,
                              Effect.andThen(
                                Effect.sync(() => {
                                  done = true
                                })
                              )
                            )
                          : Effect.void
                      )
                  })
                  .pipe(Scope.provide(scope))
                while (!done) yield* Effect.sleep("20 millis")
                yield* Scope.close(scope, Exit.void)
              })
            yield* commitAt("slow", 15)
            yield* commitAt("fast", 28)
            // The slowest group is at 15: below 15 - 5 = 10 goes, nothing else.
            const deadline = Date.now() + 30_000
            let first = 0
            while (first < 10 && Date.now() < deadline) {
              first = (yield* readAll(log, "kept", `fresh-${Date.now()}`, 1))[0]?.offset ?? 0
            }
            assert.strictEqual(first, 10)
            const rest = yield* readAll(log, "kept", "fresh-all", 20)
            assert.deepStrictEqual(
              rest.map((r) => r.offset),
              Array.from({ length: 20 }, (_, i) => i + 10)
            )
          })
        )
      }),
    60_000
  )

  it.live(
    "producers wait for the groups they are held to, and only for those",
    () =>
      Effect.gen(function* () {
        const held = new Set(["actors"])
        const layer = SqliteEventLog.layer({
          directory: freshDir("harmony-log-held-"),
          partitions: 1,
          maxUncommitted: { records: 5, groups: held }
        })
        yield* Effect.scoped(
          Effect.gen(function* () {
            const log = Context.get(yield* Layer.build(layer), EventLog)
            yield* log.createTopic("held", 1)
            const claims = new Map<string, { commit: (next: number) => Effect.Effect<void, unknown> }>()
            const join = (group: string) =>
              log.consume({
                group,
                topic: "held",
                onClaim: (claim) =>
                  Effect.sync(() => claims.set(group, claim)).pipe(Effect.andThen(Stream.runDrain(claim.records)))
              })
            const claimOf = (group: string) =>
              Effect.gen(function* () {
                while (!claims.has(group)) yield* Effect.sleep("20 millis")
                return claims.get(group)!
              })
            // A group not held to never commits: producing goes on past the limit.
            yield* join("indexer")
            yield* claimOf("indexer")
            for (let i = 0; i < 20; i++) yield* log.produce("held", [{ key: "k", value: `m${i}` }])
            // The held-to group is 20 behind: the next send waits until it commits.
            yield* join("actors")
            const actors = yield* claimOf("actors")
            const waiting = yield* Effect.forkChild(log.produce("held", [{ key: "k", value: "m20" }]))
            yield* Effect.sleep("300 millis")
            assert.isUndefined(waiting.pollUnsafe(), "a send waited for nothing while the actors were 20 behind")
            yield* actors.commit(20)
            const [position] = yield* Fiber.join(waiting)
            assert.deepStrictEqual(position, { partition: 0, offset: 20 })
          })
        )
      }),
    60_000
  )

  it.live("a second holder of a data directory's lock is refused; the lock goes with its holder", () =>
    Effect.gen(function* () {
      const dataDir = mkdtempSync(join(tmpdir(), "harmony-lock-"))
      const first = yield* Scope.make()
      yield* DataDirLock.acquire(dataDir).pipe(Scope.provide(first))
      const second = yield* Effect.flip(Effect.scoped(DataDirLock.acquire(dataDir)))
      assert.strictEqual(second._tag, "DataDirInUse")
      yield* Scope.close(first, Exit.void)
      yield* Effect.scoped(DataDirLock.acquire(dataDir))
    })
  )
})
