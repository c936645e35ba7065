/**
 * The layer graph of `harmony serve`: the ports (embedded or cluster
 * adapters, chosen by the configuration), the state services, the message
 * path (ingest, actors, fanout, history), the WebSocket gateway and the HTTP
 * server. Built here so main.ts stays a thin CLI.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Duration, Effect, Layer, Redacted } from "effect"
import { HttpRouter } from "effect/http"
import { HttpApiBuilder } from "effect/http-api"
import { PrometheusMetrics } from "effect/observability"
import { SqlClient } from "effect/sql"
import { createServer } from "node:http"
import { join } from "node:path"
import * as Sequencing from "./sequencing/Sequencing.ts"
import { ActiveChats } from "./sequencing/ActiveChats.ts"
import { PresenceTracker } from "./gateway/PresenceTracker.ts"
import * as Session from "./gateway/Session.ts"
import type { HarmonyConfig } from "./Config.ts"
import * as ApiDocs from "./http/ApiDocs.ts"
import { Api } from "./http/Api.ts"
import { normalizeErrors } from "./http/Errors.ts"
import { Gateway } from "./gateway/Gateway.ts"
import { HandlersLive } from "./http/Handlers.ts"
import { Readiness } from "./http/Readiness.ts"
import * as WebClient from "./http/WebClient.ts"
import { Cache } from "./ports/Cache.ts"
import * as DynamoMessageStore from "./adapters/dynamo/DynamoMessageStore.ts"
import { EventLog } from "./ports/EventLog.ts"
import * as Memory from "./adapters/memory/Memory.ts"
import { MessageStore } from "./ports/MessageStore.ts"
import { migrate } from "./state/migrations.ts"
import * as Sql from "./adapters/sql/Sql.ts"
import * as DataDirLock from "./adapters/sqlite/DataDirLock.ts"
import * as EmbeddedMessageStore from "./adapters/sqlite/EmbeddedMessageStore.ts"
import * as SqliteEventLog from "./adapters/sqlite/SqliteEventLog.ts"
import { Accounts } from "./state/Accounts.ts"
import { Chats } from "./state/Chats.ts"
import { Membership } from "./state/Membership.ts"
import { RateLimits } from "./state/RateLimits.ts"
import { SearchIndex } from "./state/SearchIndex.ts"
import { ActorsGroup } from "./schema/Topics.ts"
import * as SearchIndexer from "./messages/SearchIndexer.ts"
import { Outbox } from "./state/Outbox.ts"
import { Tokens } from "./state/Tokens.ts"
import { ChatFeeds } from "./gateway/ChatFeeds.ts"
import { UnreadFeeds } from "./gateway/UnreadFeeds.ts"
import * as EventConsumers from "./relay/EventConsumers.ts"
import { Fanout } from "./messages/Fanout.ts"
import { History } from "./messages/History.ts"
import { Changes } from "./messages/Changes.ts"
import { Ingest } from "./messages/Ingest.ts"
import * as OutboxRelay from "./relay/OutboxRelay.ts"

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

/** The MessageStore port: DynamoDB, or SQLite in-process with its data under the data directory. */
export const messageStoreLayer = (config: HarmonyConfig) =>
  config.mode._tag === "Cluster"
    ? DynamoMessageStore.layer({
        endpoint: config.mode.services.dynamodbEndpoint,
        region: config.awsRegion,
        table: config.messagesTable
      })
    : EmbeddedMessageStore.layer({ dataDir: config.mode.dataDir, table: config.messagesTable })

// The cluster-only adapters are imported when cluster mode builds them:
// an embedded node never loads kafkajs or ioredis (~180 modules).

/** The Cache and PubSub ports: Redis, or in-process. */
export const cacheLayer = (config: HarmonyConfig) => {
  if (config.mode._tag !== "Cluster") return Memory.layer
  const url = Redacted.value(config.mode.services.redisUrl)
  return Layer.unwrap(
    Effect.promise(() => import("./adapters/redis/Redis.ts")).pipe(Effect.map((Redis) => Redis.layer({ url })))
  )
}

/**
 * Embedded mode: how many records a partition of the log may hold past what
 * the actors have persisted before senders wait (a bounded backlog between
 * the ack and the message store). The search indexer is not waited for: a
 * search index behind is search lag, not messages at risk.
 */
const embeddedMaxUncommitted = { records: 1_000, groups: new Set([ActorsGroup]) }

/** The EventLog port: Kafka, or the durable in-process log under the data directory. */
export const eventLogLayer = (config: HarmonyConfig) => {
  if (config.mode._tag === "Cluster") {
    const options = {
      brokers: config.mode.services.kafkaBrokers,
      partitions: config.kafkaPartitions,
      sessionTimeoutMs: Duration.toMillis(config.kafkaSessionTimeout),
      drainTimeout: logDrainTimeout(config),
      produceTimeout: config.sendTimeout
    }
    return Layer.unwrap(
      Effect.promise(() => import("./adapters/kafka/KafkaEventLog.ts")).pipe(
        Effect.map((KafkaEventLog) => KafkaEventLog.layer(options))
      )
    )
  }
  return SqliteEventLog.layer({
    directory: join(config.mode.dataDir, "log"),
    partitions: config.kafkaPartitions,
    maxUncommitted: embeddedMaxUncommitted,
    drainTimeout: logDrainTimeout(config)
  })
}

/**
 * A SIGTERM must be done within SHUTDOWN_TIMEOUT, even with a stalled store:
 * a revoked partition's runner gives up on its unpersisted backlog after
 * half of it (the next owner replays that from the log), and the log
 * interrupts a handler that is still running after three quarters of it.
 */
const runnerDrainTimeout = (config: HarmonyConfig) => Duration.divideUnsafe(config.shutdownTimeout, 2)
const logDrainTimeout = (config: HarmonyConfig) => Duration.times(config.shutdownTimeout, 0.75)

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
      return Layer.mergeAll(
        Accounts.layer,
        Membership.layer,
        RateLimits.layer(config.rateLimits),
        // PGlite cannot cut a statement off: no timeout (and no transaction for it) in embedded mode.
        SearchIndex.layerWith({
          maxMatches: config.searchLimits.maxMatches,
          timeout: config.mode._tag === "Cluster" ? config.searchLimits.timeout : undefined
        })
      ).pipe(Layer.provideMerge(Chats.layer), Layer.provideMerge(Outbox.layer), Layer.provide(tokens))
    })
  )

/** The message path (ingest, changes, sequencing, fanout, history) and the state path's relay and consumers. */
const pathsLayer = (config: HarmonyConfig) =>
  Layer.mergeAll(
    Sequencing.layer({ partitions: config.kafkaPartitions, drainTimeout: runnerDrainTimeout(config) }),
    OutboxRelay.layer({
      exclusive: config.mode._tag === "Cluster",
      pollInterval: config.mode._tag === "Cluster" ? Duration.seconds(1) : Duration.millis(100),
      batchSize: 500
    }),
    EventConsumers.layer,
    SearchIndexer.layer({ partitions: config.kafkaPartitions })
  ).pipe(
    Layer.provideMerge(Changes.layer),
    Layer.provideMerge(Layer.mergeAll(Ingest.layerWith({ sendTimeout: config.sendTimeout }), History.layer)),
    Layer.provideMerge(UnreadFeeds.layer),
    Layer.provideMerge(Layer.mergeAll(PresenceTracker.layer({ ttl: config.presenceTtl }), ChatFeeds.layer)),
    Layer.provideMerge(Layer.mergeAll(Fanout.layer, ActiveChats.layer))
  )

const readinessLayer = Layer.unwrap(
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const messageStore = yield* MessageStore
    const cache = yield* Cache
    const log = yield* EventLog
    return Readiness.layer([
      { name: "sql", run: sql`SELECT 1` },
      { name: "eventLog", run: log.ping },
      { name: "messageStore", run: messageStore.ping },
      { name: "cache", run: cache.ping }
    ])
  })
)

const metricsRoute = PrometheusMetrics.layerHttp({ path: "/metrics" })

/** `/metrics` is on the main port unless METRICS_PORT gives it one of its own. */
const metricsApart = (config: HarmonyConfig) => config.metricsPort !== config.port

const routes = (config: HarmonyConfig) =>
  Layer.mergeAll(
    HttpApiBuilder.layer(Api, { openapiPath: "/openapi.json" }).pipe(Layer.provide(HandlersLive)),
    ApiDocs.layer,
    metricsApart(config) ? Layer.empty : metricsRoute,
    WebClient.layer(),
    normalizeErrors
  )

/** The metrics server on METRICS_PORT, when it is not the main port. */
const metricsServer = (config: HarmonyConfig) =>
  metricsApart(config)
    ? HttpRouter.serve(metricsRoute, { disableLogger: true, disableListenLog: true }).pipe(
        Layer.provide(NodeHttpServer.layer(createServer, { port: config.metricsPort, host: config.host }))
      )
    : Layer.empty

const httpServerLayer = (config: HarmonyConfig) =>
  Layer.unwrap(
    Effect.gen(function* () {
      const gateway = yield* Gateway
      return NodeHttpServer.layer(() => gateway.attach(createServer()), {
        port: config.port,
        host: config.host,
        gracefulShutdownTimeout: config.shutdownTimeout
      })
    })
  )

/**
 * Embedded mode owns its data directory: a second process on it is refused
 * before anything there is opened (DataDirLock). Cluster mode has nothing to lock.
 */
export const lockDataDir = (config: HarmonyConfig) =>
  config.mode._tag === "Embedded" ? DataDirLock.acquire(config.mode.dataDir) : Effect.void

/** Everything `harmony serve` runs, listening on the configured port. */
export const serve = (config: HarmonyConfig) =>
  Layer.mergeAll(
    HttpRouter.serve(routes(config), { disableLogger: true }).pipe(Layer.provide(httpServerLayer(config))),
    metricsServer(config)
  ).pipe(
    Layer.provideMerge(
      Gateway.layer(
        {
          ...Session.defaultSessionOptions,
          frameLimits: config.frameLimits,
          maxSubscriptions: config.gatewayLimits.maxSubscriptionsPerSocket
        },
        config.gatewayLimits,
        config.shutdownTimeout
      )
    ),
    Layer.provideMerge(readinessLayer),
    Layer.provideMerge(pathsLayer(config)),
    Layer.provideMerge(stateLayer(config)),
    Layer.provideMerge(sqlLayer(config)),
    Layer.provideMerge(messageStoreLayer(config)),
    Layer.provideMerge(cacheLayer(config)),
    Layer.provideMerge(eventLogLayer(config))
  )
