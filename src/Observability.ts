/**
 * Logs, traces and metrics leaving the process. Logs are structured JSON (one
 * object per line, with the trace and span ids of the current span) unless
 * LOG_FORMAT=pretty (the default at a terminal); LOG_LEVEL sets the minimum
 * level. Metrics are always served as Prometheus text at /metrics.
 *
 * With OTEL_EXPORTER_OTLP_ENDPOINT set, traces, metrics and logs are also
 * exported over OTLP/HTTP (JSON) to `<endpoint>/v1/{traces,metrics,logs}`,
 * in the background. A collector that is slow or down costs dropped
 * telemetry, never the message path: every export request is bounded by
 * OTEL_EXPORTER_OTLP_TIMEOUT (default 10 s), at most a few are in flight at
 * once (the rest fail at once, their batches dropped), and from a failed
 * trace export until one works again the process makes no spans worth
 * exporting (but a probe every 10 s): the message path then costs what it
 * costs without OTLP.
 *
 * The usual OpenTelemetry variables tune it: OTEL_SERVICE_NAME,
 * OTEL_EXPORTER_OTLP_HEADERS (`k=v,k2=v2`, e.g. an API key; never logged),
 * OTEL_TRACES_SAMPLER (`parentbased_traceidratio` with OTEL_TRACES_SAMPLER_ARG
 * = the share of traces kept; default: all) and OTEL_BSP_SCHEDULE_DELAY /
 * OTEL_METRIC_EXPORT_INTERVAL / OTEL_BLRP_SCHEDULE_DELAY (export intervals,
 * ms), OTEL_BSP_MAX_EXPORT_BATCH_SIZE.
 */
import { Config, Context, Duration, Effect, Layer, Logger, Option, Redacted, References, Tracer } from "effect"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { HttpClient, HttpClientError, HttpMiddleware } from "effect/http"
import { OtlpExporter, OtlpLogger, OtlpMetrics, OtlpSerialization, OtlpTracer } from "effect/observability"
import { ExportGate } from "./Tracing.ts"

// A person at a terminal gets readable lines; everything else (containers, CI, files) gets JSON.
const LogFormat = Config.Literals(["json", "pretty"], "LOG_FORMAT").pipe(
  Config.withDefault(process.stdout.isTTY ? ("pretty" as const) : ("json" as const))
)
const LogLevel = Config.LogLevel("LOG_LEVEL").pipe(Config.withDefault("Info" as const))

/** JSON lines with the ids that tie a log line to its trace (none inside untraced regions). */
const jsonLogger = Logger.make((options) => {
  const entry = Logger.formatStructured.log(options)
  const span = Context.getOrUndefined(options.fiber.context, Tracer.ParentSpan)
  const line =
    span === undefined || span.traceId === "noop" ? entry : { ...entry, traceId: span.traceId, spanId: span.spanId }
  process.stdout.write(`${JSON.stringify(line)}\n`)
})

export const logging = Layer.unwrap(
  Effect.gen(function* () {
    const format = yield* LogFormat
    const level = yield* LogLevel
    return Layer.mergeAll(
      Logger.layer([format === "json" ? jsonLogger : Logger.defaultLogger]),
      Layer.succeed(References.MinimumLogLevel, level)
    )
  })
)

const millis = (name: string) => Config.option(Config.Int(name).pipe(Config.map(Duration.millis)))

const samplers = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio"
] as const
type Sampler = (typeof samplers)[number]
const Sampler = Config.Literals(samplers, "OTEL_TRACES_SAMPLER").pipe(
  Config.withDefault<Sampler>("parentbased_always_on")
)

const OtlpConfig = Config.all({
  endpoint: Config.option(Config.String("OTEL_EXPORTER_OTLP_ENDPOINT")),
  serviceName: Config.String("OTEL_SERVICE_NAME").pipe(Config.withDefault("harmony")),
  headers: Config.option(Config.Redacted("OTEL_EXPORTER_OTLP_HEADERS")),
  timeout: millis("OTEL_EXPORTER_OTLP_TIMEOUT"),
  tracesInterval: millis("OTEL_BSP_SCHEDULE_DELAY"),
  metricsInterval: millis("OTEL_METRIC_EXPORT_INTERVAL"),
  logsInterval: millis("OTEL_BLRP_SCHEDULE_DELAY"),
  maxBatchSize: Config.option(Config.Int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")),
  sampler: Sampler,
  samplerArg: Config.option(Config.Number("OTEL_TRACES_SAMPLER_ARG"))
})

/** `k=v,k2=v2` (OTEL_EXPORTER_OTLP_HEADERS, values URL-encoded) as headers. */
const parseHeaders = (value: string): Record<string, string> => {
  const headers: Record<string, string> = {}
  for (const pair of value.split(",")) {
    const at = pair.indexOf("=")
    if (at <= 0) continue
    headers[pair.slice(0, at).trim().toLowerCase()] = decodeURIComponent(pair.slice(at + 1).trim())
  }
  return headers
}

/** Export requests in flight at once; past that a batch fails at once and is dropped. */
const MaxExportsInFlight = 4
/** While the collector is down, one root span this often is exported anyway, to find out when it is back. */
const ProbeInterval = Duration.seconds(10)

/**
 * Whether the collector takes traces, as the trace exports find it: down
 * from a failed export until one works. While it is down the gate is closed
 * and only a probe span now and then is exported.
 */
class CollectorHealth implements ExportGate {
  readonly configured = true
  private up = true
  private nextProbe = 0
  readonly open = (): boolean => this.up
  /** While down: whether a span may be exported now to probe the collector (once per interval). */
  probe(): boolean {
    const now = Date.now()
    if (now < this.nextProbe) return false
    this.nextProbe = now + Duration.toMillis(ProbeInterval)
    return true
  }
  failed(): void {
    this.up = false
  }
  succeeded(): void {
    this.up = true
  }
}

/**
 * The exporters' HTTP client: each request bounded by `timeout`, at most
 * `MaxExportsInFlight` at once, so a collector that does not answer (a
 * blackholed address) cannot pile up requests and the batches they hold;
 * every trace export's outcome tells `health`.
 */
const exporterClient = (timeout: Duration.Duration, health: CollectorHealth) =>
  Layer.effect(
    HttpClient.HttpClient,
    Effect.gen(function* () {
      const client = yield* HttpClient.HttpClient
      let inFlight = 0
      const transportError = (request: Parameters<typeof client.execute>[0], description: string) =>
        new HttpClientError.HttpClientError({ reason: new HttpClientError.TransportError({ request, description }) })
      return HttpClient.transform(client, (response, request) =>
        Effect.suspend(() => {
          if (inFlight >= MaxExportsInFlight) {
            return Effect.fail(transportError(request, `${MaxExportsInFlight} exports already in flight`))
          }
          inFlight++
          return response.pipe(
            Effect.timeoutOrElse({
              duration: timeout,
              orElse: () => Effect.fail(transportError(request, `no answer within ${Duration.format(timeout)}`))
            }),
            // The trace exports decide whether spans are worth making (a collector may take traces
            // and refuse the other signals).
            Effect.tap((answer) =>
              Effect.sync(() => {
                if (!isTraces(request.url)) return
                if (answer.status < 300) health.succeeded()
                else health.failed()
              })
            ),
            Effect.tapCause(() =>
              Effect.sync(() => {
                if (isTraces(request.url)) health.failed()
              })
            ),
            Effect.ensuring(
              Effect.sync(() => {
                inFlight--
              })
            )
          )
        })
      )
    })
  ).pipe(
    // node:http: an abandoned request (timed out) takes its connection with it, so a collector
    // that never answers cannot collect the exporters' sockets.
    Layer.provide(NodeHttpClient.layerNodeHttp)
  )

const isTraces = (url: string) => url.endsWith("/v1/traces")

/**
 * The OTLP tracer behind a gate and a sampler: while the collector is down
 * every span is Effect's native one (nothing would leave, so nothing is
 * encoded or buffered) but for a probe now and then; a root span is sampled
 * with probability `ratio`, and the rest follow their parent (local, or
 * remote via `traceparent`). A root span that links others (a batch) is
 * sampled when they are.
 */
const gatedTracer = (otlp: Tracer.Tracer, health: CollectorHealth, ratio: number): Tracer.Tracer =>
  Tracer.make({
    span: (options) => {
      if (!options.sampled) return Tracer.nativeTracer.span(options)
      if (!health.open()) {
        const probe = Option.isNone(options.parent) && health.probe()
        return probe ? otlp.span(options) : Tracer.nativeTracer.span(options)
      }
      if (ratio < 1 && Option.isNone(options.parent) && options.links.length === 0 && !(Math.random() < ratio)) {
        return Tracer.nativeTracer.span({ ...options, sampled: false })
      }
      return otlp.span(options)
    }
  })

const samplingRatio = (
  sampler: typeof Sampler extends Config.Config<infer A> ? A : never,
  arg: Option.Option<number>
) => {
  switch (sampler) {
    case "always_off":
    case "parentbased_always_off":
      return 0
    case "traceidratio":
    case "parentbased_traceidratio":
      return Math.min(
        1,
        Math.max(
          0,
          Option.getOrElse(arg, () => 1)
        )
      )
    default:
      return 1
  }
}

export const otlp = Layer.unwrap(
  Effect.gen(function* () {
    const config = yield* OtlpConfig
    const endpoint = Option.getOrUndefined(config.endpoint)?.trim() ?? ""
    if (endpoint === "") return Layer.empty
    const baseUrl = endpoint.replace(/\/+$/, "")
    const ratio = samplingRatio(config.sampler, config.samplerArg)
    yield* Effect.logInfo(
      `exporting traces (sampling ${Math.round(ratio * 1000) / 10}% of traces), metrics and logs over OTLP to ${redactUrl(baseUrl)}`
    )
    const health = new CollectorHealth()
    const resource = { serviceName: config.serviceName, serviceVersion: "0.1.0" }
    const headers = Option.match(config.headers, {
      onNone: () => undefined,
      onSome: (value) => parseHeaders(Redacted.value(value))
    })
    // At shutdown one flush drains all three exporters at once within the bound;
    // each exporter's own final export (run one after another as their layers close)
    // then gets only a moment for what arrived since.
    const flushTimeout = Duration.seconds(3)
    const shutdownTimeout = Duration.millis(250)
    const maxBatchSize = Option.getOrUndefined(config.maxBatchSize)
    const url = (path: string) => `${baseUrl}${path}`
    const tracer = Layer.effect(
      Tracer.Tracer,
      OtlpTracer.make({
        url: url("/v1/traces"),
        resource,
        headers,
        exportInterval: Option.getOrUndefined(config.tracesInterval),
        maxBatchSize,
        shutdownTimeout
      }).pipe(Effect.map((otlpTracer) => gatedTracer(otlpTracer, health, ratio)))
    )
    const exporters = Layer.mergeAll(
      tracer,
      OtlpMetrics.layer({
        url: url("/v1/metrics"),
        resource,
        headers,
        exportInterval: Option.getOrUndefined(config.metricsInterval),
        shutdownTimeout
      }),
      OtlpLogger.layer({
        url: url("/v1/logs"),
        resource,
        headers,
        exportInterval: Option.getOrUndefined(config.logsInterval),
        maxBatchSize,
        shutdownTimeout
      }),
      Layer.succeed(ExportGate, health),
      // Scrapes and probes are not worth a trace each.
      HttpMiddleware.layerTracerDisabledForUrls(["/metrics", "/healthz", "/readyz"])
    )
    // Built after the exporters, so its finalizer runs before theirs.
    const finalFlush = Layer.effectDiscard(
      Effect.gen(function* () {
        const flusher = yield* OtlpExporter.Flusher
        yield* Effect.addFinalizer(() => flusher.flush.pipe(Effect.timeoutOption(flushTimeout)))
      })
    )
    return finalFlush.pipe(
      Layer.provideMerge(exporters),
      Layer.provideMerge(OtlpExporter.layerFlusher),
      Layer.provide(OtlpSerialization.layerJson),
      Layer.provide(
        exporterClient(
          Option.getOrElse(config.timeout, () => Duration.seconds(10)),
          health
        )
      )
    )
  })
)

/** A URL for the log: any credentials in it replaced. */
const redactUrl = (url: string) => url.replace(/\/\/[^/@]*@/, "//***@")
