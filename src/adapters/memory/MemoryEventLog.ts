/**
 * The EventLog port in memory, for tests: a LocalEventLog whose records and
 * committed offsets are plain arrays and maps. Nothing survives the layer;
 * embedded mode uses the durable SqliteEventLog instead.
 */
import { Clock, Effect, Layer } from "effect"
import { EventLog, type LogRecord } from "../../ports/EventLog.ts"
import * as LocalEventLog from "../local/LocalEventLog.ts"

export type MemoryEventLogOptions = LocalEventLog.LocalEventLogOptions

/** Records and committed offsets in memory. */
export const storage = (): LocalEventLog.LogStorage => {
  const topics = new Map<string, Array<Array<LogRecord>>>()
  const committed = new Map<string, Map<number, number>>()
  const partition = (topic: string, index: number): Array<LogRecord> => topics.get(topic)?.[index] ?? []
  return {
    topics: () => new Map(Array.from(topics, ([name, partitions]) => [name, partitions.length])),
    createTopic: (topic, partitions) =>
      Effect.sync(() => {
        topics.set(
          topic,
          Array.from({ length: partitions }, () => [])
        )
      }),
    append: (topic, records) =>
      Effect.map(Clock.currentTimeMillis, (timestamp) =>
        records.map((record) => {
          const log = topics.get(topic)![record.partition]!
          const offset = log.length
          log.push({ topic, offset, timestamp, ...record })
          return offset
        })
      ),
    read: (topic, index, from, max) => partition(topic, index).slice(from, from + max),
    endOffset: (topic, index) => partition(topic, index).length,
    committed: (group, topic) => committed.get(`${group}\u0000${topic}`) ?? new Map(),
    commit: (group, topic, index, next) =>
      Effect.sync(() => {
        const key = `${group}\u0000${topic}`
        const offsets = committed.get(key) ?? new Map<number, number>()
        offsets.set(index, next)
        committed.set(key, offsets)
      })
  }
}

export const make = (options?: MemoryEventLogOptions): EventLog["Service"] => LocalEventLog.make(storage(), options)

/** The in-memory EventLog; each use of the layer is a separate, empty log. */
export const layer = (options?: MemoryEventLogOptions): Layer.Layer<EventLog> =>
  Layer.effect(
    EventLog,
    Effect.sync(() => make(options))
  )
