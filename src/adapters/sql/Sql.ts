/**
 * The SQL port: effect's `SqlClient` (with `PgClient`) for the state
 * (users, chats, memberships, refresh tokens, outbox). Cluster mode talks to
 * Postgres; embedded mode runs PGlite and serves it over the Postgres wire
 * protocol with pglite-socket, so the very same `@effect/sql-pg` code runs.
 */
import { PGlite } from "@electric-sql/pglite"
import { PGLiteSocketServer } from "@electric-sql/pglite-socket"
import { PgClient } from "@effect/sql-pg"
import { Duration, Effect, Layer, type Redacted } from "effect"
import type { SqlClient } from "effect/sql"
import { ConnectionError, SqlError } from "effect/sql/SqlError"
import { mkdirSync } from "node:fs"

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
 * PGlite in-process (embedded mode), its data under `dataDir` (or in memory
 * when absent). PGlite is one Postgres backend: concurrent connections
 * through pglite-socket would share one session and interleave the
 * statements of two transactions, so the pool holds exactly one connection.
 */
export const embedded = (options: {
  readonly dataDir?: string | undefined
}): Layer.Layer<PgClient.PgClient | SqlClient.SqlClient, SqlError> =>
  Layer.unwrap(
    Effect.gen(function* () {
      const db = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            if (options.dataDir !== undefined) mkdirSync(options.dataDir, { recursive: true })
            // One options object: `new PGlite(undefined, options)` ignores the options.
            const db = new PGlite({
              ...(options.dataDir === undefined ? {} : { dataDir: options.dataDir }),
              startParams: [...PGlite.defaultStartParams, ...embeddedSettings]
            })
            await db.waitReady
            return db
          },
          catch: (cause) =>
            new SqlError({
              reason: new ConnectionError({ cause, message: `PGlite could not open ${options.dataDir ?? "memory"}` })
            })
        }),
        (db) => Effect.promise(() => db.close())
      )
      const server = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            const server = new PGLiteSocketServer({ db, host: "127.0.0.1", port: 0, maxConnections: 4 })
            await server.start()
            return server
          },
          catch: (cause) =>
            new SqlError({ reason: new ConnectionError({ cause, message: "pglite-socket could not listen" }) })
        }),
        (server) => Effect.promise(() => server.stop())
      )
      const [host, port] = server.getServerConn().split(":")
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
