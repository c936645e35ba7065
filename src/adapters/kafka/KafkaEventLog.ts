/**
 * The EventLog port on Kafka (cluster mode), through kafkajs. Every kafkajs
 * import stays in this file.
 *
 * Producing: one idempotent producer (acks from all in-sync replicas) shared
 * by the process; each record's position comes from the broker's
 * acknowledgement (the partition's base offset plus the record's index in
 * that partition's part of the batch).
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
import { randomUUID } from "node:crypto"
import {
  Cause,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  FiberSet,
  Layer,
  Queue,
  Schedule,
  type Scope,
  Stream
} from "effect"
import type * as Arr from "effect/Array"
import {
  type Admin,
  AssignerProtocol,
  type Consumer,
  type EachBatchPayload,
  Kafka,
  type LogEntry,
  logLevel,
  type Message,
  type PartitionAssigner,
  Partitioners
} from "kafkajs"
import {
  EventLog,
  EventLogError,
  type ConsumeOptions,
  type LogRecord,
  type PartitionClaim,
  type ProduceRecord,
  type RecordPosition
} from "../../ports/EventLog.ts"
import { attempt, describeError, isRebalancing, isRetriable, kafkaRetry, toBuffer, toLogRecord } from "./errors.ts"
import * as KafkaProducer from "./Producer.ts"

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

const protocolName = "harmony-handover"
/** The assignment protocol of `tail`'s throwaway groups (one member, given exactly the partitions to read). */
const tailProtocolName = "harmony-tail"
/** How long `tail` waits for its throwaway consumer to leave, and for its group's deletion. */
const tailCleanupTimeout = Duration.seconds(10)
const releasePrefix = "harmony:released:"
const maxChunk = 512
/** How often claims' end offsets (consumer lag) are refreshed from the brokers. */
const endOffsetRefresh = Duration.seconds(5)
/** A claim's buffer above this many records pauses its partition... */
const highWater = 1024
/** ...until the handler has pulled it down to this many. */
const lowWater = 256

/** What a member announces in its JoinGroup metadata. */
interface Holdings {
  readonly topic: string
  /** Claims it holds: started, or revoked and still draining. */
  readonly held: ReadonlyArray<{ readonly partition: number; readonly id: string }>
}

/** A member's holdings, or undefined (reported to `invalid`) when its metadata is not ours. */
const decodeHoldings = (metadata: Buffer, invalid: (reason: string) => void): Holdings | undefined => {
  try {
    const decoded = AssignerProtocol.MemberMetadata.decode(metadata)
    if (decoded === null || decoded.userData.length === 0) {
      invalid("its metadata has no holdings")
      return undefined
    }
    const parsed = JSON.parse(decoded.userData.toString("utf8")) as Holdings
    if (typeof parsed.topic === "string" && Array.isArray(parsed.held)) return parsed
    invalid("its holdings are malformed")
    return undefined
  } catch (error) {
    invalid(`its metadata does not decode (${describeError(error)})`)
    return undefined
  }
}

/**
 * Sticky balanced assignment: members keep what they hold up to their fair
 * share, the rest goes to those below it. Members holding more get the larger
 * shares first, so a stable group keeps every partition where it is.
 */
export const stickyAssignment = (
  partitions: ReadonlyArray<number>,
  members: ReadonlyArray<{ readonly memberId: string; readonly held: ReadonlyArray<number> }>
): Map<string, Array<number>> => {
  const result = new Map<string, Array<number>>(members.map((m) => [m.memberId, []]))
  if (members.length === 0) return result
  const byId = [...members].sort((a, b) => (a.memberId < b.memberId ? -1 : a.memberId > b.memberId ? 1 : 0))
  const base = Math.floor(partitions.length / members.length)
  const extra = partitions.length % members.length
  const quota = new Map<string, number>()
  const bySize = [...byId].sort((a, b) => b.held.length - a.held.length)
  for (const [index, member] of bySize.entries()) quota.set(member.memberId, base + (index < extra ? 1 : 0))
  const exists = new Set(partitions)
  const taken = new Set<number>()
  for (const member of byId) {
    const mine = result.get(member.memberId)!
    for (const partition of [...member.held].sort((a, b) => a - b)) {
      if (mine.length >= quota.get(member.memberId)! || !exists.has(partition) || taken.has(partition)) continue
      mine.push(partition)
      taken.add(partition)
    }
  }
  const free = partitions.filter((p) => !taken.has(p))
  for (const member of byId) {
    const mine = result.get(member.memberId)!
    while (mine.length < quota.get(member.memberId)! && free.length > 0) mine.push(free.shift()!)
    mine.sort((a, b) => a - b)
  }
  return result
}

/** Logs why a claim's handler is started again. */
const reportEarlyEnd = (exit: Exit.Exit<void>): Effect.Effect<void> =>
  Exit.isSuccess(exit)
    ? Effect.logWarning("claim handler returned before its claim ended; restarting it from the committed offset")
    : Cause.hasInterruptsOnly(exit.cause)
      ? Effect.logWarning(
          "claim handler was interrupted before its claim ended; restarting it from the committed offset"
        )
      : Effect.logError("claim handler failed; restarting it from the committed offset", exit.cause)

interface Claim {
  readonly partition: number
  /** Unique per claim: announced to the group and written in the release marker. */
  readonly id: string
  /**
   * starting: waiting for the previous holder's release; active: acquired;
   * released: done, its release marker written; lost: the member was replaced.
   */
  phase: "starting" | "active" | "released" | "lost"
  /** Completed when the partition is revoked (or lost): the records end. */
  readonly revoked: Deferred.Deferred<void>
  /** The current handler run's records; undefined while (re)starting. */
  buffer: Queue.Queue<LogRecord, Cause.Done> | undefined
  /** Next offset the buffer expects: anything fetched below it is a duplicate. */
  nextOffset: number
  /** One past the last record the handler has pulled: the highest committable offset. */
  delivered: number
  startOffset: number
  /** The partition's end offset as last seen: a fetch's high watermark, or the periodic refresh. */
  endOffset: number
  lastCommitted: number | undefined
  backpressured: boolean
  fiber: Fiber.Fiber<void> | undefined
}

export const make = (options: KafkaEventLogOptions): Effect.Effect<EventLog["Service"], EventLogError, Scope.Scope> =>
  Effect.gen(function* () {
    const sessionTimeout = options.sessionTimeoutMs ?? 30_000
    const heartbeatInterval = options.heartbeatIntervalMs ?? Math.min(3_000, Math.floor(sessionTimeout / 3))
    const rebalanceTimeout = options.rebalanceTimeoutMs ?? 60_000
    const drainTimeout = Duration.fromInputUnsafe(options.drainTimeout ?? Duration.seconds(30))
    const handoverTimeout = Duration.sum(drainTimeout, Duration.seconds(30))
    const implicitPartitions = options.partitions ?? 8
    const tailTimeout = Duration.fromInputUnsafe(options.tailTimeout ?? Duration.seconds(30))
    const produceTimeout = Duration.fromInputUnsafe(options.produceTimeout ?? Duration.seconds(5))
    const clientId = options.clientId ?? "harmony"
    const maxWaitTime = options.maxWaitTimeMs ?? 500
    const brokers = [...options.brokers]
    const where = `Kafka at ${brokers.join(",")}`

    const services = yield* Effect.context<never>()
    const runDetached = Effect.runForkWith(services)
    const kafka = new Kafka({
      brokers,
      clientId,
      connectionTimeout: 3_000,
      retry: kafkaRetry,
      // kafkajs logs its retries and rebalances at error level as a matter of
      // course, and the adapter reports real failures as EventLogErrors, so
      // these are warnings in Effect's log; the error responses its
      // connections log (rebalancing, topic exists, ...) are handled above
      // them and only debug.
      logLevel: logLevel.ERROR,
      logCreator:
        () =>
        ({ namespace, log }: LogEntry) => {
          const { message, timestamp: _timestamp, logger: _logger, ...extra } = log
          const text = `kafkajs ${namespace}: ${message}`
          const entry = namespace === "Connection" ? Effect.logDebug(text) : Effect.logWarning(text)
          runDetached(entry.pipe(Effect.annotateLogs(extra)))
        }
    })

    const disconnect = (what: string, client: { disconnect: () => Promise<void> }) =>
      attempt(`disconnecting the ${what} from ${where}`, () => client.disconnect()).pipe(
        Effect.catch((error) => Effect.logWarning(error.message))
      )

    const admin: Admin = yield* Effect.acquireRelease(
      Effect.suspend(() => {
        const client = kafka.admin({ retry: kafkaRetry })
        return attempt(`connecting the admin client to ${where}`, () => client.connect()).pipe(Effect.as(client))
      }),
      (client) => disconnect("admin client", client)
    )

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

    const consume = (options: ConsumeOptions): Effect.Effect<void, EventLogError, Scope.Scope> =>
      Effect.gen(function* () {
        const { group, topic } = options
        if (group === "") return yield* new EventLogError({ message: "consumer group name must not be empty" })
        const partitions = yield* ensureTopic(topic)
        const describe = `group ${group} on ${topic}`
        // Created before the consumer's release is registered, so claim fibers
        // outlive the graceful stop and are only interrupted if anything is left.
        const run = yield* FiberSet.makeRuntime<never, void, never>()

        const claims = new Map<number, Claim>()
        const draining = new Set<Claim>()
        let frozen = true
        let stopping = false
        let memberId: string | undefined
        const pausedByUs = new Set<number>()
        const joined = yield* Deferred.make<void, EventLogError>()

        const log = (effect: Effect.Effect<void>, partition?: number) =>
          effect.pipe(Effect.annotateLogs(partition === undefined ? { group, topic } : { group, topic, partition }))

        // Sync callbacks run inside kafkajs's join: a throw there would break
        // the join, so every failure is logged instead.
        const guard = (what: string, f: () => void): void => {
          try {
            f()
          } catch (error) {
            runDetached(log(Effect.logError(`${describe}: ${what}: ${describeError(error)}`)))
          }
        }

        const shouldFetch = (partition: number): boolean => {
          const claim = claims.get(partition)
          return claim !== undefined && claim.phase === "active" && claim.buffer !== undefined && !claim.backpressured
        }

        const applyFetch = (partition: number, force = false): void =>
          guard(`pausing or resuming partition ${partition}`, () => {
            const fetch = shouldFetch(partition)
            if (fetch && (force || pausedByUs.has(partition))) {
              consumer.resume([{ topic, partitions: [partition] }])
              pausedByUs.delete(partition)
            } else if (!fetch && (force || !pausedByUs.has(partition))) {
              consumer.pause([{ topic, partitions: [partition] }])
              pausedByUs.add(partition)
            }
          })

        const holdingsOf = (metadata: Buffer): Holdings | undefined =>
          decodeHoldings(metadata, (reason) =>
            runDetached(log(Effect.logWarning(`${describe}: a member's holdings are ignored: ${reason}`)))
          )

        const holdings = (): Holdings => ({
          topic,
          held: [
            ...[...claims.values()].filter((c) => c.phase === "active"),
            ...[...draining].filter((c) => c.phase === "active")
          ].map((c) => ({ partition: c.partition, id: c.id }))
        })

        const assigner: PartitionAssigner = ({ cluster }) => ({
          name: protocolName,
          version: 1,
          protocol: ({ topics }) => {
            // Joining: no claim starts until the new assignment is known, so
            // what this member announces stays true through the rebalance.
            frozen = true
            return {
              name: protocolName,
              metadata: AssignerProtocol.MemberMetadata.encode({
                version: 1,
                topics,
                userData: Buffer.from(JSON.stringify(holdings()), "utf8")
              })
            }
          },
          assign: async ({ members, topics }) => {
            const assignment = new Map<string, Record<string, Array<number>>>(members.map((m) => [m.memberId, {}]))
            for (const assigned of topics) {
              const subscribers = members.flatMap((member) => {
                const metadata = AssignerProtocol.MemberMetadata.decode(member.memberMetadata)
                if (metadata === null || !metadata.topics.includes(assigned)) return []
                const held = holdingsOf(member.memberMetadata)
                return [
                  {
                    memberId: member.memberId,
                    held: held?.topic === assigned ? held.held.map((h) => h.partition) : []
                  }
                ]
              })
              const available = cluster
                .findTopicPartitionMetadata(assigned)
                .map((m) => m.partitionId)
                .sort((a, b) => a - b)
              for (const [member, owned] of stickyAssignment(available, subscribers)) {
                assignment.get(member)![assigned] = owned
              }
            }
            return [...assignment].map(([member, byTopic]) => ({
              memberId: member,
              memberAssignment: AssignerProtocol.MemberAssignment.encode({
                version: 1,
                assignment: byTopic,
                userData: Buffer.alloc(0)
              })
            }))
          }
        })

        const consumer: Consumer = kafka.consumer({
          groupId: group,
          partitionAssigners: [assigner],
          sessionTimeout,
          rebalanceTimeout,
          heartbeatInterval,
          maxWaitTimeInMs: maxWaitTime,
          allowAutoTopicCreation: false,
          retry: { ...kafkaRetry, restartOnFailure: async () => true }
        })

        /** Polls the group's committed offset of the partition. */
        const committed = (partition: number) =>
          attempt(`reading the committed offsets of ${describe}`, () =>
            admin.fetchOffsets({ groupId: group, topics: [topic] })
          ).pipe(
            Effect.map((answer) => {
              const entry = answer.find((t) => t.topic === topic)?.partitions.find((p) => p.partition === partition)
              return { offset: Number(entry?.offset ?? -1), metadata: entry?.metadata ?? null }
            })
          )

        /** Where a claim starts: the committed offset, or the partition's earliest when there is none. */
        const startingOffset = (partition: number) =>
          Effect.gen(function* () {
            const { offset } = yield* committed(partition)
            if (offset >= 0) return offset
            const offsets = yield* attempt(`reading the offsets of ${topic}`, () => admin.fetchTopicOffsets(topic))
            return Number(offsets.find((o) => o.partition === partition)?.low ?? 0)
          })

        /** Claim ids other members announced for the partition when they last joined. */
        const holders = (partition: number) =>
          attempt(`describing ${describe}`, () => admin.describeGroups([group])).pipe(
            Effect.map(({ groups }) => {
              const description = groups.find((g) => g.groupId === group)
              // Members' metadata is only described in a stable group.
              if (description?.state !== "Stable") return undefined
              return description.members.flatMap((member) => {
                const held = holdingsOf(member.memberMetadata)
                if (held?.topic !== topic) return []
                return held.held.filter((h) => h.partition === partition).map((h) => h.id)
              })
            })
          )

        /**
         * Waits until every member that announced the partition has released
         * it, or the hand-over deadline passes (a holder that hangs or died
         * without leaving the group).
         */
        const awaitRelease = (claim: Claim) =>
          Effect.gen(function* () {
            const deadline = Date.now() + Duration.toMillis(handoverTimeout)
            let waitingFor: ReadonlyArray<string> | undefined
            const released = new Set<string>()
            while (Date.now() < deadline) {
              const step = Effect.gen(function* () {
                if (waitingFor === undefined) {
                  waitingFor = yield* holders(claim.partition)
                  if (waitingFor !== undefined && waitingFor.length > 0) {
                    yield* log(
                      Effect.logDebug(
                        `partition ${claim.partition}: waiting for ${waitingFor.join(", ")} to release it`
                      ),
                      claim.partition
                    )
                  }
                }
                if (waitingFor === undefined) return false
                if (waitingFor.every((id) => id === claim.id || released.has(id))) return true
                const { metadata } = yield* committed(claim.partition)
                if (metadata?.startsWith(releasePrefix)) released.add(metadata.slice(releasePrefix.length))
                return waitingFor.every((id) => id === claim.id || released.has(id))
              })
              const done = yield* step.pipe(
                Effect.catch((error) =>
                  log(Effect.logWarning(`waiting for partition ${claim.partition}: ${error.message}`)).pipe(
                    Effect.as(false)
                  )
                )
              )
              if (done) return
              yield* Effect.sleep("100 millis")
            }
            yield* log(
              Effect.logWarning(
                `partition ${claim.partition} was not released by its previous holder within ${Duration.format(handoverTimeout)}; taking it over from the committed offset`
              ),
              claim.partition
            )
          })

        const isCurrent = (claim: Claim) =>
          !stopping && claims.get(claim.partition) === claim && !Deferred.isDoneUnsafe(claim.revoked)

        /**
         * Points the consumer at `offset` for the claim with a fresh buffer, and
         * lets the partition be fetched. False when the claim is no longer
         * current or the member is joining (the new assignment restarts it).
         */
        const open = (claim: Claim, offset: number, buffer: Queue.Queue<LogRecord, Cause.Done>): boolean => {
          if (!isCurrent(claim) || frozen) return false
          let opened = false
          guard(`seeking partition ${claim.partition} to ${offset}`, () => {
            consumer.seek({ topic, partition: claim.partition, offset: String(offset) })
            claim.phase = "active"
            claim.buffer = buffer
            claim.nextOffset = offset
            claim.delivered = offset
            claim.startOffset = offset
            claim.backpressured = false
            opened = true
          })
          applyFetch(claim.partition)
          return opened
        }

        const close = (claim: Claim): void => {
          const buffer = claim.buffer
          claim.buffer = undefined
          // Pulls check the revocation first, so nothing left in it is delivered.
          if (buffer !== undefined) Queue.endUnsafe(buffer)
          if (claims.get(claim.partition) === claim) applyFetch(claim.partition)
        }

        const records = (claim: Claim, buffer: Queue.Queue<LogRecord, Cause.Done>): Stream.Stream<LogRecord> =>
          Stream.fromPull(
            Effect.succeed(
              Effect.suspend(() => {
                if (Deferred.isDoneUnsafe(claim.revoked)) return Cause.done()
                return Effect.raceFirst(
                  Queue.takeBetween(buffer, 1, maxChunk),
                  Deferred.await(claim.revoked).pipe(Effect.andThen(Cause.done()))
                ).pipe(
                  Effect.map((chunk) => {
                    const last = chunk[chunk.length - 1]!
                    claim.delivered = Math.max(claim.delivered, last.offset + 1)
                    if (claim.backpressured && Queue.sizeUnsafe(buffer) <= lowWater) {
                      claim.backpressured = false
                      applyFetch(claim.partition)
                    }
                    return chunk as unknown as Arr.NonEmptyReadonlyArray<LogRecord>
                  })
                )
              })
            )
          )

        const commitOffset = (claim: Claim, offset: number, metadata: string | null) =>
          Effect.suspend(() => {
            if (claim.phase === "released" || claim.phase === "lost") {
              return Effect.fail(
                new EventLogError({
                  message: `commit on ${topic}/${claim.partition} (group ${group}): the claim has ${claim.phase === "lost" ? "been lost" : "ended"}`
                })
              )
            }
            return attempt(`committing offset ${offset} of ${topic}/${claim.partition} for group ${group}`, () =>
              consumer.commitOffsets([{ topic, partition: claim.partition, offset: String(offset), metadata }])
            )
          }).pipe(
            // kafkajs does not retry a commit the coordinator refused because
            // the group is rebalancing; it goes through with the new generation.
            Effect.retry({ while: isRebalancing, schedule: Schedule.spaced("250 millis"), times: 120 })
          )

        const partitionClaim = (claim: Claim, buffer: Queue.Queue<LogRecord, Cause.Done>): PartitionClaim => ({
          topic,
          partition: claim.partition,
          records: records(claim, buffer),
          revoked: Deferred.await(claim.revoked),
          commit: (nextOffset) =>
            Effect.gen(function* () {
              if (!Number.isSafeInteger(nextOffset) || nextOffset < 0 || nextOffset > claim.delivered) {
                return yield* new EventLogError({
                  message: `commit on ${topic}/${claim.partition} (group ${group}): ${nextOffset} is not an offset this claim has delivered up to`
                })
              }
              yield* commitOffset(claim, nextOffset, null)
              claim.lastCommitted = nextOffset
            }),
          endOffset: () => Math.max(claim.endOffset, claim.nextOffset, claim.startOffset)
        })

        /**
         * Runs the handler for as long as the claim lasts; one that ends early
         * (returned, died, interrupted) runs again from the committed offset,
         * so what it did not commit is redelivered.
         */
        const runHandler = (claim: Claim) =>
          Effect.gen(function* () {
            for (let attempt = 0; ; attempt++) {
              const buffer = claim.buffer
              if (buffer === undefined) return
              const handler = yield* Effect.forkChild(options.onClaim(partitionClaim(claim, buffer)))
              const exit = yield* Effect.raceFirst(
                Fiber.await(handler),
                Deferred.await(claim.revoked).pipe(
                  Effect.andThen(Effect.sleep(drainTimeout)),
                  Effect.andThen(
                    log(
                      Effect.logWarning(
                        `claim handler did not finish within ${Duration.format(drainTimeout)} of its revocation; interrupting it`
                      ),
                      claim.partition
                    )
                  ),
                  Effect.andThen(Fiber.interrupt(handler)),
                  Effect.andThen(Fiber.await(handler))
                )
              )
              if (Deferred.isDoneUnsafe(claim.revoked)) return
              yield* log(reportEarlyEnd(exit), claim.partition)
              close(claim)
              yield* Effect.raceFirst(
                Effect.sleep(Duration.millis(Math.min(100 * 2 ** attempt, 5_000))),
                Deferred.await(claim.revoked)
              )
              if (Deferred.isDoneUnsafe(claim.revoked)) return
              const offset = yield* startingOffset(claim.partition).pipe(
                Effect.retry({ schedule: Schedule.exponential("200 millis"), times: 5 }),
                Effect.catch((error) => log(Effect.logError(error.message), claim.partition).pipe(Effect.as(undefined)))
              )
              if (offset === undefined || !open(claim, offset, yield* Queue.unbounded<LogRecord, Cause.Done>())) return
            }
          })

        /** The claim's whole life: wait for the partition, run the handler, release it. */
        const lifecycle = (claim: Claim): Effect.Effect<void> =>
          Effect.gen(function* () {
            for (const previous of draining) {
              if (previous.partition === claim.partition && previous.fiber !== undefined && previous !== claim) {
                yield* Fiber.await(previous.fiber)
              }
            }
            const acquired = yield* Effect.raceFirst(
              Effect.gen(function* () {
                yield* awaitRelease(claim)
                const offset = yield* startingOffset(claim.partition).pipe(
                  Effect.retry({ schedule: Schedule.exponential("200 millis"), times: 5 })
                )
                const opened = open(claim, offset, yield* Queue.unbounded<LogRecord, Cause.Done>())
                if (opened)
                  yield* log(
                    Effect.logDebug(`claimed partition ${claim.partition} from offset ${offset}`),
                    claim.partition
                  )
                return opened
              }),
              Deferred.await(claim.revoked).pipe(Effect.as(false))
            ).pipe(
              Effect.catch((error) =>
                log(Effect.logError(`claiming partition ${claim.partition}: ${error.message}`), claim.partition).pipe(
                  Effect.as(false)
                )
              )
            )
            if (!acquired) return
            yield* runHandler(claim)
            if (claim.phase !== "active") return
            // The handler has drained and made its final commit: the marker
            // tells the next owner the committed offset is now final.
            const offset = claim.lastCommitted ?? claim.startOffset
            yield* commitOffset(claim, offset, `${releasePrefix}${claim.id}`).pipe(
              Effect.tap(() =>
                log(Effect.logDebug(`released partition ${claim.partition} at offset ${offset}`), claim.partition)
              ),
              Effect.catch((error) =>
                log(
                  Effect.logWarning(
                    `releasing partition ${claim.partition}: ${error.message}; its next owner takes it over after the hand-over timeout`
                  ),
                  claim.partition
                )
              )
            )
          }).pipe(
            Effect.ensuring(
              Effect.sync(() => {
                if (claim.phase !== "lost") claim.phase = "released"
                close(claim)
                draining.delete(claim)
                if (claims.get(claim.partition) === claim) claims.delete(claim.partition)
              })
            )
          )

        const startClaim = (partition: number): void => {
          const claim: Claim = {
            partition,
            id: randomUUID(),
            phase: "starting",
            revoked: Deferred.makeUnsafe<void>(),
            buffer: undefined,
            nextOffset: 0,
            delivered: 0,
            startOffset: 0,
            endOffset: 0,
            lastCommitted: undefined,
            backpressured: false,
            fiber: undefined
          }
          claims.set(partition, claim)
          claim.fiber = run(lifecycle(claim))
        }

        const revoke = (claim: Claim, lost: boolean): void => {
          if (lost) claim.phase = "lost"
          if (claims.get(claim.partition) === claim) claims.delete(claim.partition)
          if (claim.phase === "active" || claim.phase === "lost") draining.add(claim)
          Deferred.doneUnsafe(claim.revoked, Effect.void)
          applyFetch(claim.partition)
        }

        const onGroupJoin = (assignedNow: ReadonlyArray<number>, newMemberId: string): void => {
          // A new member id means this consumer was dropped from the group and
          // rejoined: others may own its partitions already.
          const lost = memberId !== undefined && memberId !== newMemberId
          runDetached(log(Effect.logDebug(`joined as ${newMemberId}, assigned [${assignedNow.join(",")}]`)))
          memberId = newMemberId
          frozen = false
          const assigned = new Set(stopping ? [] : assignedNow)
          for (const claim of [...claims.values()]) {
            if (lost) revoke(claim, true)
            else if (!assigned.has(claim.partition) || claim.phase === "starting") revoke(claim, false)
          }
          for (const partition of assigned) {
            const claim = claims.get(partition)
            if (claim === undefined) startClaim(partition)
            else if (claim.phase === "active" && claim.buffer !== undefined) {
              // A rebalance resets kafkajs's fetch position to the committed
              // offset; continue from what the buffer already holds instead.
              guard(`seeking partition ${partition}`, () =>
                consumer.seek({ topic, partition, offset: String(claim.nextOffset) })
              )
            }
          }
          pausedByUs.clear()
          for (const partition of assignedNow) applyFetch(partition, true)
          Deferred.doneUnsafe(joined, Effect.void)
        }

        const eachBatch = async ({ batch, resolveOffset, isStale }: EachBatchPayload): Promise<void> => {
          const claim = claims.get(batch.partition)
          const buffer = claim?.buffer
          if (claim === undefined || claim.phase !== "active" || buffer === undefined) {
            // Fetched before the claim (re)started; its seek refetches what it needs.
            applyFetch(batch.partition)
            return
          }
          if (isStale()) return
          const highWatermark = Number(batch.highWatermark)
          if (Number.isSafeInteger(highWatermark) && highWatermark > claim.endOffset) claim.endOffset = highWatermark
          const fresh: Array<LogRecord> = []
          for (const message of batch.messages) {
            const offset = Number(message.offset)
            if (offset < claim.nextOffset) continue
            fresh.push(toLogRecord(topic, batch.partition, message))
            claim.nextOffset = offset + 1
          }
          Queue.offerAllUnsafe(buffer, fresh)
          resolveOffset(batch.lastOffset())
          if (Queue.sizeUnsafe(buffer) >= highWater) {
            claim.backpressured = true
            applyFetch(batch.partition)
          }
        }

        consumer.on(consumer.events.GROUP_JOIN, (event) =>
          guard("handling the new assignment", () =>
            onGroupJoin(event.payload.memberAssignment[topic] ?? [], event.payload.memberId)
          )
        )
        consumer.on(consumer.events.CRASH, (event) =>
          guard("handling a consumer crash", () => {
            const { error, restart } = event.payload
            frozen = true
            for (const claim of [...claims.values()]) revoke(claim, true)
            const message = `${describe}: the consumer crashed (${describeError(error)})${restart ? "; it restarts and rejoins" : "; it stopped for good"}`
            runDetached(log(restart ? Effect.logWarning(message) : Effect.logError(message)))
            if (!restart) Deferred.doneUnsafe(joined, Effect.fail(new EventLogError({ message, cause: error })))
          })
        )

        /** Ends every claim, waits for the handlers' final commits, then leaves the group. */
        const stop = Effect.gen(function* () {
          stopping = true
          for (const claim of [...claims.values()]) revoke(claim, false)
          for (const claim of [...draining]) {
            if (claim.fiber !== undefined) yield* Fiber.await(claim.fiber)
          }
          yield* disconnect(`consumer of ${describe}`, consumer)
        })

        yield* Effect.acquireRelease(
          Effect.gen(function* () {
            yield* attempt(`connecting the consumer of ${describe} to ${where}`, () => consumer.connect())
            yield* attempt(`subscribing the consumer of ${describe}`, () =>
              consumer.subscribe({ topic, fromBeginning: true })
            )
            yield* attempt(`running the consumer of ${describe}`, () =>
              consumer.run({
                autoCommit: false,
                eachBatchAutoResolve: false,
                partitionsConsumedConcurrently: Math.max(partitions, 1),
                eachBatch
              })
            )
          }).pipe(Effect.onError(() => disconnect(`consumer of ${describe}`, consumer))),
          () => stop
        )

        // A paused partition (back-pressure) is not fetched, so its high
        // watermark would go stale just when its lag matters: the claims'
        // end offsets are refreshed from the brokers every few seconds.
        const refreshEndOffsets = Effect.suspend(() => {
          if (claims.size === 0) return Effect.void
          return attempt(`reading the offsets of ${topic}`, () => admin.fetchTopicOffsets(topic)).pipe(
            Effect.flatMap((offsets) =>
              Effect.sync(() => {
                for (const entry of offsets) {
                  const claim = claims.get(entry.partition)
                  const high = Number(entry.high)
                  if (claim !== undefined && Number.isSafeInteger(high) && high > claim.endOffset) {
                    claim.endOffset = high
                  }
                }
              })
            ),
            Effect.catch((error) => log(Effect.logDebug(`${describe}: end offsets not refreshed`, error)))
          )
        })
        yield* refreshEndOffsets.pipe(Effect.repeat(Schedule.spaced(endOffsetRefresh)), Effect.forkScoped)
        yield* Deferred.await(joined).pipe(
          Effect.timeoutOrElse({
            duration: Duration.millis(rebalanceTimeout + sessionTimeout),
            orElse: () =>
              Effect.fail(
                new EventLogError({
                  message: `${describe}: the consumer did not join its group within ${rebalanceTimeout + sessionTimeout}ms`
                })
              )
          })
        )
      })

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

        const consumer: Consumer = kafka.consumer({
          groupId: group,
          partitionAssigners: [assigner],
          sessionTimeout,
          rebalanceTimeout,
          heartbeatInterval,
          maxWaitTimeInMs: maxWaitTime,
          allowAutoTopicCreation: false,
          // A crash fails the read (below) rather than rejoining the group.
          retry: { ...kafkaRetry, restartOnFailure: async () => false }
        })

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
        return yield* readRange(topic, ranges)
      })

    return EventLog.of({ createTopic, produce, consume, tail, ping })
  })

/** The EventLog on Kafka: an admin client and one idempotent producer for the layer's lifetime. */
export const layer = (options: KafkaEventLogOptions): Layer.Layer<EventLog, EventLogError> =>
  Layer.effect(EventLog, make(options))
