/**
 * The EventLog port in process: topics of partitions, consumer groups with
 * committed offsets, and partition claims handed between the live members of
 * a group exactly as the port describes. Where records and committed offsets
 * live is a `LogStorage`: memory (MemoryEventLog, for tests) or a SQLite file
 * (SqliteEventLog, embedded mode's durable log).
 */
import { Cause, Deferred, Duration, Effect, Exit, Fiber, Scope, Semaphore, Stream } from "effect"
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
import { partitionForKey } from "./Partitioner.ts"

/** A record on its way into a partition. */
export interface Appended {
  readonly partition: number
  readonly key: string
  readonly value: Uint8Array
  readonly headers: Readonly<Record<string, string>>
}

/** Where a LocalEventLog keeps its topics, records and committed offsets. */
export interface LogStorage {
  /** The partition count of every topic the storage holds. */
  readonly topics: () => ReadonlyMap<string, number>
  /** Records a new topic (never called for one the storage holds). */
  readonly createTopic: (topic: string, partitions: number) => Effect.Effect<void, EventLogError>
  /**
   * Appends records, each at the end of its partition, in order, and answers
   * their offsets once they are durable (as durable as the storage gets).
   */
  readonly append: (
    topic: string,
    records: ReadonlyArray<Appended>
  ) => Effect.Effect<ReadonlyArray<number>, EventLogError>
  /** Up to `max` records of a partition from offset `from`, in offset order. */
  readonly read: (topic: string, partition: number, from: number, max: number) => ReadonlyArray<LogRecord>
  /** The offset the partition's next record gets. */
  readonly endOffset: (topic: string, partition: number) => number
  /** The group's committed offsets on the topic, by partition. */
  readonly committed: (group: string, topic: string) => ReadonlyMap<number, number>
  readonly commit: (group: string, topic: string, partition: number, next: number) => Effect.Effect<void, EventLogError>
}

export interface LocalEventLogOptions {
  /** Partitions of a topic created implicitly by `produce` or `consume` (default 8). */
  readonly partitions?: number | undefined
  /**
   * How long a revoked claim's handler may take to drain before it is
   * interrupted and the partition handed over anyway (default 30 seconds).
   */
  readonly drainTimeout?: Duration.Input | undefined
  /**
   * When set, `produce` waits while a partition it writes to holds more than
   * `records` records past the commit of one of `groups`: producers slow
   * down to what those consumers make durable instead of the log running
   * ahead. Other groups may fall behind; their records stay in the log.
   */
  readonly maxUncommitted?: { readonly records: number; readonly groups: ReadonlySet<string> } | undefined
}

interface Partition {
  /** Completed and replaced on every append, so readers that caught up wake. */
  appended: Deferred.Deferred<void>
}

interface Topic {
  readonly name: string
  readonly partitions: ReadonlyArray<Partition>
  /** Groups consuming the topic, for `maxUncommitted`. */
  readonly groups: Set<Group>
  /** Completed and replaced on every commit on the topic, so waiting producers look again. */
  committed: Deferred.Deferred<void>
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

export const make = (storage: LogStorage, options?: LocalEventLogOptions): EventLog["Service"] => {
  const implicitPartitions = options?.partitions ?? defaultPartitions
  const drainTimeout = Duration.fromInputUnsafe(options?.drainTimeout ?? Duration.seconds(30))
  const maxUncommitted = options?.maxUncommitted
  const topics = new Map<string, Topic>()
  const groups = new Map<string, Group>()
  let nextMemberId = 0

  const invalid = (message: string) => Effect.fail(new EventLogError({ message }))

  const addTopic = (name: string, partitions: number): Topic => {
    const topic: Topic = {
      name,
      partitions: Array.from({ length: partitions }, () => ({ appended: Deferred.makeUnsafe<void>() })),
      groups: new Set(),
      committed: Deferred.makeUnsafe<void>()
    }
    topics.set(name, topic)
    return topic
  }
  for (const [name, partitions] of storage.topics()) addTopic(name, partitions)

  /** Registers the topic at once (so concurrent callers agree), then has the storage record it. */
  const newTopic = (name: string, partitions: number): Effect.Effect<Topic, EventLogError> => {
    const topic = addTopic(name, partitions)
    return storage.createTopic(name, partitions).pipe(
      Effect.as(topic),
      Effect.tapError(() => Effect.sync(() => topics.delete(name)))
    )
  }

  const topicFor = (name: string): Effect.Effect<Topic, EventLogError> =>
    Effect.suspend(() => {
      if (name === "") return invalid("topic name must not be empty")
      const topic = topics.get(name)
      return topic === undefined ? newTopic(name, implicitPartitions) : Effect.succeed(topic)
    })

  const createTopic = (name: string, partitions: number): Effect.Effect<void, EventLogError> =>
    Effect.suspend(() => {
      if (name === "") return invalid("topic name must not be empty")
      if (!Number.isSafeInteger(partitions) || partitions < 1) {
        return invalid(`topic ${name}: partitions must be a positive integer, got ${partitions}`)
      }
      // Like Kafka's CreateTopics, an existing topic is left as it is.
      return topics.has(name) ? Effect.void : Effect.asVoid(newTopic(name, partitions))
    })

  /** A partition of `topic` past `maxUncommitted` records beyond a live held-to group's commit, if any. */
  const overCommitted = (topic: Topic, partitions: ReadonlySet<number>): boolean => {
    if (maxUncommitted === undefined) return false
    for (const group of topic.groups) {
      if (group.members.length === 0 || !maxUncommitted.groups.has(group.name)) continue
      for (const partition of partitions) {
        const behind = storage.endOffset(topic.name, partition) - (group.committed.get(partition) ?? 0)
        if (behind > maxUncommitted.records) return true
      }
    }
    return false
  }

  /** Waits while the partitions are too far ahead of their consumers (rechecked as groups change). */
  const awaitConsumers = (topic: Topic, partitions: ReadonlySet<number>): Effect.Effect<void> =>
    Effect.suspend(() =>
      overCommitted(topic, partitions)
        ? Deferred.await(topic.committed).pipe(
            Effect.timeoutOption(Duration.millis(500)),
            Effect.andThen(awaitConsumers(topic, partitions))
          )
        : Effect.void
    )

  const produce = (
    name: string,
    records: ReadonlyArray<ProduceRecord>
  ): Effect.Effect<ReadonlyArray<RecordPosition>, EventLogError> =>
    Effect.gen(function* () {
      const topic = yield* topicFor(name)
      const appended = records.map(
        (record): Appended => ({
          partition: partitionForKey(record.key, topic.partitions.length),
          key: record.key,
          // Copied so a caller reusing its buffer cannot rewrite the log.
          value: typeof record.value === "string" ? encoder.encode(record.value) : record.value.slice(),
          headers: { ...record.headers }
        })
      )
      const touched = new Set(appended.map((record) => record.partition))
      yield* awaitConsumers(topic, touched)
      const offsets = yield* storage.append(name, appended)
      for (const index of touched) {
        const partition = topic.partitions[index]!
        const waiting = partition.appended
        partition.appended = Deferred.makeUnsafe<void>()
        signal(waiting)
      }
      return appended.map((record, i): RecordPosition => ({ partition: record.partition, offset: offsets[i]! }))
    })

  /**
   * The claim's records from `start`, read from the storage as they are
   * pulled, so an idle handler holds nothing back but its offset.
   */
  const recordsFrom = (topic: Topic, claim: Claim, start: number, delivered: { end: number }) =>
    Stream.fromPull(
      Effect.sync(() => {
        let next = start
        const partition = topic.partitions[claim.partition]!
        const pull: Effect.Effect<Arr.NonEmptyReadonlyArray<LogRecord>, Cause.Done> = Effect.suspend(() => {
          if (Deferred.isDoneUnsafe(claim.revoked)) return Cause.done()
          if (next < storage.endOffset(topic.name, claim.partition)) {
            const chunk = storage.read(topic.name, claim.partition, next, maxChunk)
            if (chunk.length > 0) {
              // From the last record read: a storage with retention may start past `next`.
              next = chunk[chunk.length - 1]!.offset + 1
              delivered.end = Math.max(delivered.end, next)
              return Effect.succeed(chunk as Arr.NonEmptyReadonlyArray<LogRecord>)
            }
          }
          return Effect.raceFirst(Deferred.await(partition.appended), Deferred.await(claim.revoked)).pipe(
            Effect.andThen(pull)
          )
        })
        return pull
      })
    )

  const partitionClaim = (group: Group, claim: Claim): PartitionClaim => {
    const topic = group.topic
    const start = group.committed.get(claim.partition) ?? 0
    const delivered = { end: start }
    const where = `${topic.name}/${claim.partition} (group ${group.name})`
    return {
      topic: topic.name,
      partition: claim.partition,
      records: recordsFrom(topic, claim, start, delivered),
      revoked: Deferred.await(claim.revoked),
      commit: (nextOffset) =>
        Effect.suspend(() => {
          if (claim.released) return invalid(`commit on ${where}: the claim has ended`)
          if (!Number.isSafeInteger(nextOffset) || nextOffset < 0 || nextOffset > delivered.end) {
            return invalid(`commit on ${where}: ${nextOffset} is not an offset this claim has delivered up to`)
          }
          if (group.committed.get(claim.partition) === nextOffset) return Effect.void
          return storage.commit(group.name, topic.name, claim.partition, nextOffset).pipe(
            Effect.andThen(
              Effect.sync(() => {
                group.committed.set(claim.partition, nextOffset)
                const waiting = topic.committed
                topic.committed = Deferred.makeUnsafe<void>()
                signal(waiting)
              })
            )
          )
        }),
      endOffset: () => storage.endOffset(topic.name, claim.partition)
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
      group = {
        name,
        topic,
        members: [],
        committed: new Map(storage.committed(name, topic.name)),
        lock: Semaphore.makeUnsafe(1)
      }
      groups.set(key, group)
      topic.groups.add(group)
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
      return Effect.succeed(
        topic.partitions.flatMap((_, partition) => {
          const end = storage.endOffset(name, partition)
          return storage.read(name, partition, Math.max(0, end - count), count)
        })
      )
    })

  return EventLog.of({ createTopic, produce, consume, tail, ping: Effect.void })
}
