/**
 * The process's idempotent producer (acks from all in-sync replicas), with
 * the two guarantees a send needs when the broker misbehaves:
 *
 * - Bounded: a send answers within `sendTimeout`. kafkajs retries a produce
 *   for up to ~15 s (and longer while it reconnects); the caller is answered
 *   with an EventLogError when the time is up. Such a send may still be
 *   written — the protocol tells clients to send again with the same
 *   clientMsgId, which the actors store once.
 * - Recoverable: an idempotent producer whose sequence numbers no longer
 *   match the broker's (OUT_OF_ORDER_SEQUENCE_NUMBER after a broker restart,
 *   an unknown producer id, a fenced epoch) fails every later send for good.
 *   On such an error the producer is replaced by a new one — a new producer
 *   id — so the node sends again as soon as the broker is back.
 *
 * Each record's position comes from the broker's acknowledgement (the
 * partition's base offset plus the record's index in that partition's part
 * of the batch).
 */
import { Duration, Effect, type Scope, SynchronizedRef } from "effect"
import type { Message, Producer } from "kafkajs"
import { EventLogError, type RecordPosition } from "../../ports/EventLog.ts"
import { attempt, errorTypes } from "./errors.ts"

/** Producer errors after which the producer's sequence state is broken for good. */
const fatalTypes = new Set([
  "OUT_OF_ORDER_SEQUENCE_NUMBER",
  "UNKNOWN_PRODUCER_ID",
  "INVALID_PRODUCER_EPOCH",
  "INVALID_PRODUCER_ID_MAPPING",
  "DUPLICATE_SEQUENCE_NUMBER"
])

export const isFatal = (error: EventLogError): boolean => errorTypes(error.cause).some((type) => fatalTypes.has(type))

export interface ProducerOptions {
  /** Makes a new kafkajs producer; `chosen` records the partition its partitioner picked for each message. */
  readonly create: (chosen: WeakMap<object, number>) => Producer
  readonly where: string
  /** How long a send may take before it is answered with an error. */
  readonly sendTimeout: Duration.Duration
}

export interface KafkaProducer {
  /** Sends the messages to `topic`; answers each one's position. */
  readonly send: (
    topic: string,
    messages: ReadonlyArray<Message>
  ) => Effect.Effect<ReadonlyArray<RecordPosition>, EventLogError>
}

interface Current {
  readonly client: Producer
  /** Bumped on every replacement, so concurrent failures replace it once. */
  readonly generation: number
}

export const make = (options: ProducerOptions): Effect.Effect<KafkaProducer, EventLogError, Scope.Scope> =>
  Effect.gen(function* () {
    const chosen = new WeakMap<object, number>()
    const connect = (generation: number) =>
      Effect.suspend(() => {
        const client = options.create(chosen)
        return attempt(`connecting the producer to ${options.where}`, () => client.connect()).pipe(
          Effect.as<Current>({ client, generation })
        )
      })
    const disconnect = (client: Producer) =>
      attempt(`disconnecting the producer from ${options.where}`, () => client.disconnect()).pipe(
        Effect.timeoutOption("5 seconds"),
        Effect.catch((error) => Effect.logWarning(error.message))
      )

    const current = yield* Effect.acquireRelease(connect(0).pipe(Effect.flatMap(SynchronizedRef.make)), (ref) =>
      SynchronizedRef.get(ref).pipe(Effect.flatMap(({ client }) => disconnect(client)))
    )

    /** Replaces the producer that failed (unless another send replaced it already); the old one is let go. */
    const replace = (failed: Current, error: EventLogError) =>
      SynchronizedRef.updateEffect(current, (now) => {
        if (now.generation !== failed.generation) return Effect.succeed(now)
        return Effect.logWarning(
          `the producer is in a fatal state (${error.message}); replacing it with a new producer id`
        ).pipe(
          Effect.andThen(connect(failed.generation + 1)),
          Effect.tap(() => Effect.forkDetach(disconnect(failed.client)))
        )
      }).pipe(
        // Not connected now (the broker is still down): the next send tries again.
        Effect.catch((cause) => Effect.logWarning(`replacing the producer failed: ${cause.message}`))
      )

    const send = (topic: string, messages: ReadonlyArray<Message>) =>
      Effect.gen(function* () {
        const producer = yield* SynchronizedRef.get(current)
        const acknowledged = yield* attempt(
          `producing ${messages.length} records to ${topic} on ${options.where}`,
          () => producer.client.send({ topic, messages: [...messages], acks: -1 })
        ).pipe(
          Effect.timeoutOrElse({
            duration: options.sendTimeout,
            orElse: () =>
              Effect.fail(
                new EventLogError({
                  message: `producing ${messages.length} records to ${topic} on ${options.where}: no acknowledgement within ${Duration.format(options.sendTimeout)} (they may still be written)`
                })
              )
          }),
          Effect.tapError((error) => (isFatal(error) ? replace(producer, error) : Effect.void))
        )
        const baseOffsets = new Map(acknowledged.map((ack) => [ack.partition, Number(ack.baseOffset)]))
        const seen = new Map<number, number>()
        const positions: Array<RecordPosition> = []
        for (const message of messages) {
          const partition = chosen.get(message)
          const base = partition === undefined ? undefined : baseOffsets.get(partition)
          if (partition === undefined || base === undefined || Number.isNaN(base)) {
            return yield* new EventLogError({
              message: `producing to ${topic}: the broker's acknowledgement does not cover partition ${partition}`
            })
          }
          const index = seen.get(partition) ?? 0
          seen.set(partition, index + 1)
          positions.push({ partition, offset: base + index })
        }
        return positions
      })

    return { send }
  })
