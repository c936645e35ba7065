/**
 * An in-process DynamoDB: dynalite (a DynamoDB-compatible HTTP server on
 * LevelDB) listening on loopback. Tests run DynamoMessageStore against it;
 * embedded mode opens it only to move the history of earlier versions
 * (kept in `<dataDir>/dynamo`) into its SQLite store (EmbeddedMessageStore.ts).
 */
import type { Server } from "node:http"
import type { AddressInfo } from "node:net"
import { createRequire } from "node:module"
import { Context, Effect, Layer, Schema } from "effect"
import * as DynamoMessageStore from "./DynamoMessageStore.ts"
import { type MessageStore, MessageStoreError } from "../../ports/MessageStore.ts"

interface DynaliteOptions {
  readonly path?: string
  readonly createTableMs?: number
  readonly deleteTableMs?: number
  readonly updateTableMs?: number
}

interface LevelDb {
  open(): Promise<void>
  close(): Promise<void>
}

// dynalite is CommonJS without type declarations; these are the parts of it we use.
const requireCjs = createRequire(import.meta.url)
const dynalite = requireCjs("dynalite") as (options: DynaliteOptions) => Server
// The `level` dynalite itself resolves, so the probe below opens the store exactly as it will.
const requireFromDynalite = createRequire(requireCjs.resolve("dynalite"))
const { Level } = requireFromDynalite("level") as { Level: new (path: string) => LevelDb }

/**
 * dynalite reads LevelDB through streams that end (or stop at a query's
 * Limit) by calling `iterator.return()`, which abstract-level 3's iterators
 * do not have: every Query's iterator (a native LevelDB iterator holding a
 * snapshot) stayed open until the store closed — one more per
 * `History.lastSeq`, i.e. per subscribe. Closing is what `return` means for
 * an iterator, so they get one.
 */
const iteratorBase = (): { prototype: { close(): Promise<void>; return?: () => Promise<void> } } => {
  const fromLevel = createRequire(requireFromDynalite.resolve("level"))
  const fromClassic = createRequire(fromLevel.resolve("classic-level"))
  const { AbstractIterator } = fromClassic("abstract-level") as { AbstractIterator: { prototype: object } }
  // The class all three iterator kinds (entries, keys, values) extend.
  return { prototype: Object.getPrototypeOf(AbstractIterator.prototype) }
}
const { prototype: iterators } = iteratorBase()
iterators.return ??= function (this: { close(): Promise<void> }) {
  return this.close()
}

export class DynaliteError extends Schema.TaggedError<DynaliteError>()("DynaliteError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {}

export class DynaliteServer extends Context.Service<DynaliteServer, { readonly endpoint: string }>()(
  "harmony/adapters/DynaliteServer"
) {}

/**
 * dynalite throws storage errors from inside its request callbacks, which
 * crashes the process; so a store that cannot be opened (most often: locked
 * by another Harmony on the same data directory) must be caught before it starts.
 */
const probeStore = (path: string) =>
  Effect.tryPromise({
    try: async () => {
      const db = new Level(path)
      try {
        await db.open()
      } finally {
        await db.close()
      }
    },
    catch: (cause) =>
      new DynaliteError({
        message: `cannot open the message store under ${path} (is another Harmony using it?): ${describe(cause)}`,
        cause
      })
  })

const describe = (error: unknown): string =>
  error instanceof Error
    ? `${error.message}${error.cause === undefined ? "" : ` (${describe(error.cause)})`}`
    : String(error)

/**
 * Starts dynalite on 127.0.0.1 with an ephemeral port, on LevelDB under `path`
 * when given (the data survives restarts), in memory otherwise.
 */
export const layer = (options: { readonly path?: string | undefined }): Layer.Layer<DynaliteServer, DynaliteError> =>
  Layer.effect(
    DynaliteServer,
    Effect.gen(function* () {
      if (options.path !== undefined) yield* probeStore(options.path)
      const server = yield* Effect.acquireRelease(
        Effect.callback<Server>((resume) => {
          // Tables are ACTIVE at once: nothing here gains from imitating AWS's delays.
          const server = dynalite({
            ...(options.path === undefined ? {} : { path: options.path }),
            createTableMs: 0,
            deleteTableMs: 0,
            updateTableMs: 0
          })
          // Listening on an ephemeral loopback port fails only on a broken host.
          const onError = (error: Error) => resume(Effect.die(error))
          server.once("error", onError)
          server.listen(0, "127.0.0.1", () => {
            server.off("error", onError)
            resume(Effect.succeed(server))
          })
        }),
        (server) =>
          Effect.callback<void>((resume) => {
            // dynalite's close also closes LevelDB once pending operations finish.
            server.close((error) =>
              resume(
                error === undefined || error === null
                  ? Effect.void
                  : Effect.logWarning("closing dynalite failed", error)
              )
            )
          })
      )
      const { port } = server.address() as AddressInfo
      return DynaliteServer.of({ endpoint: `http://127.0.0.1:${port}` })
    })
  )

/** DynamoMessageStore on a private dynalite (in memory unless `path` is given). */
export const embeddedLayer = (options: {
  readonly path?: string | undefined
  readonly table: string
}): Layer.Layer<MessageStore, MessageStoreError> =>
  Layer.unwrap(
    Effect.gen(function* () {
      const { endpoint } = yield* DynaliteServer
      return DynamoMessageStore.layer({
        endpoint,
        region: "us-east-1",
        table: options.table,
        // dynalite checks that requests are signed, not by whom.
        credentials: { accessKeyId: "embedded", secretAccessKey: "embedded" }
      })
    })
  ).pipe(
    Layer.provide(
      layer({ path: options.path }).pipe(
        Layer.catchTag("DynaliteError", (error) =>
          Layer.effect(DynaliteServer, Effect.fail(new MessageStoreError({ message: error.message, cause: error })))
        )
      )
    )
  )
