/**
 * The layer graph of `harmony serve`: the ports (embedded or cluster
 * adapters, chosen by the configuration), the state services, and the HTTP
 * server. Built here so main.ts stays a thin CLI.
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { HttpRouter } from "effect/http"
import { HttpApiBuilder, HttpApiScalar } from "effect/http-api"
import { PrometheusMetrics } from "effect/observability"
import { SqlClient } from "effect/sql"
import { createServer } from "node:http"
import { join } from "node:path"
import type { HarmonyConfig } from "./Config.ts"
import { Api } from "./http/Api.ts"
import { normalizeErrors } from "./http/Errors.ts"
import { HandlersLive } from "./http/Handlers.ts"
import { Readiness } from "./http/Readiness.ts"
import { migrate } from "./infra/migrations.ts"
import * as Dynalite from "./infra/Dynalite.ts"
import * as DynamoMessageStore from "./infra/DynamoMessageStore.ts"
import { MessageStore } from "./infra/MessageStore.ts"
import * as Sql from "./infra/Sql.ts"
import { Accounts } from "./state/Accounts.ts"
import { Chats } from "./state/Chats.ts"
import { Outbox } from "./state/Outbox.ts"
import { Tokens } from "./state/Tokens.ts"

/** The SQL port for the configured mode, migrated. */
export const sqlLayer = (config: HarmonyConfig) =>
  (config.mode._tag === "Cluster"
    ? Sql.postgres({ url: config.mode.services.databaseUrl })
    : Sql.embedded({ dataDir: join(config.mode.dataDir, "pg") })
  ).pipe(
    Layer.tap((context) =>
      migrate.pipe(
        Effect.provideContext(context),
        Effect.tap((applied) =>
          applied.length > 0
            ? Effect.logInfo(`migrations applied: ${applied.map(([id, name]) => `${id}_${name}`).join(", ")}`)
            : Effect.void
        )
      )
    )
  )

/** The MessageStore port: DynamoDB, or dynalite in-process with its data under the data directory. */
export const messageStoreLayer = (config: HarmonyConfig) =>
  config.mode._tag === "Cluster"
    ? DynamoMessageStore.layer({
        endpoint: config.mode.services.dynamodbEndpoint,
        region: config.awsRegion,
        table: config.messagesTable
      })
    : Dynalite.embeddedLayer({ path: join(config.mode.dataDir, "dynamo"), table: config.messagesTable })

const stateLayer = (config: HarmonyConfig) =>
  Layer.unwrap(
    Effect.gen(function* () {
      const { secret, generated } = yield* Tokens.devSecret(config.jwtSecret, config.dataDir)
      if (generated) {
        yield* Effect.logWarning(
          `embedded mode: using a generated development JWT secret kept in ${join(config.dataDir, "jwt-secret")}; set HARMONY_JWT_SECRET in production`
        )
      }
      const tokens = Tokens.layer({
        secret,
        accessTokenTtl: config.accessTokenTtl,
        refreshTokenTtl: config.refreshTokenTtl
      })
      return Accounts.layer.pipe(
        Layer.provideMerge(Chats.layer),
        Layer.provideMerge(Outbox.layer),
        Layer.provide(tokens)
      )
    })
  )

const readinessLayer = Layer.unwrap(
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const messageStore = yield* MessageStore
    return Readiness.layer([
      { name: "sql", run: sql`SELECT 1` },
      { name: "messageStore", run: messageStore.ping }
    ])
  })
)

const routes = Layer.mergeAll(
  HttpApiBuilder.layer(Api, { openapiPath: "/openapi.json" }).pipe(Layer.provide(HandlersLive)),
  HttpApiScalar.layer(Api, { path: "/docs" }),
  PrometheusMetrics.layerHttp({ path: "/metrics" }),
  normalizeErrors
)

/** Everything `harmony serve` runs, listening on the configured port. */
export const serve = (config: HarmonyConfig) =>
  HttpRouter.serve(routes, { disableLogger: true }).pipe(
    Layer.provide(readinessLayer),
    Layer.provide(stateLayer(config)),
    Layer.provide(sqlLayer(config)),
    Layer.provide(messageStoreLayer(config)),
    Layer.provide(
      NodeHttpServer.layer(createServer, {
        port: config.port,
        host: config.host,
        gracefulShutdownTimeout: config.shutdownTimeout
      })
    )
  )
