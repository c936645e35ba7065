/**
 * One process per data directory: embedded mode holds an exclusive SQLite
 * lock on `<dataDir>/harmony.lock` for as long as it runs. The operating
 * system releases it when the process ends, however it ends (kill -9
 * included), so a stale lock never needs cleaning up; a second process on a
 * directory in use is refused before it opens anything in it.
 */
import { Effect, Schema, type Scope } from "effect"
import { mkdirSync } from "node:fs"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"

export class DataDirInUse extends Schema.TaggedError<DataDirInUse>()("DataDirInUse", {
  message: Schema.String
}) {}

export class DataDirLockError extends Schema.TaggedError<DataDirLockError>()("DataDirLockError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {}

const busy = (error: unknown) =>
  error instanceof Error &&
  /database is locked|SQLITE_BUSY/i.test(`${error.message} ${String((error as { code?: unknown }).code)}`)

/** Locks `dataDir` (created when missing) for the scope's lifetime. */
export const acquire = (dataDir: string): Effect.Effect<void, DataDirInUse | DataDirLockError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        mkdirSync(dataDir, { recursive: true })
        const db = new DatabaseSync(join(dataDir, "harmony.lock"), { timeout: 0 })
        try {
          db.exec("PRAGMA locking_mode = EXCLUSIVE")
          // An open exclusive transaction: nobody else can even read the file.
          db.exec("BEGIN EXCLUSIVE")
          return db
        } catch (error) {
          db.close()
          throw error
        }
      },
      catch: (error) =>
        busy(error)
          ? new DataDirInUse({
              message: `data directory ${dataDir} is in use by another harmony process (one process per HARMONY_DATA_DIR)`
            })
          : new DataDirLockError({ message: `cannot lock data directory ${dataDir}`, cause: error })
    }),
    (db) => Effect.sync(() => db.close())
  ).pipe(Effect.asVoid)
