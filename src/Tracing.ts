/**
 * Trace context across the message path's process boundaries, and spans for
 * its synchronous parts.
 *
 * A message's trace crosses Kafka in the W3C `traceparent` record header and
 * Redis fanout in a field of the envelope (Fanout.ts), so one trace links the
 * send on the gateway, the actor that sequences it and every node that
 * delivers it. Batches (a Kafka produce, a store write) get a span of their
 * own that links the spans of the messages it carries.
 *
 * Per-message spans are made only while they can leave the process: OTLP
 * configured (Observability.ts) and its collector not known to be down
 * (`ExportGate`) — the message path is hot, and spans nobody can receive
 * are pure cost. Code on that path asks `syncSpans`/`ExportGate` once, when
 * it is set up, and `active()` per message; it also makes no child spans
 * under a parent that is not sampled (OTEL_TRACES_SAMPLER).
 */
import { Clock, Context, Effect, Exit, Option, type Tracer } from "effect"
import { Headers, HttpTraceContext } from "effect/http"

/** The W3C Trace Context header (and Kafka record header) carrying a span's context. */
export const TraceparentHeader = "traceparent"

/** Whether spans can leave the process, now. */
export interface ExportGate {
  /** OTLP export is configured at all. */
  readonly configured: boolean
  /** Spans made now would be exported: configured, and the collector not known to be down. */
  readonly open: () => boolean
}

const closed: ExportGate = { configured: false, open: () => false }

/** The process's export gate: closed for good unless Observability.otlp provides one. */
export const ExportGate = Context.Reference<ExportGate>("harmony/Tracing/ExportGate", { defaultValue: () => closed })

/** The W3C `traceparent` of a span, as effect's HTTP propagation writes it. */
export const traceparentOf = (span: Tracer.Span): string => HttpTraceContext.toHeaders(span)[TraceparentHeader]

/**
 * The remote span a `traceparent` names, to parent or link local spans to;
 * undefined when absent or malformed (W3C: the trace then restarts here).
 */
export const parseTraceparent = (value: string | undefined): Tracer.ExternalSpan | undefined =>
  value === undefined
    ? undefined
    : Option.getOrUndefined(HttpTraceContext.w3c(Headers.fromRecordUnsafe({ [TraceparentHeader]: value })))

export interface SyncSpanOptions {
  readonly parent?: Tracer.AnySpan | undefined
  readonly kind?: Tracer.SpanKind | undefined
  readonly attributes?: Readonly<Record<string, unknown>> | undefined
  readonly links?: ReadonlyArray<Tracer.SpanLink> | undefined
}

/**
 * Spans for code that runs outside a fiber of its own, such as a listener
 * writing to sockets: started and ended by hand, parented explicitly.
 */
export interface SyncSpans {
  /** Whether per-message spans are worth making now (the export gate is open). */
  readonly active: () => boolean
  readonly start: (name: string, options?: SyncSpanOptions) => Tracer.Span
  readonly end: (span: Tracer.Span, exit?: Exit.Exit<unknown, unknown>) => void
}

/** Spans for the message path on the current tracer and clock; undefined when nothing is ever exported. */
export const syncSpans: Effect.Effect<SyncSpans | undefined> = Effect.gen(function* () {
  const gate = yield* ExportGate
  if (!gate.configured) return undefined
  const tracer = yield* Effect.tracer
  const clock = yield* Clock.clockWith(Effect.succeed)
  return {
    active: gate.open,
    start: (name, options) => {
      const parent = options?.parent
      const span = tracer.span({
        name,
        parent: Option.fromNullishOr(parent),
        annotations: Context.empty(),
        links: options?.links === undefined ? [] : [...options.links],
        startTime: clock.currentTimeNanosUnsafe(),
        kind: options?.kind ?? "internal",
        root: parent === undefined,
        sampled: parent?.sampled ?? true
      })
      if (options?.attributes !== undefined) {
        for (const key in options.attributes) span.attribute(key, options.attributes[key])
      }
      return span
    },
    end: (span, exit = Exit.void) => span.end(clock.currentTimeNanosUnsafe(), exit)
  }
})

/** `span` when it is sampled (its trace is exported), else undefined: no child spans under an unsampled parent. */
export const sampled = <S extends Tracer.AnySpan>(span: S | undefined): S | undefined =>
  span?.sampled ? span : undefined

/**
 * For `Effect.fnUntraced` on the hot path, in place of `Effect.fn(name)`: a
 * span named `name` only while spans can leave the process (no span, and no
 * call-site stack capture, per call otherwise).
 */
export const spanWhenExported =
  (gate: ExportGate, name: string) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    gate.open() ? Effect.withSpan(effect, name, { captureStackTrace: false }) : effect
