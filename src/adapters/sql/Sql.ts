/**
 * The SQL port: effect's `SqlClient` (with `PgClient`) for the state
 * (users, chats, memberships, refresh tokens, outbox). Cluster mode talks to
 * Postgres; embedded mode runs PGlite and serves it over the Postgres wire
 * protocol with pglite-socket, so the very same `@effect/sql-pg` code runs —
 * both on a worker thread, so its statements do not hold the event loop.
 */
import { PgClient } from "@effect/sql-pg"
import { Duration, Effect, Layer, type Redacted } from "effect"
import type { SqlClient } from "effect/sql"
import { ConnectionError, SqlError } from "effect/sql/SqlError"
import { mkdirSync } from "node:fs"
import { createRequire } from "node:module"
import { Worker } from "node:worker_threads"

/** Postgres with a pool (cluster mode). */
export const postgres = (options: { readonly url: Redacted.Redacted<string>; readonly maxConnections?: number }) =>
  PgClient.layer({
    url: options.url,
    maxConnections: options.maxConnections ?? 16,
    connectTimeout: Duration.seconds(5),
    applicationName: "harmony"
  })

/**
 * Postgres settings of the embedded PGlite. Its defaults are a server's
 * (shared_buffers 128MB, which PGlite allocates in its WASM memory at once):
 * embedded state is a few thousand rows, and 16MB of buffers starts faster
 * and holds ~110 MiB less resident (docs/benchmarks.md, connections scenario).
 */
const embeddedSettings = ["-c", "shared_buffers=16MB"]

/**
 * The thread that owns PGlite (plain CommonJS evaluated by the worker; the
 * packages' paths come resolved from here). PGlite runs every statement as
 * WASM on the thread that owns it — inserting into the search index alone
 * costs tens of microseconds per message — so it gets a thread of its own,
 * and the event loop only speaks the Postgres protocol to it.
 */
const workerSource = `
const { parentPort, workerData } = require("node:worker_threads")
const { PGlite } = require(workerData.pglite)
const { PGLiteSocketServer } = require(workerData.socket)
let db
let server
const start = async () => {
  // One options object: \`new PGlite(undefined, options)\` ignores the options.
  db = new PGlite({
    ...(workerData.dataDir === undefined ? {} : { dataDir: workerData.dataDir }),
    startParams: [...PGlite.defaultStartParams, ...workerData.settings]
  })
  await db.waitReady
  server = new PGLiteSocketServer({ db, host: "127.0.0.1", port: 0, maxConnections: 4 })
  await server.start()
  return server.getServerConn()
}
const describe = (error) => String(error && error.stack ? error.stack : error)
start().then(
  (address) => parentPort.postMessage({ ready: address }),
  (error) => parentPort.postMessage({ failed: describe(error) })
)
parentPort.on("message", (message) => {
  if (!message.close) return
  Promise.resolve()
    .then(() => server && server.stop())
    .then(() => db && db.close())
    .then(
      () => parentPort.postMessage({ closed: true }),
      (error) => parentPort.postMessage({ closed: true, failed: describe(error) })
    )
    .finally(() => parentPort.close())
})
`

type WorkerReply =
  | { readonly ready: string }
  | { readonly failed: string; readonly closed?: true }
  | { readonly closed: true; readonly failed?: string }

const resolvePackage = createRequire(import.meta.url).resolve

/** Starts PGlite and its socket server on a thread of their own; answers the thread and the server's address. */
const startPglite = (dataDir: string | undefined) =>
  Effect.callback<{ readonly worker: Worker; readonly address: string }, SqlError>((resume) => {
    const fail = (cause: unknown) =>
      resume(
        Effect.fail(
          new SqlError({
            reason: new ConnectionError({ cause, message: `PGlite could not open ${dataDir ?? "memory"}` })
          })
        )
      )
    let worker: Worker
    try {
      if (dataDir !== undefined) mkdirSync(dataDir, { recursive: true })
      worker = new Worker(workerSource, {
        eval: true,
        workerData: {
          dataDir,
          settings: embeddedSettings,
          pglite: resolvePackage("@electric-sql/pglite"),
          socket: resolvePackage("@electric-sql/pglite-socket")
        }
      })
    } catch (cause) {
      return fail(cause)
    }
    worker.once("message", (reply: WorkerReply) => {
      if ("ready" in reply) return resume(Effect.succeed({ worker, address: reply.ready }))
      fail(new Error(reply.failed))
      void worker.terminate()
    })
    worker.once("error", fail)
    worker.once("exit", (code) => fail(new Error(`the PGlite thread exited with code ${code}`)))
    return Effect.promise(() => worker.terminate())
  })

/** Closes PGlite (its data flushed) and ends its thread. */
const stopPglite = (worker: Worker, exited: { value: boolean }) =>
  Effect.callback<void>((resume) => {
    if (exited.value) return resume(Effect.void)
    worker.once("exit", () => resume(Effect.void))
    worker.postMessage({ close: true })
  })

/**
 * PGlite (embedded mode) on a thread of its own, its data under `dataDir`
 * (or in memory when absent). PGlite is one Postgres backend: concurrent
 * connections through pglite-socket would share one session and interleave
 * the statements of two transactions, so the pool holds exactly one
 * connection.
 */
export const embedded = (options: {
  readonly dataDir?: string | undefined
}): Layer.Layer<PgClient.PgClient | SqlClient.SqlClient, SqlError> =>
  Layer.unwrap(
    Effect.gen(function* () {
      const exited = { value: false }
      let stopping = false
      const { worker, address } = yield* Effect.acquireRelease(startPglite(options.dataDir), ({ worker }) =>
        Effect.suspend(() => {
          stopping = true
          return stopPglite(worker, exited)
        })
      )
      // A thread that ends while the node still needs it is said, loudly: every statement fails from then on.
      yield* Effect.callback<number>((resume) => {
        worker.once("exit", (code) => {
          exited.value = true
          resume(Effect.succeed(code))
        })
      }).pipe(
        Effect.flatMap((code) =>
          stopping ? Effect.void : Effect.logError(`the PGlite thread stopped (exit code ${code}); SQL is unavailable`)
        ),
        Effect.forkScoped
      )
      const [host, port] = address.split(":")
      return PgClient.layer({
        host: host!,
        port: Number(port),
        database: "postgres",
        username: "postgres",
        maxConnections: 1,
        minConnections: 1,
        connectTimeout: Duration.seconds(5),
        applicationName: "harmony"
      })
    })
  )
