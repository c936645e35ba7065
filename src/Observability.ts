/**
 * Logs, traces and metrics leaving the process. Logs are structured JSON (one
 * object per line, with the trace and span ids of the current span) unless
 * LOG_FORMAT=pretty (the default at a terminal); LOG_LEVEL sets the minimum
 * level. With
 * OTEL_EXPORTER_OTLP_ENDPOINT set, traces, metrics and logs are also exported
 * over OTLP/HTTP in the background: a collector that is slow or down costs
 * dropped telemetry, never the message path. Metrics are always served as
 * Prometheus text at /metrics.
 */
import { Config, Context, Effect, Layer, Logger, References, Tracer } from "effect"
import { FetchHttpClient } from "effect/http"
import { Otlp } from "effect/observability"

// A person at a terminal gets readable lines; everything else (containers, CI, files) gets JSON.
const LogFormat = Config.Literals(["json", "pretty"], "LOG_FORMAT").pipe(
  Config.withDefault(process.stdout.isTTY ? ("pretty" as const) : ("json" as const))
)
const LogLevel = Config.LogLevel("LOG_LEVEL").pipe(Config.withDefault("Info" as const))

/** JSON lines with the ids that tie a log line to its trace. */
const jsonLogger = Logger.make((options) => {
  const entry = Logger.formatStructured.log(options)
  const span = Context.getOrUndefined(options.fiber.context, Tracer.ParentSpan)
  const line = span === undefined ? entry : { ...entry, traceId: span.traceId, spanId: span.spanId }
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

export const otlp = Layer.unwrap(
  Effect.gen(function* () {
    const endpoint = yield* Config.option(Config.String("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if (endpoint._tag === "None" || endpoint.value.trim() === "") return Layer.empty
    const serviceName = yield* Config.String("OTEL_SERVICE_NAME").pipe(Config.withDefault("harmony"))
    yield* Effect.logInfo(`exporting traces, metrics and logs over OTLP to ${endpoint.value}`)
    return Otlp.layerJson({
      baseUrl: endpoint.value.replace(/\/$/, ""),
      resource: { serviceName, serviceVersion: "0.1.0" }
    }).pipe(Layer.provide(FetchHttpClient.layer))
  })
)
