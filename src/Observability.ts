/**
 * Logs, traces and metrics leaving the process. Logs are structured JSON (one
 * object per line, with the trace and span ids of the current span) unless
 * LOG_FORMAT=pretty (the default at a terminal); LOG_LEVEL sets the minimum
 * level. Metrics are always served as Prometheus text at /metrics.
 *
 * With OTEL_EXPORTER_OTLP_ENDPOINT set, traces, metrics and logs are also
 * exported over OTLP/HTTP (JSON) to `<endpoint>/v1/{traces,metrics,logs}`,
 * in the background. A collector that is slow or down costs dropped
 * telemetry, never the message path: spans are only buffered in memory,
 * every export request is bounded by OTEL_EXPORTER_OTLP_TIMEOUT, at most a
 * few requests are in flight at once (the rest fail at once and their
 * batches are dropped), and an exporter that keeps failing turns itself off
 * for a minute. The usual OpenTelemetry variables tune it:
 * OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS (`k=v,k2=v2`, e.g. an API
 * key; never logged), OTEL_BSP_SCHEDULE_DELAY / OTEL_METRIC_EXPORT_INTERVAL /
 * OTEL_BLRP_SCHEDULE_DELAY (export intervals in ms) and
 * OTEL_BSP_MAX_EXPORT_BATCH_SIZE.
 */
import { Config, Context, Duration, Effect, Layer, Logger, Option, Redacted, References, Tracer } from "effect"
import { NodeHttpClient } from "@effect/platform-node"
import { HttpClient, HttpClientError } from "effect/http"
import { Otlp } from "effect/observability"

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

const OtlpConfig = Config.all({
  endpoint: Config.option(Config.String("OTEL_EXPORTER_OTLP_ENDPOINT")),
  serviceName: Config.String("OTEL_SERVICE_NAME").pipe(Config.withDefault("harmony")),
  headers: Config.option(Config.Redacted("OTEL_EXPORTER_OTLP_HEADERS")),
  timeout: millis("OTEL_EXPORTER_OTLP_TIMEOUT"),
  tracesInterval: millis("OTEL_BSP_SCHEDULE_DELAY"),
  metricsInterval: millis("OTEL_METRIC_EXPORT_INTERVAL"),
  logsInterval: millis("OTEL_BLRP_SCHEDULE_DELAY"),
  maxBatchSize: Config.option(Config.Int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"))
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

/**
 * The exporters' HTTP client: each request bounded by `timeout`, at most
 * `MaxExportsInFlight` at once, so a collector that does not answer (a
 * blackholed address) cannot pile up requests and the batches they hold.
 */
const exporterClient = (timeout: Duration.Duration) =>
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

export const otlp = Layer.unwrap(
  Effect.gen(function* () {
    const config = yield* OtlpConfig
    const endpoint = Option.getOrUndefined(config.endpoint)?.trim() ?? ""
    if (endpoint === "") return Layer.empty
    const baseUrl = endpoint.replace(/\/+$/, "")
    yield* Effect.logInfo(`exporting traces, metrics and logs over OTLP to ${redactUrl(baseUrl)}`)
    return Otlp.layerJson({
      baseUrl,
      resource: { serviceName: config.serviceName, serviceVersion: "0.1.0" },
      headers: Option.match(config.headers, {
        onNone: () => undefined,
        onSome: (headers) => parseHeaders(Redacted.value(headers))
      }),
      tracerExportInterval: Option.getOrUndefined(config.tracesInterval),
      metricsExportInterval: Option.getOrUndefined(config.metricsInterval),
      loggerExportInterval: Option.getOrUndefined(config.logsInterval),
      maxBatchSize: Option.getOrUndefined(config.maxBatchSize),
      shutdownTimeout: Duration.seconds(3)
    }).pipe(Layer.provide(exporterClient(Option.getOrElse(config.timeout, () => Duration.seconds(10)))))
  })
)

/** A URL for the log: any credentials in it replaced. */
const redactUrl = (url: string) => url.replace(/\/\/[^/@]*@/, "//***@")
