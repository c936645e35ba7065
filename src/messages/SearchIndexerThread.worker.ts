/**
 * The search indexer's thread (started by SearchIndexerThread.ts): the
 * cluster-mode indexer with a Kafka client, a DynamoDB client and a Postgres
 * pool of its own. Every second it posts the indexer's metrics to the main
 * thread; on "stop" it leaves the group (committing what it indexed) and
 * exits 0. A failure to start or a defect exits 1, and the main thread
 * starts it again.
 */
import { Cause, Effect, Exit, Layer, Metric, Redacted, Schedule, Schema } from "effect"
import { parentPort, workerData } from "node:worker_threads"
import * as KafkaEventLog from "../adapters/kafka/KafkaEventLog.ts"
import * as DynamoMessageStore from "../adapters/dynamo/DynamoMessageStore.ts"
import * as Sql from "../adapters/sql/Sql.ts"
import * as Observability from "../Observability.ts"
import { SearchIndex } from "../state/SearchIndex.ts"
import * as SearchIndexer from "./SearchIndexer.ts"
import { forwardedMetrics, type MetricsReport, StopMessage, ThreadOptions } from "./SearchIndexerThread.ts"

const port = parentPort
if (port === null) throw new Error("SearchIndexerThread.worker.ts runs on a worker thread only")
const options = Schema.decodeUnknownSync(ThreadOptions)(workerData)

const indexer = SearchIndexer.layer({ partitions: options.partitions }).pipe(
  Layer.provide(SearchIndex.layer),
  Layer.provide(
    Layer.mergeAll(
      // The indexer writes one statement at a time per partition.
      Sql.postgres({ url: Redacted.make(options.databaseUrl), maxConnections: 4 }),
      KafkaEventLog.layer({
        brokers: options.kafkaBrokers,
        partitions: options.partitions,
        sessionTimeoutMs: options.sessionTimeoutMs,
        drainTimeout: options.drainTimeoutMs
      }),
      DynamoMessageStore.layer({ endpoint: options.dynamodbEndpoint, region: options.region, table: options.table })
    )
  )
)

const report = Effect.flatMap(Metric.snapshot, (snapshot) =>
  Effect.sync(() => port.postMessage({ _tag: "Metrics", metrics: forwardedMetrics(snapshot) } satisfies MetricsReport))
)

const program = Layer.launch(
  Layer.mergeAll(
    indexer,
    Layer.effectDiscard(report.pipe(Effect.repeat(Schedule.spaced("1 second")), Effect.forkScoped))
  )
).pipe(Effect.provide(Observability.logging))

const fiber = Effect.runFork(program)
const isStop = Schema.is(StopMessage)
port.on("message", (message: unknown) => {
  if (isStop(message)) fiber.interruptUnsafe()
})
fiber.addObserver((exit) => {
  if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) {
    Effect.runFork(
      Effect.logError("search indexer thread failed", exit.cause).pipe(
        Effect.provide(Observability.logging),
        Effect.ensuring(Effect.sync(() => process.exit(1)))
      )
    )
    return
  }
  process.exit(0)
})
