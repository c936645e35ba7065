/**
 * The `harmony` binary: `harmony serve` runs every role of a node (embedded
 * when no service URLs are configured); `harmony migrate` applies the state
 * schema and exits; `harmony reindex` rebuilds the search index from the
 * message store and exits. Configuration comes from the environment (docs: README).
 */
// Subpaths, not the package index: the index loads every module of
// platform-node, its Redis client's 650 modules among them.
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { Console, Effect, Layer, Runtime } from "effect"
import { Command } from "effect/cli"
import * as App from "./App.ts"
import * as Config from "./Config.ts"
import * as Observability from "./Observability.ts"
import * as SearchIndexer from "./messages/SearchIndexer.ts"
import { SearchIndex } from "./state/SearchIndex.ts"

const describeMode = (config: Config.HarmonyConfig) =>
  config.mode._tag === "Embedded"
    ? `embedded mode (data in ${config.mode.dataDir}): PGlite over pglite-socket, durable event log and message store (SQLite), in-process cache`
    : `cluster mode: Postgres, Kafka ${config.mode.services.kafkaBrokers.join(",")}, Redis, DynamoDB ${config.mode.services.dynamodbEndpoint}`

const serve = Command.make(
  "serve",
  {},
  Effect.fn(function* () {
    const config = yield* Config.load
    yield* App.lockDataDir(config)
    yield* Effect.logInfo(`harmony starting in ${describeMode(config)}`)
    return yield* Layer.launch(App.serve(config).pipe(Layer.provide(Observability.otlp))).pipe(
      Effect.onInterrupt(() => Effect.logInfo("harmony stopped"))
    )
  }, Effect.scoped)
).pipe(Command.withDescription("Run a Harmony node: HTTP and WebSocket API, actors, relays"))

const migrate = Command.make(
  "migrate",
  {},
  Effect.fn(function* () {
    const config = yield* Config.load
    yield* App.lockDataDir(config)
    yield* Effect.logInfo(`migrating the state schema in ${describeMode(config)}`)
    yield* Layer.build(App.sqlLayer(config))
    yield* Console.log("migrations are up to date")
  }, Effect.scoped)
).pipe(Command.withDescription("Apply the state schema migrations and exit"))

const reindex = Command.make(
  "reindex",
  {},
  Effect.fn(function* () {
    const config = yield* Config.load
    yield* App.lockDataDir(config)
    yield* Effect.logInfo(`rebuilding the search index from the message store in ${describeMode(config)}`)
    const { chats, messages } = yield* SearchIndexer.reindex().pipe(
      Effect.provide(SearchIndex.layer.pipe(Layer.provideMerge(App.sqlLayer(config)))),
      Effect.provide(App.messageStoreLayer(config))
    )
    yield* Console.log(`reindex: done, ${messages} messages of ${chats} chats indexed`)
  }, Effect.scoped)
).pipe(Command.withDescription("Rebuild the search index from the message store and exit"))

const harmony = Command.make("harmony").pipe(
  Command.withDescription("Harmony, a real-time chat engine"),
  Command.withSubcommands([serve, migrate, reindex])
)

harmony.pipe(
  Command.run({ version: "0.1.0" }),
  Effect.catchTag("ConfigurationError", (error) =>
    Effect.sync(() => {
      process.stderr.write(`harmony: configuration error: ${error.message}\n`)
      process.exitCode = 2
    })
  ),
  Effect.catchTag("DataDirInUse", (error) =>
    Effect.sync(() => {
      process.stderr.write(`harmony: ${error.message}\n`)
      process.exitCode = 2
    })
  ),
  Effect.provide(Layer.mergeAll(NodeServices.layer, Observability.logging)),
  NodeRuntime.runMain({
    // SIGTERM/SIGINT interrupt the program; once its layers have drained and
    // closed, that is a clean stop (exit 0), not a failure.
    teardown: (exit, onExit) => Runtime.defaultTeardown(exit, (code) => onExit(code === 130 ? 0 : code))
  })
)
