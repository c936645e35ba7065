/**
 * Harmony's metrics, exported as Prometheus text at /metrics. Names follow
 * Prometheus conventions; no label carries a chat or user id (bounded
 * cardinality).
 */
import { Metric } from "effect"

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
  description: "Message frames written to client sockets",
  incremental: true
})
export const cacheLookups = Metric.counter("harmony_cache_lookups_total", {
  description: "Membership cache lookups, by result (hit, miss, error)",
  incremental: true
})
export const rateLimited = Metric.counter("harmony_rate_limited_total", {
  description: "Requests refused by a rate limit, by limit",
  incremental: true
})
export const slowConsumerDisconnects = Metric.counter("harmony_slow_consumer_disconnects_total", {
  description: "Sessions closed with 4008 because their outbound queue overflowed",
  incremental: true
})
export const sessionsOpen = Metric.gauge("harmony_sessions_open", { description: "Open WebSocket sessions" })
export const actorsActive = Metric.gauge("harmony_actors_active", { description: "Chat actors active on this node" })
export const sinkRetries = Metric.counter("harmony_sink_retries_total", {
  description: "Message store writes retried by the persistence sink",
  incremental: true
})
export const outboxPublished = Metric.counter("harmony_outbox_published_total", {
  description: "Outbox events published to chat.events",
  incremental: true
})
