/**
 * The embedded DynamoDB: dynalite (a DynamoDB-compatible HTTP server on
 * LevelDB) listening on loopback, so embedded mode runs the very adapter
 * cluster mode does (DynamoMessageStore.ts).
 */
import type { Server } from "node:http"
import type { AddressInfo } from "node:net"
import { createRequire } from "node:module"
import { Context, Effect, Layer } from "effect"
import * as DynamoMessageStore from "./DynamoMessageStore.ts"
import type { MessageStore, MessageStoreError } from "./MessageStore.ts"

interface DynaliteOptions {
  readonly path?: string
  readonly createTableMs?: number
  readonly deleteTableMs?: number
  readonly updateTableMs?: number
}

// dynalite is CommonJS without type declarations; this is the part of it we use.
const dynalite = createRequire(import.meta.url)("dynalite") as (options: DynaliteOptions) => Server

export class DynaliteServer extends Context.Service<DynaliteServer, { readonly endpoint: string }>()(
  "harmony/infra/DynaliteServer"
) {}

/**
 * Starts dynalite on 127.0.0.1 with an ephemeral port, on LevelDB under `path`
 * when given (the data survives restarts), in memory otherwise.
 */
export const layer = (options: { readonly path?: string | undefined }): Layer.Layer<DynaliteServer> =>
  Layer.effect(
    DynaliteServer,
    Effect.gen(function* () {
      const server = yield* Effect.acquireRelease(
        Effect.callback<Server>((resume) => {
          // Tables are ACTIVE at once: nothing here gains from imitating AWS's delays.
          const server = dynalite({
            ...(options.path === undefined ? {} : { path: options.path }),
            createTableMs: 0,
            deleteTableMs: 0,
            updateTableMs: 0
          })
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

/** The MessageStore of embedded mode: DynamoMessageStore on a private dynalite. */
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
  ).pipe(Layer.provide(layer({ path: options.path })))
