/**
 * SqliteWriter: the transactions of an embedded SQLite database committed on
 * a worker thread — all of a run lands or none of it, runs apply in the order
 * asked, a reader on the event loop sees each one once it has answered, and
 * a run after the writer closed fails instead of hanging.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"
import * as SqliteWriter from "../../src/adapters/sqlite/SqliteWriter.ts"

const openDb = () => {
  const path = join(mkdtempSync(join(tmpdir(), "harmony-writer-")), "test.db")
  const db = new DatabaseSync(path)
  db.exec("PRAGMA journal_mode = WAL")
  db.exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
  return { path, db }
}

const insert = (k: number, v: string | null): SqliteWriter.Step => ["INSERT INTO t (k, v) VALUES (?, ?)", [k, v]]
const rows = (db: DatabaseSync) =>
  db
    .prepare("SELECT k, v FROM t ORDER BY k")
    .all()
    .map((row) => [row.k, row.v])

describe("SqliteWriter", () => {
  it.effect("runs commit whole, in order, and are seen by a reader on the event loop once answered", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const { path, db } = openDb()
        const writer = yield* SqliteWriter.make(path)
        const runs = yield* Effect.all(
          [
            writer.run([insert(1, "a"), insert(2, "b")]),
            writer.run([["UPDATE t SET v = 'c' WHERE k <= ?", [2]]]),
            writer.run([["DELETE FROM t WHERE k = ?", [9]]])
          ],
          { concurrency: "unbounded" }
        )
        assert.deepStrictEqual(runs, [[1, 1], [2], [0]])
        assert.deepStrictEqual(rows(db), [
          [1, "c"],
          [2, "c"]
        ])
      })
    )
  )

  it.effect("a failing step rolls back its whole run with an error; the next run works", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const { path, db } = openDb()
        const writer = yield* SqliteWriter.make(path)
        const error = yield* Effect.flip(writer.run([insert(1, "a"), insert(2, null)]))
        assert.instanceOf(error, SqliteWriter.SqliteWriteError)
        assert.include(error.message, "NOT NULL")
        assert.deepStrictEqual(rows(db), [])
        yield* writer.run([insert(3, "c")])
        assert.deepStrictEqual(rows(db), [[3, "c"]])
      })
    )
  )

  it.effect("a run after the writer closed fails", () =>
    Effect.gen(function* () {
      const { path } = openDb()
      const scope = yield* Scope.make()
      const writer = yield* SqliteWriter.make(path).pipe(Scope.provide(scope))
      yield* writer.run([insert(1, "a")])
      yield* Scope.close(scope, Exit.void)
      assert.instanceOf(yield* Effect.flip(writer.run([insert(2, "b")])), SqliteWriter.SqliteWriteError)
    })
  )
})
