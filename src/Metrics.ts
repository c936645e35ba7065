/**
 * Harmony's metrics, exported as Prometheus text at /metrics and, with an
 * OTLP endpoint configured, over OTLP. Names follow Prometheus conventions
 * (`_total` counters, base units: seconds, records, messages); no label
 * carries a chat or user id, so every label has a small, fixed set of values.
 *
 * Gauges whose value already lives in some structure (mailboxes, consumer
 * positions) are read when metrics are collected (`Metric.registerUnsafe`)
 * rather than updated on every change.
 */
import { type Context, Effect, Metric } from "effect"
import type { Scope } from "effect"

// --- the message path -------------------------------------------------------------------------

export const messagesAccepted = Metric.counter("harmony_messages_accepted_total", {
  description: "Sends the log acknowledged",
  incremental: true
})
export const messagesSequenced = Metric.counter("harmony_messages_sequenced_total", {
  description: "Messages given a seq by a chat actor",
  incremental: true
})
export const messagesPersisted = Metric.counter("harmony_messages_persisted_total", {
  description: "Messages written to the message store",
  incremental: true
})
export const messagesDelivered = Metric.counter("harmony_messages_delivered_total", {
  description: "Message frames written to client sockets (live delivery)",
  incremental: true
})
export const sendToDeliver = Metric.histogram("harmony_send_to_deliver_seconds", {
  description:
    "Seconds from a send's acceptance at the gateway to its live delivery on a client socket (one observation per socket write)",
  boundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
})
/**
 * Where a message's time goes, stage by stage: each stage is the time
 * between two timestamps carried along the message's path (Kafka headers,
 * the fanout envelope), observed once per message where the stage ends.
 * Stages, in path order:
 *
 * - `admit`: the send reaches Ingest → queued for the log (rate limit, membership)
 * - `produce_wait`: queued → its produce request starts (waiting for the one in flight)
 * - `produce`: produce request → the log's acknowledgement (the ack follows at once)
 * - `log`: produce request → the record reaches its partition runner (broker, fetch)
 * - `route`: at the partition runner → sequenced by the chat's actor (mailbox hand-off)
 * - `publish`: sequenced → its fanout publish is issued
 * - `fanout`: publish issued → received by a delivering node (pub/sub)
 * - `deliver`: received → written to every local subscriber's socket (once per node)
 * - `persist`: sequenced → in the message store (not on the live path)
 *
 * Timestamps are wall-clock milliseconds with a fraction (`stampNow`): stages
 * that cross nodes include the nodes' clock offset.
 */
export const messageStage = Metric.histogram("harmony_message_stage_seconds", {
  description: "Seconds a message spends in each stage of its path, by stage (see docs/observability.md)",
  boundaries: [
    0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10
  ]
})
export type Stage =
  | "admit"
  | "produce_wait"
  | "produce"
  | "log"
  | "route"
  | "publish"
  | "fanout"
  | "deliver"
  | "persist"
export const stages: ReadonlyArray<Stage> = [
  "admit",
  "produce_wait",
  "produce",
  "log",
  "route",
  "publish",
  "fanout",
  "deliver",
  "persist"
]
const stageSeries = new Map<Stage, Metric.Histogram<number>>(
  stages.map((stage) => [stage, Metric.withAttributes(messageStage, { stage })])
)
/** The `harmony_message_stage_seconds` series of a stage. */
export const stageMetric = (stage: Stage): Metric.Histogram<number> => stageSeries.get(stage) ?? messageStage
/** The Kafka header of a send record carrying when its produce request started (a `stampNow` timestamp). */
export const ProducedAtHeader = "harmony-produced-at"
/** Now, in milliseconds since the epoch with a sub-millisecond fraction: the stages' timestamps. */
export const stampNow = (): number => performance.timeOrigin + performance.now()
/** Observes `stage` as the time from `since` (a `stampNow` timestamp) to `now`, when `since` is known. */
export const observeStage = (
  stage: Stage,
  since: number | undefined,
  now: number,
  context: Context.Context<never>
): void => {
  if (since === undefined || !Number.isFinite(since)) return
  stageMetric(stage).updateUnsafe(Math.max(0, now - since) / 1000, context)
}
/** Attributes: group, topic, partition. */
export const consumerLag = Metric.gauge("harmony_consumer_lag_records", {
  description:
    "Records of a claimed partition past the consumer's processed position (the log end offset minus the committable offset), by group, topic and partition"
})
export const searchIndexLag = Metric.gauge("harmony_search_index_lag_seconds", {
  description:
    "Age of the oldest message the search indexer has received and not yet indexed (0 when caught up): how long a new message may be unsearchable"
})
export const searchIndexed = Metric.counter("harmony_search_indexed_messages_total", {
  description: "Messages the search indexer read from the store and added to the search index",
  incremental: true
})
/** Attributes: reason = too_many_matches (400) | timeout (503). */
export const searchRefused = Metric.counter("harmony_search_refused_total", {
  description:
    "Searches refused by the search limits: a query matching more than SEARCH_MAX_MATCHES messages, or cut off by SEARCH_TIMEOUT",
  incremental: true
})
export const actorsActive = Metric.gauge("harmony_actors_active", { description: "Chat actors active on this node" })
export const actorMailboxDepth = Metric.gauge("harmony_actor_mailbox_depth", {
  description: "Records waiting in the mailboxes of this node's chat actors, all actors together"
})
export const sinkBatchSize = Metric.histogram("harmony_sink_batch_size", {
  description: "Messages per message store write of the persistence sink",
  boundaries: [1, 2, 5, 10, 20, 50, 100, 200, 500]
})
export const sinkRetries = Metric.counter("harmony_sink_retries_total", {
  description: "Message store writes retried by the persistence sink",
  incremental: true
})
export const sinkBacklog = Metric.gauge("harmony_sink_backlog_messages", {
  description: "Messages this node's actors have sequenced that are not yet persisted"
})
export const actorRestarts = Metric.counter("harmony_actor_restarts_total", {
  description: "Chat actors restarted by their supervisor after dying by a defect",
  incremental: true
})

// --- sessions and the API ---------------------------------------------------------------------

export const sessionsOpen = Metric.gauge("harmony_sessions_open", { description: "Open WebSocket sessions" })
export const slowConsumerDisconnects = Metric.counter("harmony_slow_consumer_disconnects_total", {
  description: "Sessions closed with 4008 because their outbound queue overflowed",
  incremental: true
})
/** Attributes: code (the contract's error code), transport (http, ws). */
export const errors = Metric.counter("harmony_errors_total", {
  description: "Errors answered to clients, by contract code and transport (http, ws)",
  incremental: true
})
export const rateLimited = Metric.counter("harmony_rate_limited_total", {
  description: "Requests refused by a rate limit, by limit",
  incremental: true
})
export const cacheLookups = Metric.counter("harmony_cache_lookups_total", {
  description: "Membership cache lookups, by result (hit, miss, error)",
  incremental: true
})

// --- the state path ---------------------------------------------------------------------------

export const outboxPublished = Metric.counter("harmony_outbox_published_total", {
  description: "Outbox events published to chat.events",
  incremental: true
})
export const outboxBacklog = Metric.gauge("harmony_outbox_backlog_rows", {
  description: "Outbox rows not yet published (cluster-wide: every node reports the same table)"
})
export const outboxRelayLag = Metric.gauge("harmony_outbox_relay_lag_seconds", {
  description: "Age of the oldest unpublished outbox row in seconds, 0 when none (cluster-wide)"
})

const errorSeries = new Map<string, Metric.Counter<number>>()

/** The `harmony_errors_total` series of an error code answered over `transport`. */
export const errorsOf = (code: string, transport: "http" | "ws"): Metric.Counter<number> => {
  const key = `${transport} ${code}`
  let series = errorSeries.get(key)
  if (series === undefined) {
    series = Metric.withAttributes(errors, { code, transport })
    errorSeries.set(key, series)
  }
  return series
}

/**
 * Reports `gauge` (with `attributes`) as `value()` whenever metrics are
 * collected, for the lifetime of the scope: for values that already live in
 * some structure, where updating a metric on every change would cost more.
 */
export const registerGauge = (
  gauge: Metric.Gauge<number>,
  value: () => number,
  attributes?: Metric.Metric.AttributeSet
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function* () {
    const context = yield* Effect.context<never>()
    const series = attributes === undefined ? gauge : Metric.withAttributes(gauge, attributes)
    const registration = Metric.registerUnsafe(series, context, {
      get: () => ({ value: value() }),
      update: () => {},
      modify: () => {}
    })
    yield* Effect.addFinalizer(() => Effect.sync(registration.remove))
  })

/**
 * Makes every unlabelled counter (and the rate limits' series) exist at 0
 * from the start, so /metrics lists them and `rate()` sees their first
 * increments.
 */
export const initialize: Effect.Effect<void> = Effect.forEach(
  [
    messagesAccepted,
    messagesSequenced,
    messagesPersisted,
    messagesDelivered,
    sinkRetries,
    actorRestarts,
    slowConsumerDisconnects,
    outboxPublished,
    ...["send", "loginUser", "loginAddress", "register"].map((limit) => Metric.withAttributes(rateLimited, { limit }))
  ],
  (counter) => Metric.update(counter, 0),
  { discard: true }
)
