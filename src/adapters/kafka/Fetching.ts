/**
 * The fetch side of a claim consumer (ClaimConsumer.ts): what kafkajs
 * fetches goes into the claims' buffers, contiguous from each claim's
 * position. A partition is fetched only while its claim is active, has a
 * buffer and is not back-pressured; a batch fetched from a stale position is
 * fetched again; the claims' end offsets (their lag) are kept fresh even
 * while a partition is paused.
 */
import { Duration, Effect, Queue, Schedule } from "effect"
import type { Admin, Consumer, EachBatchPayload } from "kafkajs"
import * as Claim from "./Claim.ts"
import { attempt, toLogRecord } from "./errors.ts"

/** Batches in a row that may start past a claim's position before the records in between count as deleted. */
const maxGapRetries = 5
/** How often claims' end offsets (consumer lag) are refreshed from the brokers. */
const endOffsetRefresh = Duration.seconds(5)

export interface FetchingContext {
  readonly topic: string
  readonly describe: string
  readonly consumer: Consumer
  readonly admin: Admin
  /** The current claim of each partition this member holds. */
  readonly claims: ReadonlyMap<number, Claim.Claim>
  /** Runs `f`, logging instead of throwing (kafkajs calls back inside its join). */
  readonly guard: (what: string, f: () => void) => void
  /** Logs, detached, annotated with the partition. */
  readonly report: (effect: Effect.Effect<void>, partition?: number) => void
}

export const make = (context: FetchingContext) => {
  const { topic, describe, consumer, admin, claims, guard, report } = context
  const pausedByUs = new Set<number>()

  const shouldFetch = (partition: number): boolean => {
    const claim = claims.get(partition)
    return claim !== undefined && claim.phase._tag === "Active" && claim.buffer !== undefined && !claim.backpressured
  }

  /** Pauses or resumes the partition as its claim's state asks (`force`: whatever kafkajs thinks it is). */
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

  /** After a join: kafkajs forgot its pauses, so every assigned partition is set anew. */
  const applyAssignment = (assigned: ReadonlyArray<number>): void => {
    pausedByUs.clear()
    for (const partition of assigned) applyFetch(partition, true)
  }

  const seek = (partition: number, offset: number): void =>
    guard(`seeking partition ${partition} to ${offset}`, () =>
      consumer.seek({ topic, partition, offset: String(offset) })
    )

  const eachBatch = async ({ batch, resolveOffset, isStale }: EachBatchPayload): Promise<void> => {
    const claim = claims.get(batch.partition)
    const buffer = claim?.buffer
    if (claim === undefined || claim.phase._tag !== "Active" || buffer === undefined) {
      // Fetched before the claim (re)started; its seek refetches what it needs.
      applyFetch(batch.partition)
      return
    }
    if (isStale()) return
    const highWatermark = Number(batch.highWatermark)
    if (Number.isSafeInteger(highWatermark) && highWatermark > claim.endOffset) claim.endOffset = highWatermark
    const gap = Claim.gapIn(claim, batch.messages)
    // A batch that starts past the claim's position was fetched from a
    // stale one: fetch again from the position (the records are gone
    // only if that keeps happening: retention deleted them).
    const repeated = gap !== undefined && claim.gap?.at === claim.nextOffset ? claim.gap.count + 1 : 1
    claim.gap = gap === undefined ? undefined : { at: claim.nextOffset, count: repeated }
    if (gap !== undefined && repeated <= maxGapRetries) {
      report(
        Effect.logWarning(
          `partition ${batch.partition}: a fetched batch starts at ${gap}, past the claim's position ${claim.nextOffset}; fetching again from ${claim.nextOffset}`
        ),
        batch.partition
      )
      seek(batch.partition, claim.nextOffset)
      return
    }
    if (gap !== undefined) {
      report(
        Effect.logError(
          `partition ${batch.partition}: records ${claim.nextOffset} to ${gap - 1} are no longer in the log; skipping them`
        ),
        batch.partition
      )
    }
    const fresh = Claim.accept(
      claim,
      batch.messages,
      (message) => toLogRecord(topic, batch.partition, message),
      gap !== undefined
    )
    Queue.offerAllUnsafe(buffer, fresh)
    resolveOffset(batch.lastOffset())
    if (Queue.sizeUnsafe(buffer) >= Claim.highWater) {
      claim.backpressured = true
      applyFetch(batch.partition)
    }
  }

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
            if (claim !== undefined && Number.isSafeInteger(high) && high > claim.endOffset) claim.endOffset = high
          }
        })
      ),
      Effect.catch((error) => Effect.logDebug(`${describe}: end offsets not refreshed`, error))
    )
  })

  return {
    applyFetch,
    applyAssignment,
    seek,
    eachBatch,
    /** Refreshes the end offsets every few seconds, for as long as the scope lasts. */
    keepEndOffsets: refreshEndOffsets.pipe(Effect.repeat(Schedule.spaced(endOffsetRefresh)), Effect.forkScoped)
  }
}
