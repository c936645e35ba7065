/**
 * Consuming (`consume`): one kafkajs consumer per call, with the hand-over
 * described in KafkaEventLog.ts. Here: the member's claims through the
 * group's rebalances (which to start, revoke or lose), what it announces to
 * the group, and the consumer's start and stop; Fetching.ts moves fetched
 * records into the claims, ClaimLifecycle.ts runs each claim's handler.
 */
import { type Cause, Deferred, Duration, Effect, Fiber, FiberSet, Queue, Schedule, type Scope } from "effect"
import type { Consumer } from "kafkajs"
import { type ConsumeOptions, EventLogError, type LogRecord, type PartitionClaim } from "../../ports/EventLog.ts"
import * as Assignment from "./Assignment.ts"
import * as Claim from "./Claim.ts"
import * as ClaimLifecycle from "./ClaimLifecycle.ts"
import type { KafkaClient } from "./Client.ts"
import * as Fetching from "./Fetching.ts"
import * as Handover from "./Handover.ts"
import * as Retry from "../../Retry.ts"
import { attempt, describeError, isRebalancing } from "./errors.ts"

export interface ConsumerSettings {
  /** How long a revoked claim's handler may take to drain before it is interrupted. */
  readonly drainTimeout: Duration.Duration
  /** Creates the topic when missing; answers its partition count. */
  readonly ensureTopic: (topic: string) => Effect.Effect<number, EventLogError>
}

export const make = (client: KafkaClient, settings: ConsumerSettings) => {
  const { admin, where, runDetached, disconnect } = client
  const { sessionTimeout, rebalanceTimeout } = client.settings
  const { drainTimeout, ensureTopic } = settings
  const handoverTimeout = Duration.sum(drainTimeout, Duration.seconds(30))

  const consume = (options: ConsumeOptions): Effect.Effect<void, EventLogError, Scope.Scope> =>
    Effect.gen(function* () {
      const { group, topic } = options
      if (group === "") return yield* new EventLogError({ message: "consumer group name must not be empty" })
      const partitions = yield* ensureTopic(topic)
      const describe = `group ${group} on ${topic}`
      // Created before the consumer's release is registered, so claim fibers
      // outlive the graceful stop and are only interrupted if anything is left.
      const run = yield* FiberSet.makeRuntime<never, void, never>()

      const claims = new Map<number, Claim.Claim>()
      const draining = new Set<Claim.Claim>()
      let frozen = true
      let stopping = false
      let memberId: string | undefined
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

      const holdingsOf = (metadata: Buffer): Assignment.Holdings | undefined =>
        Assignment.decodeHoldings(metadata, (reason) =>
          runDetached(log(Effect.logWarning(`${describe}: a member's holdings are ignored: ${reason}`)))
        )

      const holdings = (): Assignment.Holdings => ({
        topic,
        held: [
          ...[...claims.values()].filter((c) => c.phase._tag === "Active"),
          ...[...draining].filter((c) => c.phase._tag === "Active")
        ].map((c) => ({ partition: c.partition, id: c.id }))
      })

      const assigner = Assignment.assigner({
        holdings,
        holdingsOf,
        // Joining: no claim starts until the new assignment is known, so
        // what this member announces stays true through the rebalance.
        onJoin: () => {
          frozen = true
        }
      })
      const handover = Handover.make({ admin, group, topic, describe, holdingsOf, handoverTimeout })
      const { startingOffset } = handover

      const consumer: Consumer = client.consumer({ groupId: group, assigner, restartOnFailure: true })
      const fetching = Fetching.make({
        topic,
        describe,
        consumer,
        admin,
        claims,
        guard,
        report: (effect, partition) => runDetached(log(effect, partition))
      })
      const { applyFetch } = fetching

      const isCurrent = (claim: Claim.Claim) =>
        !stopping && claims.get(claim.partition) === claim && !Deferred.isDoneUnsafe(claim.revoked)

      /**
       * Points the consumer at `offset` for the claim with a fresh buffer, and
       * lets the partition be fetched. False when the claim is no longer
       * current or the member is joining (the new assignment restarts it).
       */
      const open = (claim: Claim.Claim, offset: number, buffer: Queue.Queue<LogRecord, Cause.Done>): boolean => {
        if (!isCurrent(claim) || frozen) return false
        let opened = false
        guard(`seeking partition ${claim.partition} to ${offset}`, () => {
          consumer.seek({ topic, partition: claim.partition, offset: String(offset) })
          claim.phase = Claim.Phase.Active()
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

      const close = (claim: Claim.Claim): void => {
        const buffer = claim.buffer
        claim.buffer = undefined
        // Pulls check the revocation first, so nothing left in it is delivered.
        if (buffer !== undefined) Queue.endUnsafe(buffer)
        if (claims.get(claim.partition) === claim) applyFetch(claim.partition)
      }

      const commitOffset = (claim: Claim.Claim, offset: number, metadata: string | null) =>
        Effect.suspend(() => {
          if (claim.phase._tag === "Released" || claim.phase._tag === "Lost") {
            return Effect.fail(
              new EventLogError({
                message: `commit on ${topic}/${claim.partition} (group ${group}): the claim has ${claim.phase._tag === "Lost" ? "been lost" : "ended"}`
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

      const partitionClaim = (claim: Claim.Claim, buffer: Queue.Queue<LogRecord, Cause.Done>): PartitionClaim => ({
        topic,
        partition: claim.partition,
        records: Claim.records(claim, buffer, () => applyFetch(claim.partition)),
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

      const lifecycle = ClaimLifecycle.make({
        onClaim: options.onClaim,
        drainTimeout,
        draining,
        log,
        awaitRelease: handover.awaitRelease,
        startingOffset,
        open,
        close,
        partitionClaim,
        commitOffset,
        forget: (claim) => {
          draining.delete(claim)
          if (claims.get(claim.partition) === claim) claims.delete(claim.partition)
        }
      })

      const startClaim = (partition: number): void => {
        const claim = Claim.make(partition)
        claims.set(partition, claim)
        claim.fiber = run(lifecycle(claim))
      }

      const revoke = (claim: Claim.Claim, lost: boolean): void => {
        if (lost) claim.phase = Claim.Phase.Lost()
        if (claims.get(claim.partition) === claim) claims.delete(claim.partition)
        if (claim.phase._tag === "Active" || claim.phase._tag === "Lost") draining.add(claim)
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
          else if (!assigned.has(claim.partition) || claim.phase._tag === "Starting") revoke(claim, false)
        }
        for (const partition of assigned) {
          const claim = claims.get(partition)
          if (claim === undefined) startClaim(partition)
          else if (claim.phase._tag === "Active" && claim.buffer !== undefined) {
            // A rebalance resets kafkajs's fetch position to the committed
            // offset; continue from what the buffer already holds instead.
            fetching.seek(partition, claim.nextOffset)
          }
        }
        fetching.applyAssignment(assignedNow)
        Deferred.doneUnsafe(joined, Effect.void)
      }

      consumer.on(consumer.events.GROUP_JOIN, (event) =>
        guard("handling the new assignment", () =>
          onGroupJoin(event.payload.memberAssignment[topic] ?? [], event.payload.memberId)
        )
      )
      /** Connects, subscribes and runs the consumer (kafkajs keeps the subscription across a crash). */
      const start = Effect.gen(function* () {
        yield* attempt(`connecting the consumer of ${describe} to ${where}`, () => consumer.connect())
        yield* attempt(`subscribing the consumer of ${describe}`, () =>
          consumer.subscribe({ topic, fromBeginning: true })
        )
        yield* attempt(`running the consumer of ${describe}`, () =>
          consumer.run({
            autoCommit: false,
            eachBatchAutoResolve: false,
            partitionsConsumedConcurrently: Math.max(partitions, 1),
            eachBatch: fetching.eachBatch
          })
        )
      }).pipe(Effect.onError(() => disconnect(`consumer of ${describe}`, consumer)))

      /**
       * kafkajs restarts a crashed consumer only after a retriable error; after
       * any other — such as "Broker not connected" when the broker went away
       * during a request — it leaves it stopped, and the node would consume
       * nothing of this group until restarted. So the member starts it again
       * itself (with backoff, until it runs or the member stops).
       */
      const restartAfterCrash = Effect.suspend(() => (stopping ? Effect.void : start)).pipe(
        Effect.retry({ schedule: Retry.backoff("500 millis", "10 seconds"), while: () => !stopping }),
        // The member began to stop meanwhile: its stop may have disconnected before this start.
        Effect.andThen(() =>
          stopping
            ? disconnect(`consumer of ${describe}`, consumer)
            : Effect.logWarning(`${describe}: the consumer started again after its crash`)
        ),
        Effect.catch((error) => Effect.logError(`${describe}: the consumer could not start again: ${error.message}`))
      )

      consumer.on(consumer.events.CRASH, (event) =>
        guard("handling a consumer crash", () => {
          const { error, restart } = event.payload
          frozen = true
          for (const claim of [...claims.values()]) revoke(claim, true)
          // Before the first join, a crash fails the start (the node does not become ready).
          const restartHere = !restart && !stopping && Deferred.isDoneUnsafe(joined)
          const message = `${describe}: the consumer crashed (${describeError(error)})${restart ? "; it restarts and rejoins" : restartHere ? "; kafkajs leaves it stopped: it is started again" : "; it stopped for good"}`
          runDetached(log(restart || restartHere ? Effect.logWarning(message) : Effect.logError(message)))
          if (restartHere) runDetached(log(restartAfterCrash))
          else if (!restart) Deferred.doneUnsafe(joined, Effect.fail(new EventLogError({ message, cause: error })))
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

      yield* Effect.acquireRelease(start, () => stop)

      yield* fetching.keepEndOffsets.pipe(Effect.annotateLogs({ group, topic }))
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

  return consume
}
