/**
 * Cluster mode's search indexer, on a worker thread of its own
 * (SearchIndexerThread.worker.ts, with its own Kafka, DynamoDB and Postgres
 * clients). Every second the indexer decodes what came, reads each chat's
 * new messages from the store and writes them in one big statement: tens of
 * milliseconds at a time that, on the event loop, every socket of the node
 * waited behind (send→deliver p99 at 1,000 sends/s: 724 ms with it on the
 * loop, 273 ms without it; docs/benchmarks.md).
 *
 * The thread's metrics (messages indexed, index lag, the indexer group's
 * consumer lag) reach `/metrics` through this thread. A thread that fails
 * or stops by itself is started again, with backoff: search lags meanwhile,
 * nothing else does. When the node stops, the thread is asked to stop (its
 * consumer commits and leaves the group) and is terminated if it has not
 * within `stopTimeout`.
 *
 * Embedded mode keeps the indexer on the event loop: its log and its
 * PGlite connection live in this thread.
 */
import { type Context, Deferred, Duration, Effect, Exit, Layer, Metric, Schema } from "effect"
import { Worker } from "node:worker_threads"
import { consumerLag, searchIndexed, searchIndexLag } from "../Metrics.ts"
import { backoff } from "../Retry.ts"

/** What the thread is started with (structured-cloned: plain values only). */
export const ThreadOptions = Schema.Struct({
  partitions: Schema.Number,
  kafkaBrokers: Schema.Array(Schema.String),
  sessionTimeoutMs: Schema.Number,
  drainTimeoutMs: Schema.Number,
  dynamodbEndpoint: Schema.String,
  region: Schema.String,
  table: Schema.String,
  databaseUrl: Schema.String
})
export type ThreadOptions = typeof ThreadOptions.Type

/** Asks the thread to stop. */
export const StopMessage = Schema.Literal("stop")

const ForwardedMetric = Schema.Struct({
  id: Schema.String,
  type: Schema.Literals(["Counter", "Gauge"]),
  attributes: Schema.Record(Schema.String, Schema.String),
  value: Schema.Number
})
type ForwardedMetric = typeof ForwardedMetric.Type

/** The thread's metrics, posted every second. */
export const MetricsReport = Schema.Struct({ _tag: Schema.Literal("Metrics"), metrics: Schema.Array(ForwardedMetric) })
export type MetricsReport = typeof MetricsReport.Type

/** The metrics the indexer updates, by id: the ones the thread forwards. */
const indexerCounters: ReadonlyMap<string, Metric.Counter<number>> = new Map([[searchIndexed.id, searchIndexed]])
const indexerGauges: ReadonlyMap<string, Metric.Gauge<number>> = new Map([
  [searchIndexLag.id, searchIndexLag],
  [consumerLag.id, consumerLag]
])

/** The indexer's series in a snapshot of the thread's metrics, as plain values. */
export const forwardedMetrics = (snapshot: ReadonlyArray<Metric.Metric.Snapshot>): Array<ForwardedMetric> => {
  const forwarded: Array<ForwardedMetric> = []
  for (const metric of snapshot) {
    if (!indexerCounters.has(metric.id) && !indexerGauges.has(metric.id)) continue
    const attributes: Record<string, string> = {}
    for (const [name, value] of Object.entries(metric.attributes ?? {})) attributes[name] = String(value)
    if (metric.type === "Counter") {
      forwarded.push({ id: metric.id, type: "Counter", attributes, value: Number(metric.state.count) })
    } else if (metric.type === "Gauge") {
      forwarded.push({ id: metric.id, type: "Gauge", attributes, value: Number(metric.state.value) })
    }
  }
  return forwarded
}

class IndexerThreadStopped extends Schema.TaggedError<IndexerThreadStopped>()("IndexerThreadStopped", {
  message: Schema.String
}) {}

interface Series {
  value: number
  remove: () => void
}

/** The thread's series in this thread's registry, each reporting the latest value the thread posted. */
const makeForwarder = (context: Context.Context<never>) => {
  const series = new Map<string, Series>()
  const clear = () => {
    for (const entry of series.values()) entry.remove()
    series.clear()
  }
  const update = (report: MetricsReport) => {
    const seen = new Set<string>()
    for (const metric of report.metrics) {
      const key = `${metric.id}${JSON.stringify(metric.attributes)}`
      seen.add(key)
      const known = series.get(key)
      if (known !== undefined) {
        known.value = metric.value
        continue
      }
      const entry: Series = { value: metric.value, remove: () => {} }
      const counter = indexerCounters.get(metric.id)
      const gauge = indexerGauges.get(metric.id)
      const registration =
        counter !== undefined
          ? Metric.registerUnsafe(Metric.withAttributes(counter, metric.attributes), context, {
              get: () => ({ count: entry.value, incremental: true }),
              update: () => {},
              modify: () => {}
            })
          : gauge !== undefined
            ? Metric.registerUnsafe(Metric.withAttributes(gauge, metric.attributes), context, {
                get: () => ({ value: entry.value }),
                update: () => {},
                modify: () => {}
              })
            : undefined
      if (registration === undefined) continue
      entry.remove = registration.remove
      series.set(key, entry)
    }
    // A partition the thread gave up is no longer its to report.
    for (const [key, entry] of series)
      if (!seen.has(key)) {
        entry.remove()
        series.delete(key)
      }
  }
  return { update, clear }
}

const decodeReport = Schema.decodeUnknownOption(MetricsReport)

/** Runs the indexer's thread for the layer's lifetime. */
export const layer = (options: ThreadOptions & { readonly stopTimeout: Duration.Duration }) =>
  Layer.effectDiscard(
    Effect.gen(function* () {
      const { stopTimeout, ...threadOptions } = options
      const context = yield* Effect.context<never>()
      const forwarder = makeForwarder(context)
      yield* Effect.addFinalizer(() => Effect.sync(forwarder.clear))

      /** One thread, from its start to its exit: it fails when the thread stops without being asked to. */
      const runThread = Effect.gen(function* () {
        const exited = yield* Deferred.make<number>()
        let failure: Error | undefined
        yield* Effect.acquireRelease(
          Effect.sync(() => {
            const worker = new Worker(new URL("./SearchIndexerThread.worker.ts", import.meta.url), {
              workerData: threadOptions
            })
            worker.on("message", (message: unknown) => {
              const report = decodeReport(message)
              if (report._tag === "Some") forwarder.update(report.value)
            })
            worker.on("error", (error) => {
              failure = error
            })
            worker.on("exit", (code) => {
              forwarder.clear()
              Deferred.doneUnsafe(exited, Exit.succeed(code))
            })
            return worker
          }),
          (worker) =>
            Effect.sync(() => worker.postMessage(StopMessage.literal)).pipe(
              Effect.andThen(Deferred.await(exited)),
              Effect.timeoutOrElse({
                duration: stopTimeout,
                orElse: () =>
                  Effect.logWarning(
                    `search indexer thread: not stopped within ${Duration.format(stopTimeout)}, terminated`
                  ).pipe(Effect.andThen(Effect.promise(() => worker.terminate())))
              }),
              Effect.asVoid
            )
        )
        const code = yield* Deferred.await(exited)
        const why = failure === undefined ? "" : `: ${failure.message}`
        return yield* new IndexerThreadStopped({ message: `the search indexer thread exited with code ${code}${why}` })
      }).pipe(Effect.scoped)

      yield* runThread.pipe(
        Effect.tapError((error) => Effect.logError(`${error.message}; starting it again`)),
        Effect.retry(backoff("1 second", "30 seconds")),
        Effect.forkScoped
      )
      yield* Effect.logInfo("search indexer: running on a thread of its own")
    })
  )
