/**
 * Embedded mode's MessageStore: SqliteMessageStore in `<dataDir>/messages`.
 *
 * Earlier versions kept embedded history in dynalite under `<dataDir>/dynamo`.
 * On start, when that directory is there and the SQLite store is empty,
 * every message and epoch is copied over in one transaction (a crash during
 * the copy leaves the store empty, and the next start copies again), with a
 * note that the copy is done; then the old directory is renamed
 * `dynamo.migrated`, so it is never read again and can be deleted by hand.
 */
import { existsSync, renameSync } from "node:fs"
import { join } from "node:path"
import { Context, Effect, Layer } from "effect"
import * as Dynalite from "../dynamo/Dynalite.ts"
import * as DynamoMessageStore from "../dynamo/DynamoMessageStore.ts"
import { MessageStore, MessageStoreError } from "../../ports/MessageStore.ts"
import * as SqliteMessageStore from "./SqliteMessageStore.ts"

const importedNote = "imported-from-dynalite"

/** How often, in messages, the copy reports its progress. */
const progressEvery = 50_000

/** Copies the dynalite store at `path` into `store` unless that was done already; renames `path` after. */
export const importDynalite = Effect.fnUntraced(function* (
  store: SqliteMessageStore.SqliteMessageStore,
  options: { readonly path: string; readonly table: string }
) {
  if (!existsSync(options.path)) return
  if ((yield* store.note(importedNote)) === undefined) {
    if (!(yield* store.isEmpty)) {
      return yield* Effect.logWarning(
        `message store ${store.path} already holds messages and was not filled from ${options.path}; leaving ${options.path} alone (not merged)`
      )
    }
    yield* Effect.logInfo(`moving the messages of ${options.path} (dynalite, earlier versions) into ${store.path}`)
    const copied = yield* Effect.scoped(
      Effect.gen(function* () {
        const server = yield* Layer.build(Dynalite.layer({ path: options.path })).pipe(
          Effect.map(Context.get(Dynalite.DynaliteServer)),
          Effect.mapError((error) => new MessageStoreError({ message: error.message, cause: error }))
        )
        return yield* store.transaction((write) => {
          let messages = 0
          let epochs = 0
          let reported = 0
          return DynamoMessageStore.scanTable(
            {
              endpoint: server.endpoint,
              region: "us-east-1",
              table: options.table,
              credentials: { accessKeyId: "embedded", secretAccessKey: "embedded" }
            },
            (page) =>
              Effect.gen(function* () {
                yield* Effect.try({
                  try: () => {
                    write.messages(page.messages)
                    for (const [chatId, epoch] of page.epochs) write.epoch(chatId, epoch)
                  },
                  catch: (cause) => new MessageStoreError({ message: `writing into ${store.path} failed`, cause })
                })
                messages += page.messages.length
                epochs += page.epochs.length
                if (messages - reported >= progressEvery) {
                  reported = messages
                  yield* Effect.logInfo(`moving messages from ${options.path}: ${messages} so far`)
                }
              })
          ).pipe(
            Effect.tap(() =>
              Effect.try({
                try: () => write.note(importedNote, new Date().toISOString()),
                catch: (cause) => new MessageStoreError({ message: `writing into ${store.path} failed`, cause })
              })
            ),
            Effect.map(() => ({ messages, epochs }))
          )
        })
      })
    )
    yield* Effect.logInfo(
      `moved ${copied.messages} messages and ${copied.epochs} chat epochs from ${options.path} into ${store.path}`
    )
  }
  const retired = `${options.path}.migrated`
  yield* Effect.try({
    try: () => renameSync(options.path, existsSync(retired) ? `${retired}-${Date.now()}` : retired),
    catch: (cause) =>
      new MessageStoreError({ message: `cannot rename ${options.path} after moving its messages`, cause })
  })
  yield* Effect.logInfo(`${options.path} renamed to ${retired}: it is no longer read, and can be deleted`)
})

/** The store of embedded mode under `dataDir`, with the history of earlier versions moved in. */
export const layer = (options: {
  readonly dataDir: string
  readonly table: string
}): Layer.Layer<MessageStore, MessageStoreError> =>
  Layer.effect(
    MessageStore,
    SqliteMessageStore.make({ directory: join(options.dataDir, "messages") }).pipe(
      Effect.tap((store) => importDynalite(store, { path: join(options.dataDir, "dynamo"), table: options.table }))
    )
  )
