/**
 * A Postgres database of its own for a suite: created on the services'
 * Postgres, dropped afterwards, so suites never see each other's rows.
 */
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { serviceUrl, uniqueName } from "./services.ts"

/**
 * A fresh database on the services' Postgres, dropped (with its connections)
 * when the scope closes; answers its URL so that several pools (several
 * "nodes") can share it.
 */
export const freshDatabaseUrl = Effect.gen(function* () {
  const admin = new URL(serviceUrl("DATABASE_URL"))
  const name = uniqueName("harmony_test").replace(/-/g, "_")
  const adminLayer = PgClient.layer({ url: Redacted.make(admin.toString()), maxConnections: 1 })
  const run = (statement: string) =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      yield* sql.unsafe(statement)
    }).pipe(Effect.provide(adminLayer), Effect.orDie)
  yield* Effect.acquireRelease(run(`CREATE DATABASE ${name}`), () =>
    run(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  )
  const url = new URL(admin)
  url.pathname = `/${name}`
  return url.toString()
})

/** A fresh database as a `PgClient` layer; dropped when the layer is released. */
export const freshPostgres = Layer.unwrap(
  Effect.map(freshDatabaseUrl, (url) => PgClient.layer({ url: Redacted.make(url), maxConnections: 8 }))
)
