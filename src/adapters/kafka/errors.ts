/**
 * What every part of the Kafka adapter shares: kafkajs's retry settings,
 * reading its errors (their cause chains, protocol error types, whether it
 * marked them retriable), running a kafkajs call as an Effect, and turning
 * records between kafkajs's shape and the port's.
 */
import { Effect } from "effect"
import type { KafkaMessage } from "kafkajs"
import { EventLogError, type LogRecord } from "../../ports/EventLog.ts"

/** kafkajs's own retries: exponential backoff with jitter, bounded (about 15s in all). */
export const kafkaRetry = { initialRetryTime: 100, maxRetryTime: 5_000, factor: 0.2, multiplier: 2, retries: 8 }

export const describeError = (error: unknown): string => {
  const parts: Array<string> = []
  let current: unknown = error
  for (let depth = 0; current !== undefined && current !== null && depth < 4; depth++) {
    if (current instanceof Error) {
      const part = `${current.name}: ${current.message}`
      if (!parts.includes(part)) parts.push(part)
      current = (current as { cause?: unknown }).cause
    } else {
      parts.push(String(current))
      break
    }
  }
  return parts.join(", caused by ")
}

/** The Kafka protocol error types (REBALANCE_IN_PROGRESS, ...) in an error's cause chain. */
export const errorTypes = (error: unknown): Array<string> => {
  const types: Array<string> = []
  let current: unknown = error
  for (let depth = 0; current !== undefined && current !== null && depth < 4; depth++) {
    const type = (current as { type?: unknown }).type
    if (typeof type === "string") types.push(type)
    current = (current as { cause?: unknown }).cause
  }
  return types
}

export const isRebalancing = (error: EventLogError): boolean =>
  errorTypes(error.cause).some((type) => ["REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION"].includes(type))

/** Whether kafkajs marked the error (or one in its cause chain) as worth retrying, such as NOT_LEADER_FOR_PARTITION. */
export const isRetriable = (error: EventLogError): boolean => {
  let current: unknown = error.cause
  for (let depth = 0; current !== undefined && current !== null && depth < 4; depth++) {
    if ((current as { retriable?: unknown }).retriable === true) return true
    current = (current as { cause?: unknown }).cause
  }
  return false
}

export const attempt = <A>(what: string, run: () => Promise<A>): Effect.Effect<A, EventLogError> =>
  Effect.tryPromise({
    try: run,
    catch: (cause) => new EventLogError({ message: `${what}: ${describeError(cause)}`, cause })
  })

export const toBuffer = (value: Uint8Array | string): Buffer =>
  typeof value === "string" ? Buffer.from(value, "utf8") : Buffer.from(value.buffer, value.byteOffset, value.byteLength)

export const toLogRecord = (topic: string, partition: number, message: KafkaMessage): LogRecord => {
  const headers: Record<string, string> = {}
  for (const [name, value] of Object.entries(message.headers ?? {})) {
    // Kafka allows a header name more than once; the port keeps the last, like Java's lastHeader.
    const last = Array.isArray(value) ? value[value.length - 1] : value
    if (last !== undefined) headers[name] = last.toString()
  }
  const value = message.value
  return {
    topic,
    partition,
    offset: Number(message.offset),
    key: message.key?.toString("utf8") ?? "",
    value: value === null ? new Uint8Array(0) : new Uint8Array(value.buffer, value.byteOffset, value.byteLength),
    headers,
    timestamp: Number(message.timestamp)
  }
}
