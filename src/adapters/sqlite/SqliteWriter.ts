/**
 * The writing connection of an embedded SQLite database, on a worker thread
 * of its own: each `run` is one transaction — its COMMIT, and so its fsync,
 * happens there. With `synchronous=FULL` a commit waits for the disk (a few
 * milliseconds, far more on a busy one); on the event loop that wait stalled
 * every socket of the node, and at a steady 1,000 sends/s the loop spent
 * most of its time in it. Reads stay on the event loop, on a connection of
 * their own: WAL lets them run beside the writer and see every committed
 * transaction.
 *
 * Every caller waits for its own transaction; they are run one after the
 * other, in the order they were asked for.
 */
import { Effect, Schema, type Scope } from "effect"
import { Worker } from "node:worker_threads"

export class SqliteWriteError extends Schema.TaggedError<SqliteWriteError>()("SqliteWriteError", {
  message: Schema.String
}) {}

/** A parameter SQLite binds: the worker receives a structured clone of it. */
export type Param = string | number | null | Uint8Array

/** One statement of a transaction and its parameters. */
export type Step = readonly [sql: string, params: ReadonlyArray<Param>]

export interface SqliteWriter {
  /** Runs the steps in one transaction (committed, fsynced) and answers each step's count of changed rows. */
  readonly run: (steps: ReadonlyArray<Step>) => Effect.Effect<ReadonlyArray<number>, SqliteWriteError>
}

// Plain CommonJS evaluated by the worker: it needs nothing but node:sqlite.
const workerSource = `
const { parentPort, workerData } = require("node:worker_threads")
const { DatabaseSync } = require("node:sqlite")
const db = new DatabaseSync(workerData.path, { timeout: 10000 })
db.exec("PRAGMA journal_mode = WAL")
db.exec("PRAGMA synchronous = FULL")
const prepared = new Map()
const prepare = (sql) => {
  let statement = prepared.get(sql)
  if (statement === undefined) prepared.set(sql, (statement = db.prepare(sql)))
  return statement
}
parentPort.on("message", (message) => {
  if (message.close) {
    db.close()
    parentPort.close()
    return
  }
  try {
    db.exec("BEGIN IMMEDIATE")
    const changes = message.steps.map(([sql, params]) => Number(prepare(sql).run(...params).changes))
    db.exec("COMMIT")
    parentPort.postMessage({ id: message.id, changes })
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK")
    parentPort.postMessage({ id: message.id, error: String(error && error.message ? error.message : error) })
  }
})
`

type Reply = { readonly id: number; readonly changes: Array<number> } | { readonly id: number; readonly error: string }

/** Starts the writer of the database at `path` (which must exist, in WAL mode); it closes with the scope. */
export const make = (path: string): Effect.Effect<SqliteWriter, never, Scope.Scope> =>
  Effect.gen(function* () {
    const waiting = new Map<number, (exit: Effect.Effect<ReadonlyArray<number>, SqliteWriteError>) => void>()
    let nextId = 0
    let broken: string | undefined
    const failAll = (reason: string) => {
      broken = reason
      for (const resume of waiting.values()) resume(Effect.fail(new SqliteWriteError({ message: reason })))
      waiting.clear()
    }
    const worker = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const worker = new Worker(workerSource, { eval: true, workerData: { path } })
        worker.on("message", (reply: Reply) => {
          const resume = waiting.get(reply.id)
          waiting.delete(reply.id)
          resume?.(
            "error" in reply
              ? Effect.fail(new SqliteWriteError({ message: `${path}: ${reply.error}` }))
              : Effect.succeed(reply.changes)
          )
        })
        worker.on("error", (error) => failAll(`${path}: the writer thread failed: ${error.message}`))
        worker.on("exit", () => failAll(`${path}: the writer thread has stopped`))
        return worker
      }),
      // Closes the database cleanly (a checkpointed WAL), after every transaction asked for before.
      (worker) =>
        Effect.callback<void>((resume) => {
          if (broken !== undefined) return resume(Effect.void)
          worker.once("exit", () => resume(Effect.void))
          worker.postMessage({ close: true })
        })
    )
    const run = (steps: ReadonlyArray<Step>) =>
      Effect.callback<ReadonlyArray<number>, SqliteWriteError>((resume) => {
        if (broken !== undefined) return resume(Effect.fail(new SqliteWriteError({ message: broken })))
        const id = nextId++
        waiting.set(id, resume)
        worker.postMessage({ id, steps })
      })
    return { run }
  })
