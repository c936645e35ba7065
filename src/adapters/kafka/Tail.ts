/**
 * `tail`: the last records of every non-empty partition of a topic, read
 * through a throwaway consumer group (kafkajs reads only as a member of a
 * group).
 */
import { randomUUID } from "node:crypto"
import { Deferred, Duration, Effect, Fiber, Schedule } from "effect"
import { AssignerProtocol, type Consumer, type EachBatchPayload, type PartitionAssigner } from "kafkajs"
import { EventLogError, type LogRecord } from "../../ports/EventLog.ts"
import type { KafkaClient } from "./Client.ts"
import { attempt, describeError, isRetriable, toLogRecord } from "./errors.ts"

/** The assignment protocol of `tail`'s throwaway groups (one member, given exactly the partitions to read). */
const tailProtocolName = "harmony-tail"
/** How long `tail` waits for its throwaway consumer to leave, and for its group's deletion. */
const tailCleanupTimeout = Duration.seconds(10)

export const make = (client: KafkaClient, tailTimeout: Duration.Duration) => {
  const { admin, where, runDetached, disconnect } = client
  const { clientId } = client.settings
  /**
   * Reads the records from `ranges[partition].from` to `.to` (inclusive)
   * of each listed partition.
   * kafkajs reads only as a member of a consumer group, so this joins a
   * throwaway group of its own (a fresh id, so it is the only member, and an
   * assigner that gives it exactly the listed partitions), seeks each
   * partition to its offset, keeps the record found there and pauses the
   * partition, and leaves once it has one record per partition. Nothing is
   * committed; the group is deleted afterwards so such groups do not pile
   * up on the coordinator.
   */
  const readRange = (topic: string, ranges: ReadonlyMap<number, { readonly from: number; readonly to: number }>) =>
    Effect.gen(function* () {
      const group = `${clientId}-tail-${randomUUID()}`
      const describe = `the tail of ${topic} (throwaway group ${group})`
      const partitions = [...ranges.keys()].sort((a, b) => a - b)
      const found = new Map<number, Array<LogRecord>>()
      const complete = new Set<number>()
      const done = yield* Deferred.make<void, EventLogError>()

      const assigner: PartitionAssigner = () => ({
        name: tailProtocolName,
        version: 1,
        protocol: ({ topics }) => ({
          name: tailProtocolName,
          metadata: AssignerProtocol.MemberMetadata.encode({ version: 1, topics, userData: Buffer.alloc(0) })
        }),
        assign: async ({ members }) =>
          members.map((member, index) => ({
            memberId: member.memberId,
            memberAssignment: AssignerProtocol.MemberAssignment.encode({
              version: 1,
              assignment: index === 0 ? { [topic]: partitions } : {},
              userData: Buffer.alloc(0)
            })
          }))
      })

      // A crash fails the read (below) rather than rejoining the group.
      const consumer: Consumer = client.consumer({ groupId: group, assigner, restartOnFailure: false })

      const fail = (message: string, cause?: unknown): void => {
        Deferred.doneUnsafe(done, Effect.fail(new EventLogError({ message: `${describe}: ${message}`, cause })))
      }

      consumer.on(consumer.events.GROUP_JOIN, (event) => {
        try {
          for (const partition of event.payload.memberAssignment[topic] ?? []) {
            const range = ranges.get(partition)
            if (range !== undefined && !complete.has(partition)) {
              found.set(partition, [])
              consumer.seek({ topic, partition, offset: String(range.from) })
            }
          }
        } catch (error) {
          fail(`seeking: ${describeError(error)}`, error)
        }
      })
      consumer.on(consumer.events.CRASH, (event) =>
        fail(`the consumer crashed (${describeError(event.payload.error)})`, event.payload.error)
      )

      const eachBatch = async ({ batch }: EachBatchPayload): Promise<void> => {
        const range = ranges.get(batch.partition)
        if (range === undefined || complete.has(batch.partition)) return
        const records = found.get(batch.partition) ?? []
        found.set(batch.partition, records)
        // Records produced after the offsets were read come later; only the range counts.
        for (const message of batch.messages) {
          const offset = Number(message.offset)
          if (offset >= range.from && offset <= range.to && offset > (records.at(-1)?.offset ?? -1)) {
            records.push(toLogRecord(topic, batch.partition, message))
          }
        }
        if ((records.at(-1)?.offset ?? -1) < range.to) return
        complete.add(batch.partition)
        try {
          consumer.pause([{ topic, partitions: [batch.partition] }])
        } catch (error) {
          // Only saves fetches; the read is complete either way.
          runDetached(Effect.logDebug(`${describe}: pausing a read partition failed`, error))
        }
        if (complete.size === ranges.size) Deferred.doneUnsafe(done, Effect.void)
      }

      /** `consumer.run`, which settles once the consumer has joined (or failed to). */
      let running: Promise<void> | undefined
      const cleanup = Effect.promise(async () => {
        // A timeout can interrupt the wait for `run` but not kafkajs's join:
        // disconnecting mid-join would leave a member that joins afterwards
        // and keeps fetching, so the join is let finish first.
        await running?.catch(() => undefined)
      }).pipe(
        // Leaves the group first: a group with a member cannot be deleted.
        Effect.andThen(disconnect(`consumer of ${describe}`, consumer)),
        Effect.andThen(attempt(`deleting ${describe}`, () => admin.deleteGroups([group]))),
        Effect.catch((error) => Effect.logWarning(error.message))
      )
      yield* Effect.acquireRelease(
        attempt(`connecting the consumer of ${describe} to ${where}`, () => consumer.connect()).pipe(
          Effect.onError(() => disconnect(`consumer of ${describe}`, consumer))
        ),
        () =>
          // Detached, so a slow clean-up finishes in the background rather than holding up the caller.
          Fiber.await(runDetached(cleanup)).pipe(
            Effect.timeoutOrElse({
              duration: tailCleanupTimeout,
              orElse: () =>
                Effect.logWarning(
                  `${describe}: cleaning up takes longer than ${Duration.format(tailCleanupTimeout)}; it goes on in the background`
                )
            }),
            Effect.asVoid
          )
      )
      yield* Effect.gen(function* () {
        yield* attempt(`subscribing the consumer of ${describe}`, () => consumer.subscribe({ topic }))
        yield* attempt(`running the consumer of ${describe}`, () => {
          running = consumer.run({ autoCommit: false, partitionsConsumedConcurrently: partitions.length, eachBatch })
          return running
        })
        yield* Deferred.await(done)
      }).pipe(
        Effect.timeoutOrElse({
          duration: tailTimeout,
          orElse: () =>
            Effect.fail(
              new EventLogError({
                message: `${describe}: read ${complete.size} of ${ranges.size} partitions' last records within ${Duration.format(tailTimeout)}`
              })
            )
        })
      )
      return partitions.flatMap((partition) => found.get(partition) ?? [])
    }).pipe(Effect.scoped)

  /**
   * The last record of each non-empty partition: the high watermark (the
   * offset the next record will get) and the low one (the first offset
   * retention kept) from the admin client, then the record at high - 1 of
   * every partition with high > low. The answer is the tail as of that
   * offset read; records produced meanwhile are ignored.
   *
   * Edge cases this adapter's own topics never meet (its producer is
   * idempotent but not transactional, and it creates no compacted topics),
   * which would make the read fail at `tailTimeout` rather than answer:
   * - A transactional producer's commit or abort marker takes an offset
   *   of its own, so high - 1 can be a marker (or an aborted record) that
   *   the read-committed consumer never delivers; and while a transaction
   *   is open, the last stable offset lags the high watermark, so the
   *   fetch does not reach high - 1 at all. Answering the last committed
   *   record would mean reading backwards from high - 1.
   * - Compaction keeps the newest record of every key, and high - 1 is the
   *   newest of its key, so it survives; only a tombstone past
   *   delete.retention.ms in a rolled segment can vanish.
   * - Retention deleting the whole partition between the offset read and
   *   the fetch (the fetch goes out of range).
   */
  const tail = (topic: string, count = 1): Effect.Effect<ReadonlyArray<LogRecord>, EventLogError> =>
    Effect.gen(function* () {
      if (topic === "") return yield* new EventLogError({ message: "topic name must not be empty" })
      if (!Number.isSafeInteger(count) || count < 1) {
        return yield* new EventLogError({ message: "tail count must be a positive integer" })
      }
      // Listing, not describing: kafkajs retries a missing topic's metadata for seconds.
      const topics = yield* attempt(`listing the topics on ${where}`, () => admin.listTopics())
      if (!topics.includes(topic)) return []
      const watermarks = yield* attempt(`reading the offsets of ${topic} on ${where}`, () =>
        admin.fetchTopicOffsets(topic)
      ).pipe(
        // kafkajs's admin gives up at once on NOT_LEADER_FOR_PARTITION, which
        // a partition answers until it has loaded (right after the topic is
        // created) or while its leadership moves.
        Effect.retry({ while: isRetriable, schedule: Schedule.exponential("100 millis"), times: 6 })
      )
      const ranges = new Map<number, { from: number; to: number }>()
      for (const { partition, high, low } of watermarks) {
        if (Number(high) > Number(low)) {
          ranges.set(partition, { from: Math.max(Number(low), Number(high) - count), to: Number(high) - 1 })
        }
      }
      if (ranges.size === 0) return []
      return yield* readRange(topic, ranges).pipe(
        // A retriable crash — the group's coordinator still loading, right
        // after the broker starts — ends the throwaway consumer for good
        // (restartOnFailure is off); a fresh group a moment later joins.
        Effect.retry({
          while: isRetriable,
          schedule: Schedule.exponential("200 millis").pipe(Schedule.jittered),
          times: 5
        })
      )
    })

  return tail
}
