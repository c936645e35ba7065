/**
 * The EventLog port in process (embedded mode): topics of append-only
 * partition arrays, consumer groups with committed offsets, and partition
 * claims handed between the live members of a group exactly as the port
 * describes. Nothing survives the layer; durability is Kafka's job.
 */
import { Cause, Clock, Deferred, Duration, Effect, Exit, Fiber, Layer, Scope, Semaphore, Stream } from "effect"
import type * as Arr from "effect/Array"
import {
  EventLog,
  EventLogError,
  type ConsumeOptions,
  type LogRecord,
  type PartitionClaim,
  type ProduceRecord,
  type RecordPosition
} from "../../ports/EventLog.ts"

export interface MemoryEventLogOptions {
  /** Partitions of a topic created implicitly by `produce` or `consume` (default 8). */
  readonly partitions?: number | undefined
  /**
   * How long a revoked claim's handler may take to drain before it is
   * interrupted and the partition handed over anyway (default 30 seconds).
   */
  readonly drainTimeout?: Duration.Input | undefined
}

interface Partition {
  readonly records: Array<LogRecord>
  /** Completed and replaced on every append, so readers that caught up wake. */
  appended: Deferred.Deferred<void>
}

interface Topic {
  readonly name: string
  readonly partitions: ReadonlyArray<Partition>
}

interface Claim {
  readonly partition: number
  /** Completed when the partition is revoked: the record stream ends. */
  readonly revoked: Deferred.Deferred<void>
  /** Set once the handler has finished for good; later commits are stale. */
  released: boolean
  fiber: Fiber.Fiber<void> | undefined
}

interface Member {
  readonly id: number
  readonly onClaim: ConsumeOptions["onClaim"]
  readonly claims: Map<number, Claim>
  /** The consumer's scope for its claim fibers; closed after it has left. */
  readonly scope: Scope.Scope
}

interface Group {
  readonly name: string
  readonly topic: Topic
  /** Join order: the range assignment gives earlier members the lower partitions. */
  readonly members: Array<Member>
  readonly committed: Map<number, number>
  /** Serialises rebalances so a partition is never handed over twice at once. */
  readonly lock: Semaphore.Semaphore
}

const defaultPartitions = 8
const maxChunk = 512
const encoder = new TextEncoder()

/**
 * Kafka's murmur2 (the Java client's and kafkajs's default partitioner), so a
 * key lands on the same partition number in embedded and cluster mode.
 */
const murmur2 = (data: Uint8Array): number => {
  const m = 0x5bd1e995
  const length = data.length
  let h = 0x9747b28c ^ length
  const whole = length - (length % 4)
  for (let i = 0; i < whole; i += 4) {
    let k = data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24)
    k = Math.imul(k, m)
    k ^= k >>> 24
    k = Math.imul(k, m)
    h = Math.imul(h, m) ^ k
  }
  const rest = length % 4
  if (rest === 3) h ^= data[whole + 2]! << 16
  if (rest >= 2) h ^= data[whole + 1]! << 8
  if (rest >= 1) {
    h ^= data[whole]!
    h = Math.imul(h, m)
  }
  h ^= h >>> 13
  h = Math.imul(h, m)
  h ^= h >>> 15
  return h | 0
}

/** Partition of `key` among `partitions`, as Kafka's default partitioner computes it. */
export const partitionForKey = (key: string, partitions: number): number =>
  (murmur2(encoder.encode(key)) & 0x7fffffff) % partitions

/**
 * Range assignment over members in join order: a joining member takes the
 * upper partitions, so the members already there keep most of theirs.
 */
const assign = (members: ReadonlyArray<Member>, partitions: number): Map<number, Set<number>> => {
  const assignment = new Map<number, Set<number>>()
  const base = Math.floor(partitions / Math.max(members.length, 1))
  const extra = partitions % Math.max(members.length, 1)
  let next = 0
  members.forEach((member, index) => {
    const count = base + (index < extra ? 1 : 0)
    const owned = new Set<number>()
    for (let i = 0; i < count; i++) owned.add(next++)
    assignment.set(member.id, owned)
  })
  return assignment
}

const signal = (deferred: Deferred.Deferred<void>): void => {
  Deferred.doneUnsafe(deferred, Exit.void)
}

const backoff = (attempt: number): Duration.Duration => Duration.millis(Math.min(100 * 2 ** attempt, 5_000))

/** Logs why a claim's handler is started again. */
const reportEarlyEnd = (exit: Exit.Exit<void>): Effect.Effect<void> =>
  Exit.isSuccess(exit)
    ? Effect.logWarning("claim handler returned before its claim ended; restarting it from the committed offset")
    : Cause.hasInterruptsOnly(exit.cause)
      ? Effect.logWarning(
          "claim handler was interrupted before its claim ended; restarting it from the committed offset"
        )
      : Effect.logError("claim handler failed; restarting it from the committed offset", exit.cause)

export const make = (options?: MemoryEventLogOptions): EventLog["Service"] => {
  const implicitPartitions = options?.partitions ?? defaultPartitions
  const drainTimeout = Duration.fromInputUnsafe(options?.drainTimeout ?? Duration.seconds(30))
  const topics = new Map<string, Topic>()
  const groups = new Map<string, Group>()
  let nextMemberId = 0

  const invalid = (message: string) => Effect.fail(new EventLogError({ message }))

  const newTopic = (name: string, partitions: number): Topic => {
    const topic: Topic = {
      name,
      partitions: Array.from({ length: partitions }, () => ({ records: [], appended: Deferred.makeUnsafe<void>() }))
    }
    topics.set(name, topic)
    return topic
  }

  const topicFor = (name: string): Effect.Effect<Topic, EventLogError> =>
    Effect.suspend(() => {
      if (name === "") return invalid("topic name must not be empty")
      return Effect.succeed(topics.get(name) ?? newTopic(name, implicitPartitions))
    })

  const createTopic = (name: string, partitions: number): Effect.Effect<void, EventLogError> =>
    Effect.suspend(() => {
      if (name === "") return invalid("topic name must not be empty")
      if (!Number.isSafeInteger(partitions) || partitions < 1) {
        return invalid(`topic ${name}: partitions must be a positive integer, got ${partitions}`)
      }
      // Like Kafka's CreateTopics, an existing topic is left as it is.
      if (!topics.has(name)) newTopic(name, partitions)
      return Effect.void
    })

  const produce = (
    name: string,
    records: ReadonlyArray<ProduceRecord>
  ): Effect.Effect<ReadonlyArray<RecordPosition>, EventLogError> =>
    Effect.gen(function* () {
      const topic = yield* topicFor(name)
      const timestamp = yield* Clock.currentTimeMillis
      const touched = new Set<Partition>()
      const positions = records.map((record): RecordPosition => {
        const index = partitionForKey(record.key, topic.partitions.length)
        const partition = topic.partitions[index]!
        const offset = partition.records.length
        partition.records.push({
          topic: name,
          partition: index,
          offset,
          key: record.key,
          // Copied so a caller reusing its buffer cannot rewrite the log.
          value: typeof record.value === "string" ? encoder.encode(record.value) : record.value.slice(),
          headers: { ...record.headers },
          timestamp
        })
        touched.add(partition)
        return { partition: index, offset }
      })
      for (const partition of touched) {
        const waiting = partition.appended
        partition.appended = Deferred.makeUnsafe<void>()
        signal(waiting)
      }
      return positions
    })

  /**
   * The claim's records from `start`, read straight from the partition array
   * as they are pulled, so an idle handler holds nothing back but its offset.
   */
  const recordsFrom = (partition: Partition, claim: Claim, start: number, delivered: { end: number }) =>
    Stream.fromPull(
      Effect.sync(() => {
        let next = start
        const pull: Effect.Effect<Arr.NonEmptyReadonlyArray<LogRecord>, Cause.Done> = Effect.suspend(() => {
          if (Deferred.isDoneUnsafe(claim.revoked)) return Cause.done()
          if (next < partition.records.length) {
            const chunk = partition.records.slice(
              next,
              next + maxChunk
            ) as unknown as Arr.NonEmptyReadonlyArray<LogRecord>
            next += chunk.length
            delivered.end = Math.max(delivered.end, next)
            return Effect.succeed(chunk)
          }
          return Effect.raceFirst(Deferred.await(partition.appended), Deferred.await(claim.revoked)).pipe(
            Effect.andThen(pull)
          )
        })
        return pull
      })
    )

  const partitionClaim = (group: Group, claim: Claim): PartitionClaim => {
    const partition = group.topic.partitions[claim.partition]!
    const start = group.committed.get(claim.partition) ?? 0
    const delivered = { end: start }
    const where = `${group.topic.name}/${claim.partition} (group ${group.name})`
    return {
      topic: group.topic.name,
      partition: claim.partition,
      records: recordsFrom(partition, claim, start, delivered),
      revoked: Deferred.await(claim.revoked),
      commit: (nextOffset) =>
        Effect.suspend(() => {
          if (claim.released) return invalid(`commit on ${where}: the claim has ended`)
          if (!Number.isSafeInteger(nextOffset) || nextOffset < 0 || nextOffset > delivered.end) {
            return invalid(`commit on ${where}: ${nextOffset} is not an offset this claim has delivered up to`)
          }
          group.committed.set(claim.partition, nextOffset)
          return Effect.void
        }),
      endOffset: () => partition.records.length
    }
  }

  /**
   * Runs the member's handler for as long as the claim lasts. A handler that
   * ends before its claim (it returned, died or was interrupted) is started
   * again from the committed offset, so whatever it did not commit is
   * redelivered rather than the partition stalling until the next rebalance.
   */
  const runClaim = (group: Group, member: Member, claim: Claim): Effect.Effect<void> =>
    Effect.gen(function* () {
      for (let attempt = 0; ; attempt++) {
        const handler = yield* Effect.forkChild(member.onClaim(partitionClaim(group, claim)))
        const exit = yield* Fiber.await(handler)
        if (Deferred.isDoneUnsafe(claim.revoked)) return
        const delay = backoff(attempt)
        yield* reportEarlyEnd(exit)
        yield* Effect.raceFirst(Effect.sleep(delay), Deferred.await(claim.revoked))
        if (Deferred.isDoneUnsafe(claim.revoked)) return
      }
    }).pipe(
      Effect.ensuring(Effect.sync(() => (claim.released = true))),
      Effect.annotateLogs({ topic: group.topic.name, partition: claim.partition, group: group.name })
    )

  const startClaim = (group: Group, member: Member, partition: number): Effect.Effect<void> =>
    Effect.gen(function* () {
      const claim: Claim = { partition, revoked: Deferred.makeUnsafe<void>(), released: false, fiber: undefined }
      member.claims.set(partition, claim)
      claim.fiber = yield* Effect.forkIn(runClaim(group, member, claim), member.scope)
    })

  /** Ends the claim's records and waits for its handler's drain and final commit. */
  const release = (group: Group, member: Member, claim: Claim): Effect.Effect<void> =>
    Effect.gen(function* () {
      signal(claim.revoked)
      const fiber = claim.fiber
      if (fiber !== undefined) {
        const drained = yield* Fiber.await(fiber).pipe(Effect.timeoutOption(drainTimeout))
        if (drained._tag === "None") {
          yield* Effect.logWarning(
            `claim handler did not finish within ${Duration.format(drainTimeout)} of its revocation; interrupting it`
          )
          yield* Fiber.interrupt(fiber)
        }
      }
      claim.released = true
      member.claims.delete(claim.partition)
    }).pipe(Effect.annotateLogs({ topic: group.topic.name, partition: claim.partition, group: group.name }))

  /**
   * Moves the group to the range assignment of its current members: revoked
   * claims drain completely before any partition is claimed anew, so a new
   * owner always starts from its predecessor's final commit.
   */
  const rebalance = (group: Group, change: { readonly joined?: Member; readonly left?: Member }): Effect.Effect<void> =>
    Effect.gen(function* () {
      if (change.joined !== undefined) group.members.push(change.joined)
      const departed = change.left === undefined ? [] : [change.left]
      if (change.left !== undefined) {
        const index = group.members.indexOf(change.left)
        if (index >= 0) group.members.splice(index, 1)
      }
      const target = assign(group.members, group.topic.partitions.length)
      const revoked: Array<readonly [Member, Claim]> = []
      for (const member of [...departed, ...group.members]) {
        const keep = target.get(member.id)
        for (const claim of member.claims.values()) {
          if (keep === undefined || !keep.has(claim.partition)) revoked.push([member, claim])
        }
      }
      yield* Effect.forEach(revoked, ([member, claim]) => release(group, member, claim), {
        concurrency: "unbounded",
        discard: true
      })
      for (const member of group.members) {
        for (const partition of target.get(member.id) ?? []) {
          if (!member.claims.has(partition)) yield* startClaim(group, member, partition)
        }
      }
    }).pipe(Effect.uninterruptible, Semaphore.withPermit(group.lock))

  const groupFor = (name: string, topic: Topic): Group => {
    const key = `${name}\u0000${topic.name}`
    let group = groups.get(key)
    if (group === undefined) {
      group = { name, topic, members: [], committed: new Map(), lock: Semaphore.makeUnsafe(1) }
      groups.set(key, group)
    }
    return group
  }

  const consume = (options: ConsumeOptions): Effect.Effect<void, EventLogError, Scope.Scope> =>
    Effect.gen(function* () {
      if (options.group === "") return yield* invalid("consumer group name must not be empty")
      const topic = yield* topicFor(options.topic)
      const group = groupFor(options.group, topic)
      // Forked before the leave finalizer is added, so it closes after it: the
      // graceful leave drains the claims, this only interrupts what is left.
      const claimsScope = yield* Scope.fork(yield* Effect.scope, "parallel")
      const member: Member = { id: nextMemberId++, onClaim: options.onClaim, claims: new Map(), scope: claimsScope }
      yield* Effect.addFinalizer(() => rebalance(group, { left: member }))
      yield* rebalance(group, { joined: member })
    })

  const tail = (name: string, count = 1): Effect.Effect<ReadonlyArray<LogRecord>, EventLogError> =>
    Effect.suspend(() => {
      if (name === "") return invalid("topic name must not be empty")
      if (!Number.isSafeInteger(count) || count < 1) return invalid("tail count must be a positive integer")
      // Only reads: an unknown topic is not created, unlike produce and consume.
      const topic = topics.get(name)
      if (topic === undefined) return Effect.succeed([])
      return Effect.succeed(topic.partitions.flatMap((partition) => partition.records.slice(-count)))
    })

  return EventLog.of({ createTopic, produce, consume, tail, ping: Effect.void })
}

/** The in-process EventLog; each use of the layer is a separate, empty log. */
export const layer = (options?: MemoryEventLogOptions): Layer.Layer<EventLog> =>
  Layer.effect(
    EventLog,
    Effect.sync(() => make(options))
  )
