/**
 * Embedded mode's durable EventLog: a LocalEventLog whose records and
 * committed offsets live in one SQLite database (node:sqlite) in WAL mode
 * with `synchronous=FULL`, so a transaction is on disk, fsynced, when its
 * COMMIT returns.
 *
 * Group commit: every write (appends, commits, new topics) queues for the
 * single writer fiber, which takes everything queued, writes it in one
 * transaction — one fsync — and only then answers each waiting caller. A
 * `produce` therefore answers once its records are durable, and concurrent
 * sends share the flush instead of paying one each. The transaction commits
 * on a thread of its own (SqliteWriter.ts), so the event loop goes on
 * serving sockets while the disk syncs; reads run on the event loop.
 *
 * Crashes: SQLite's WAL keeps a transaction only with its commit frame (and
 * checksums every frame), so a write torn by `kill -9` or a power cut is
 * dropped on the next open, whole, and everything committed before it is
 * kept: a partial record cannot be read back, and none was acknowledged.
 *
 * The newest records of each partition are also kept in memory once
 * written (`TailSize`): consumers that keep up — the actors and the search
 * indexer each read every record right after it is appended — are served
 * from there, and only one that fell behind reads from the database.
 */
import { Cause, Deferred, Duration, Effect, Exit, Fiber, Layer, Queue, Schedule, type Scope } from "effect"
import { existsSync, mkdirSync, statSync } from "node:fs"
import { join } from "node:path"
import { DatabaseSync, type StatementSync } from "node:sqlite"
import { EventLog, EventLogError, type LogRecord } from "../../ports/EventLog.ts"
import * as LocalEventLog from "../local/LocalEventLog.ts"
import * as SqliteWriter from "./SqliteWriter.ts"

export interface SqliteEventLogOptions extends LocalEventLog.LocalEventLogOptions {
  /** The directory of the log's database (created when missing). */
  readonly directory: string
  /**
   * Records of a partition kept below the commit of every group that has
   * committed on it (default 10,000): older ones are deleted, as Kafka's
   * retention would, so the file does not grow for ever.
   */
  readonly retain?: number | undefined
  /** How often retention runs (default 30 seconds). */
  readonly retentionInterval?: Duration.Input | undefined
}

type Job =
  | {
      readonly _tag: "Append"
      readonly topic: string
      readonly records: ReadonlyArray<LocalEventLog.Appended>
      readonly done: Deferred.Deferred<ReadonlyArray<number>, EventLogError>
    }
  | {
      readonly _tag: "Commit"
      readonly group: string
      readonly topic: string
      readonly partition: number
      readonly next: number
      readonly done: Deferred.Deferred<ReadonlyArray<number>, EventLogError>
    }
  | {
      readonly _tag: "CreateTopic"
      readonly topic: string
      readonly partitions: number
      readonly done: Deferred.Deferred<ReadonlyArray<number>, EventLogError>
    }

const schema = `
  CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key TEXT NOT NULL, value BLOB NOT NULL, headers TEXT, timestamp INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
  ) WITHOUT ROWID;
`

const insertSql =
  "INSERT INTO records (topic, partition, offset, key, value, headers, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?)"
const commitSql =
  "INSERT INTO offsets (grp, topic, partition, next) VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET next = excluded.next"
const createTopicSql = "INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)"
const trimSql = "DELETE FROM records WHERE topic = ? AND partition = ? AND offset < ?"

const partitionKey = (topic: string, partition: number) => `${topic}\u0000${partition}`

/** Records per partition kept in memory after they are written, for consumers that keep up. */
const TailSize = 512

const failure = (message: string) => (cause: unknown) => new EventLogError({ message, cause })

interface RecordRow {
  readonly offset: number
  readonly key: string
  readonly value: Uint8Array
  readonly headers: string | null
  readonly timestamp: number
}

/** Opens the database, creating it and its tables when missing. */
const open = (directory: string) =>
  Effect.try({
    try: () => {
      mkdirSync(directory, { recursive: true })
      const path = join(directory, "events.db")
      const wal = `${path}-wal`
      const unclean = existsSync(wal) && statSync(wal).size > 0
      const db = new DatabaseSync(path)
      db.exec("PRAGMA journal_mode = WAL")
      db.exec("PRAGMA synchronous = FULL")
      db.exec(schema)
      return { db, path, unclean }
    },
    catch: failure(`cannot open the event log in ${directory}`)
  })

export const make = Effect.fnUntraced(function* (
  options: SqliteEventLogOptions
): Effect.fn.Return<EventLog["Service"], EventLogError, Scope.Scope> {
  const { db, path, unclean } = yield* Effect.acquireRelease(open(options.directory), ({ db }) =>
    Effect.sync(() => db.close())
  )
  const retain = options.retain ?? 10_000

  const statements = {
    read: db.prepare(
      "SELECT offset, key, value, headers, timestamp FROM records WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?"
    ),
    committed: db.prepare("SELECT partition, next FROM offsets WHERE grp = ? AND topic = ?"),
    // Partitions every group of their topic has committed on, and how far the slowest one is.
    retainable: db.prepare(
      `SELECT o.topic, o.partition, MIN(o.next) AS floor FROM offsets o GROUP BY o.topic, o.partition
       HAVING COUNT(*) = (SELECT COUNT(DISTINCT g.grp) FROM offsets g WHERE g.topic = o.topic) AND MIN(o.next) > ?`
    )
  } satisfies Record<string, StatementSync>

  // What the database holds, read once: the writer keeps it current.
  const topics = new Map<string, number>()
  for (const row of db.prepare("SELECT name, partitions FROM topics").all()) {
    topics.set(String(row.name), Number(row.partitions))
  }
  const ends = new Map<string, number>()
  for (const row of db
    .prepare("SELECT topic, partition, MAX(offset) AS last FROM records GROUP BY topic, partition")
    .all()) {
    ends.set(partitionKey(String(row.topic), Number(row.partition)), Number(row.last) + 1)
  }
  const endOffset = (topic: string, partition: number) => ends.get(partitionKey(topic, partition)) ?? 0
  yield* Effect.logInfo(
    `event log ${path}: ${topics.size} topics, ${Array.from(ends.values()).reduce((a, b) => a + b, 0)} records appended so far`
  )
  if (unclean) {
    yield* Effect.logWarning(
      `event log ${path}: the last process did not close it; SQLite recovered its write-ahead log (committed writes kept, an interrupted one dropped whole — it was never acknowledged)`
    )
  }

  // Transactions commit on a thread of their own (SqliteWriter.ts): the
  // fsync that every ack waits for does not hold the event loop meanwhile.
  const sqliteWriter = yield* SqliteWriter.make(path)

  /** The statements of one job; answers its offsets, staging topic ends in `staged`. */
  const apply = (
    job: Job,
    steps: Array<SqliteWriter.Step>,
    staged: Map<string, number>,
    timestamp: number
  ): ReadonlyArray<number> => {
    switch (job._tag) {
      case "Append":
        return job.records.map((record) => {
          const key = partitionKey(job.topic, record.partition)
          const offset = staged.get(key) ?? ends.get(key) ?? 0
          const headers = Object.keys(record.headers).length === 0 ? null : JSON.stringify(record.headers)
          steps.push([insertSql, [job.topic, record.partition, offset, record.key, record.value, headers, timestamp]])
          staged.set(key, offset + 1)
          return offset
        })
      case "Commit":
        steps.push([commitSql, [job.group, job.topic, job.partition, job.next]])
        return []
      case "CreateTopic":
        steps.push([createTopicSql, [job.topic, job.partitions]])
        return []
    }
  }

  // The newest written records of each partition, oldest first with contiguous offsets.
  const tails = new Map<string, Array<LogRecord>>()
  const remember = (job: Extract<Job, { _tag: "Append" }>, offsets: ReadonlyArray<number>, timestamp: number) => {
    job.records.forEach((record, i) => {
      const key = partitionKey(job.topic, record.partition)
      let tail = tails.get(key)
      if (tail === undefined) {
        tail = []
        tails.set(key, tail)
      }
      const offset = offsets[i]!
      // Only contiguous offsets: a gap (never expected) starts the tail afresh.
      if (tail.length > 0 && tail[tail.length - 1]!.offset !== offset - 1) tail.length = 0
      tail.push({ ...record, topic: job.topic, offset, timestamp })
      if (tail.length >= 2 * TailSize) tail.splice(0, tail.length - TailSize)
    })
  }
  const fromTail = (topic: string, partition: number, from: number, max: number) => {
    const tail = tails.get(partitionKey(topic, partition))
    const first = tail?.[0]
    if (tail === undefined || first === undefined || from < first.offset) return undefined
    return tail.slice(from - first.offset, from - first.offset + max)
  }

  /** Writes the jobs in one transaction (one fsync), then answers every one of them. */
  const flush = (jobs: ReadonlyArray<Job>) =>
    Effect.gen(function* () {
      const staged = new Map<string, number>()
      const steps: Array<SqliteWriter.Step> = []
      const timestamp = Date.now()
      const results = jobs.map((job) => apply(job, steps, staged, timestamp))
      const exit = yield* Effect.exit(
        sqliteWriter
          .run(steps)
          .pipe(Effect.mapError(failure(`event log ${path}: writing ${jobs.length} requests failed`)))
      )
      if (Exit.isFailure(exit)) {
        yield* Effect.logError(`event log ${path}: a write failed; its senders get an error`, exit.cause)
        const failed = Exit.failCause(exit.cause)
        for (const job of jobs) Deferred.doneUnsafe(job.done, failed)
        return
      }
      for (const [key, end] of staged) ends.set(key, end)
      jobs.forEach((job, i) => {
        if (job._tag === "Append") remember(job, results[i]!, timestamp)
      })
      for (const job of jobs) {
        if (job._tag === "CreateTopic") topics.set(job.topic, job.partitions)
      }
      jobs.forEach((job, i) => {
        Deferred.doneUnsafe(job.done, Exit.succeed(results[i]!))
      })
    })

  const jobs = yield* Queue.unbounded<Job, Cause.Done>()
  const writer = yield* Queue.takeAll(jobs).pipe(
    Effect.flatMap(flush),
    Effect.forever,
    Effect.catchIf(Cause.isDone, () => Effect.void),
    Effect.forkScoped
  )
  // On close, what is queued is still written (the queue drains before it
  // ends), then the database closes; later writes fail instead of waiting.
  yield* Effect.addFinalizer(() => Queue.end(jobs).pipe(Effect.andThen(Fiber.join(writer))))

  const submit = <T extends Job>(make: (done: Deferred.Deferred<ReadonlyArray<number>, EventLogError>) => T) =>
    Effect.gen(function* () {
      const done = yield* Deferred.make<ReadonlyArray<number>, EventLogError>()
      if (!(yield* Queue.offer(jobs, make(done)))) {
        return yield* new EventLogError({ message: `event log ${path} is closed` })
      }
      return yield* Deferred.await(done)
    })

  // Retention: records every group has committed past, beyond the newest `retain`, go.
  const trim = Effect.try({
    try: () =>
      statements.retainable
        .all(retain)
        .map(
          (row): SqliteWriter.Step => [trimSql, [String(row.topic), Number(row.partition), Number(row.floor) - retain]]
        ),
    catch: failure(`event log ${path}: retention failed`)
  }).pipe(
    Effect.flatMap((steps) =>
      steps.length === 0
        ? Effect.void
        : sqliteWriter.run(steps).pipe(
            Effect.mapError(failure(`event log ${path}: retention failed`)),
            // What retention deleted is not read from memory either.
            Effect.andThen(
              Effect.sync(() => {
                for (const [, [topic, partition, below]] of steps) {
                  const tail = tails.get(partitionKey(String(topic), Number(partition)))
                  const first = tail?.[0]
                  if (tail !== undefined && first !== undefined && first.offset < Number(below))
                    tail.splice(0, Number(below) - first.offset)
                }
              })
            )
          )
    ),
    Effect.catchCause((cause) => Effect.logWarning("event log retention failed; retrying later", cause))
  )
  yield* trim.pipe(Effect.repeat(Schedule.spaced(options.retentionInterval ?? Duration.seconds(30))), Effect.forkScoped)

  const storage: LocalEventLog.LogStorage = {
    topics: () => topics,
    createTopic: (topic, partitions) =>
      Effect.asVoid(submit((done) => ({ _tag: "CreateTopic", topic, partitions, done }))),
    append: (topic, records) => submit((done) => ({ _tag: "Append", topic, records, done })),
    read: (topic, partition, from, max) =>
      fromTail(topic, partition, from, max) ??
      (statements.read.all(topic, partition, from, max) as unknown as ReadonlyArray<RecordRow>).map(
        (row): LogRecord => ({
          topic,
          partition,
          offset: Number(row.offset),
          key: row.key,
          value: row.value,
          headers: row.headers === null ? {} : JSON.parse(row.headers),
          timestamp: Number(row.timestamp)
        })
      ),
    endOffset,
    committed: (group, topic) =>
      new Map(statements.committed.all(group, topic).map((row) => [Number(row.partition), Number(row.next)])),
    commit: (group, topic, partition, next) =>
      Effect.asVoid(submit((done) => ({ _tag: "Commit", group, topic, partition, next, done })))
  }
  return LocalEventLog.make(storage, options)
})

/** The durable EventLog in `options.directory`, open for the layer's lifetime. */
export const layer = (options: SqliteEventLogOptions): Layer.Layer<EventLog, EventLogError> =>
  Layer.effect(EventLog, make(options))
