import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "effect/sql"
import * as Sql from "../../src/adapters/sql/Sql.ts"
import { sqlContract } from "./Sql.contract.ts"

sqlContract("PGlite over pglite-socket", Sql.embedded({}))

describe("embedded PGlite settings", () => {
  // Postgres' server default (128MB) is resident in PGlite's WASM memory from the start.
  it.effect("runs with small shared buffers", () =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ shared_buffers: string }>`SHOW shared_buffers`
      expect(rows[0]?.shared_buffers).toBe("16MB")
    }).pipe(Effect.provide(Sql.embedded({})))
  )
})
