/**
 * The behaviour the state code relies on from the SQL port, for both
 * adapters (Postgres, and PGlite behind pglite-socket): migrations,
 * atomic transactions (a state change and its outbox event commit or roll
 * back together), unique violations reported as such, and transactions that
 * never interleave — the reason the embedded pool has one connection.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Effect, Exit, Layer } from "effect"
import { SqlClient } from "effect/sql"
import { isSqlError } from "effect/sql/SqlError"
import type { SqlError } from "effect/sql/SqlError"
import { migrate } from "../../src/state/migrations.ts"
import { Outbox } from "../../src/state/Outbox.ts"
import type { UserId } from "../../src/schema/Domain.ts"

export const sqlContract = (name: string, sqlLayer: Layer.Layer<SqlClient.SqlClient, SqlError>) =>
  describe(`SQL contract: ${name}`, () => {
    const migrated = sqlLayer.pipe(Layer.tap((context) => Effect.provideContext(migrate, context)))
    layer(Layer.provideMerge(Outbox.layer, migrated), { timeout: 60_000 })((it) => {
      it.effect("migrations are recorded and not applied twice", () =>
        Effect.gen(function* () {
          const again = yield* migrate
          assert.deepStrictEqual(again, [])
          const sql = yield* SqlClient.SqlClient
          const tables = yield* sql<{ table_name: string }>`
            SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name`
          const names = tables.map((t) => t.table_name)
          for (const table of ["chats", "memberships", "outbox", "refresh_tokens", "users"]) {
            assert.include(names, table)
          }
        })
      )

      it.effect("a state change and its outbox event commit together", () =>
        Effect.gen(function* () {
          const sql = yield* SqlClient.SqlClient
          const outbox = yield* Outbox
          const id = `commit-${Date.now()}` as UserId
          yield* sql.withTransaction(
            Effect.gen(function* () {
              yield* sql`INSERT INTO users (id, username, display_name) VALUES (${id}, ${id}, 'x')`
              yield* outbox.append([{ _tag: "user.registered", userId: id, username: id }])
            })
          )
          const users = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM users WHERE id = ${id}`
          const events = yield* sql<{ type: string; payload: unknown; version: number }>`
            SELECT type, payload, version FROM outbox WHERE aggregate_id = ${id}`
          assert.strictEqual(users[0]!.n, 1)
          assert.strictEqual(events.length, 1)
          assert.strictEqual(events[0]!.type, "user.registered")
          assert.strictEqual(events[0]!.version, 1)
          const payload = typeof events[0]!.payload === "string" ? JSON.parse(events[0]!.payload) : events[0]!.payload
          assert.deepStrictEqual(payload, { _tag: "user.registered", userId: id, username: id })
        })
      )

      it.effect("a failed transaction leaves neither the change nor its event", () =>
        Effect.gen(function* () {
          const sql = yield* SqlClient.SqlClient
          const outbox = yield* Outbox
          const id = `rollback-${Date.now()}` as UserId
          const exit = yield* sql
            .withTransaction(
              Effect.gen(function* () {
                yield* sql`INSERT INTO users (id, username, display_name) VALUES (${id}, ${id}, 'x')`
                yield* outbox.append([{ _tag: "user.registered", userId: id, username: id }])
                return yield* Effect.fail("abort" as const)
              })
            )
            .pipe(Effect.exit)
          assert.isTrue(Exit.isFailure(exit))
          const users = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM users WHERE id = ${id}`
          const events = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM outbox WHERE aggregate_id = ${id}`
          assert.strictEqual(users[0]!.n, 0)
          assert.strictEqual(events[0]!.n, 0)
        })
      )

      it.effect("a duplicate key is reported as a unique violation", () =>
        Effect.gen(function* () {
          const sql = yield* SqlClient.SqlClient
          const id = `unique-${Date.now()}`
          yield* sql`INSERT INTO users (id, username, display_name) VALUES (${id}, ${id}, 'x')`
          const error =
            yield* sql`INSERT INTO users (id, username, display_name) VALUES (${`${id}-2`}, ${id}, 'x')`.pipe(
              Effect.flip
            )
          assert.isTrue(isSqlError(error))
          assert.strictEqual(error.reason._tag, "UniqueViolation")
        })
      )

      it.effect("concurrent transactions never interleave (read-modify-write stays exact)", () =>
        Effect.gen(function* () {
          const sql = yield* SqlClient.SqlClient
          const id = `counter-${Date.now()}`
          yield* sql`INSERT INTO chats (id, kind, last_seq) VALUES (${id}, 'group', 0)`
          yield* Effect.forEach(
            Array.from({ length: 25 }, (_, i) => i),
            () =>
              sql.withTransaction(
                Effect.gen(function* () {
                  const rows = yield* sql<{ last_seq: string }>`SELECT last_seq FROM chats WHERE id = ${id} FOR UPDATE`
                  yield* Effect.yieldNow
                  yield* sql`UPDATE chats SET last_seq = ${Number(rows[0]!.last_seq) + 1} WHERE id = ${id}`
                })
              ),
            { concurrency: "unbounded" }
          )
          const rows = yield* sql<{ last_seq: string }>`SELECT last_seq FROM chats WHERE id = ${id}`
          assert.strictEqual(Number(rows[0]!.last_seq), 25)
        })
      )
    })
  })
