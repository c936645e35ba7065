/**
 * The EventLog port on Kafka (cluster mode), through kafkajs. Every kafkajs
 * call stays in this folder: this file (topics, produce, ping) wires
 * Client.ts (the kafkajs client and admin), Producer.ts (the bounded,
 * replaceable idempotent producer), ClaimConsumer.ts (`consume`) with
 * Fetching.ts, ClaimLifecycle.ts, Assignment.ts, Handover.ts and Claim.ts,
 * and Tail.ts (`tail`).
 *
 * Producing: one idempotent producer (acks from all in-sync replicas) shared
 * by the process, bounded in time and replaced when the broker leaves it in
 * a fatal state (Producer.ts).
 *
 * Consuming: one kafkajs consumer per `consume`. kafkajs has no hook that
 * runs before a member rejoins a rebalancing group (Java's
 * onPartitionsRevoked): it rejoins as soon as it notices the rebalance, so a
 * revoked partition's new owner could read the committed offset before the
 * old owner's handler has drained and made its final commit. The hand-over
 * is therefore made explicit, with a partition assigner of our own:
 *
 * - In its JoinGroup metadata every member lists the partitions it holds: the
 *   claims it has started, and the revoked ones still draining. The leader
 *   uses that to keep partitions where they are (a sticky, balanced
 *   assignment), and nothing else.
 * - A member assigned a partition pauses it, reads the group description and,
 *   if another member listed the partition, waits until that member's release
 *   marker appears in the partition's committed-offset metadata.
 * - A revoked claim's records end; when its handler has finished (drained and
 *   committed) the member commits the partition's final offset once more with
 *   the release marker, the partition's last write by that member.
 * - The new owner then seeks to the committed offset and starts its claim.
 *
 * While a member is joining it starts no claim, so the holdings it announced
 * stay true until it has its new assignment. A member that is replaced in the
 * group (its session expired) loses its claims: their records end and their
 * commits fail, since another member may already own the partitions.
 *
 * Tail: a throwaway consumer group per call that seeks each non-empty
 * partition to its last offset, reads one record there and leaves (`tail`).
 *
 * Back-pressure: `eachBatch` only buffers a fetched batch and returns; a
 * claim whose buffer is over its high-water mark has its partition paused,
 * and resumed once the handler has pulled it down. (Blocking inside
 * `eachBatch` instead would stall every partition the same broker leads:
 * kafkajs fetches the next batches only when all the current ones are done.)
 */
import { Duration, Effect, Layer, type Scope } from "effect"
import { type Message, Partitioners } from "kafkajs"
import { EventLog, EventLogError, type ProduceRecord, type RecordPosition } from "../../ports/EventLog.ts"
import * as ClaimConsumer from "./ClaimConsumer.ts"
import * as Client from "./Client.ts"
import { attempt, kafkaRetry, toBuffer } from "./errors.ts"
import * as KafkaProducer from "./Producer.ts"
import * as Tail from "./Tail.ts"

export interface KafkaEventLogOptions {
  readonly brokers: ReadonlyArray<string>
  readonly clientId?: string | undefined
  /** Consumer group session timeout (default 30s; the broker allows 6s to 300s by default). */
  readonly sessionTimeoutMs?: number | undefined
  /** Consumer heartbeat interval (default a third of the session timeout, at most 3s). */
  readonly heartbeatIntervalMs?: number | undefined
  /** How long the group waits for its members to rejoin a rebalance (default 60s). */
  readonly rebalanceTimeoutMs?: number | undefined
  /**
   * How long a revoked claim's handler may take to drain before it is
   * interrupted (default 30s). A new owner waits for the old one's release at
   * most this long plus 30 seconds before it takes the partition over anyway.
   */
  readonly drainTimeout?: Duration.Input | undefined
  /** Partitions of a topic created implicitly by `produce` or `consume` (default 8). */
  readonly partitions?: number | undefined
  /** Longest a fetch waits for records; also bounds how late a resumed partition is fetched (default 500ms). */
  readonly maxWaitTimeMs?: number | undefined
  /**
   * How long a produce may wait for the brokers' acknowledgement before it
   * fails (default 5s); a produce that timed out may still be written.
   */
  readonly produceTimeout?: Duration.Input | undefined
  /** How long `tail` may take to join its throwaway group and read the last records (default 30s). */
  readonly tailTimeout?: Duration.Input | undefined
}

export const make = (options: KafkaEventLogOptions): Effect.Effect<EventLog["Service"], EventLogError, Scope.Scope> =>
  Effect.gen(function* () {
    const sessionTimeout = options.sessionTimeoutMs ?? 30_000
    const heartbeatInterval = options.heartbeatIntervalMs ?? Math.min(3_000, Math.floor(sessionTimeout / 3))
    const rebalanceTimeout = options.rebalanceTimeoutMs ?? 60_000
    const drainTimeout = Duration.fromInputUnsafe(options.drainTimeout ?? Duration.seconds(30))
    const implicitPartitions = options.partitions ?? 8
    const tailTimeout = Duration.fromInputUnsafe(options.tailTimeout ?? Duration.seconds(30))
    const produceTimeout = Duration.fromInputUnsafe(options.produceTimeout ?? Duration.seconds(5))
    const clientId = options.clientId ?? "harmony"
    const maxWaitTime = options.maxWaitTimeMs ?? 500

    const client = yield* Client.make({
      brokers: options.brokers,
      clientId,
      sessionTimeout,
      heartbeatInterval,
      rebalanceTimeout,
      maxWaitTime
    })
    const { kafka, admin, where } = client

    const producer = yield* KafkaProducer.make({
      where,
      sendTimeout: produceTimeout,
      create: (chosen) =>
        kafka.producer({
          idempotent: true,
          // kafkajs serialises requests per broker for the idempotent producer;
          // one in flight keeps the broker's sequence checks trivially in order.
          maxInFlightRequests: 1,
          // Retries are safe for an idempotent producer (the broker drops
          // duplicates by sequence number); the send as a whole is bounded by
          // `produceTimeout` all the same.
          retry: kafkaRetry,
          createPartitioner: () => {
            // Kafka's murmur2 partitioner, as the Java client: keys map alike from any producer.
            const partitioner = Partitioners.DefaultPartitioner()
            return (args) => {
              const partition = partitioner(args)
              chosen.set(args.message, partition)
              return partition
            }
          }
        })
    })

    const partitionCounts = new Map<string, number>()

    const createTopic = (topic: string, partitions: number): Effect.Effect<void, EventLogError> =>
      Effect.gen(function* () {
        if (topic === "") return yield* new EventLogError({ message: "topic name must not be empty" })
        if (!Number.isSafeInteger(partitions) || partitions < 1) {
          return yield* new EventLogError({
            message: `topic ${topic}: partitions must be a positive integer, got ${partitions}`
          })
        }
        // Waits for the new partitions' leaders, so a produce right after succeeds.
        yield* attempt(`creating topic ${topic} on ${where}`, () =>
          admin.createTopics({ topics: [{ topic, numPartitions: partitions }], waitForLeaders: true })
        )
        yield* partitionCount(topic)
      })

    const partitionCount = (topic: string): Effect.Effect<number, EventLogError> =>
      attempt(`reading the metadata of topic ${topic} from ${where}`, () =>
        admin.fetchTopicMetadata({ topics: [topic] })
      ).pipe(
        Effect.map(({ topics }) => topics.find((t) => t.name === topic)?.partitions.length ?? 0),
        Effect.tap((count) => Effect.sync(() => partitionCounts.set(topic, count)))
      )

    /** Creates a topic used before `createTopic`, as the in-process log does. */
    const ensureTopic = (topic: string): Effect.Effect<number, EventLogError> =>
      Effect.suspend(() => {
        if (topic === "") return Effect.fail(new EventLogError({ message: "topic name must not be empty" }))
        const known = partitionCounts.get(topic)
        if (known !== undefined && known > 0) return Effect.succeed(known)
        // Listing, not describing: kafkajs retries a missing topic's metadata for seconds.
        return attempt(`listing the topics on ${where}`, () => admin.listTopics()).pipe(
          Effect.flatMap((topics) =>
            topics.includes(topic) ? partitionCount(topic) : createTopic(topic, implicitPartitions)
          ),
          Effect.map(() => partitionCounts.get(topic) ?? 0)
        )
      })

    const produce = (
      topic: string,
      records: ReadonlyArray<ProduceRecord>
    ): Effect.Effect<ReadonlyArray<RecordPosition>, EventLogError> =>
      Effect.gen(function* () {
        if (records.length === 0) return []
        yield* ensureTopic(topic)
        const messages = records.map((record): Message => {
          const message: Message = { key: record.key, value: toBuffer(record.value) }
          if (record.headers !== undefined) message.headers = { ...record.headers }
          return message
        })
        return yield* producer.send(topic, messages)
      })

    const ping = attempt(`reaching ${where}`, () => admin.describeCluster()).pipe(
      Effect.timeoutOrElse({
        duration: "5 seconds",
        orElse: () => Effect.fail(new EventLogError({ message: `reaching ${where}: no answer within 5 seconds` }))
      }),
      Effect.asVoid
    )

    const consume = ClaimConsumer.make(client, { drainTimeout, ensureTopic })
    const tail = Tail.make(client, tailTimeout)

    return EventLog.of({ createTopic, produce, consume, tail, ping })
  })

/** The EventLog on Kafka: an admin client and one idempotent producer for the layer's lifetime. */
export const layer = (options: KafkaEventLogOptions): Layer.Layer<EventLog, EventLogError> =>
  Layer.effect(EventLog, make(options))
