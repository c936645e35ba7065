/**
 * One claim of a partition by this member, from its assignment to its
 * release, and the records that reach its handler: fetched batches are
 * buffered (contiguous from the claim's position, never with a gap) and
 * pulled by the handler.
 */
import { randomUUID } from "node:crypto"
import { Cause, Data, Deferred, Effect, Exit, type Fiber, Queue, Stream } from "effect"
import type * as Arr from "effect/Array"
import type { LogRecord } from "../../ports/EventLog.ts"

export const maxChunk = 512
/** A claim's buffer above this many records pauses its partition... */
export const highWater = 1024
/** ...until the handler has pulled it down to this many. */
export const lowWater = 256

/** Where a claim is in its life. */
export type Phase = Data.TaggedEnum<{
  /** Waiting for the previous holder's release. */
  Starting: {}
  /** Acquired: records flow to the handler. */
  Active: {}
  /** Done: the handler has finished and the release marker is written. */
  Released: {}
  /** The member was replaced in the group: its commits fail, another member may own the partition. */
  Lost: {}
}>
export const Phase = Data.taggedEnum<Phase>()

export interface Claim {
  readonly partition: number
  /** Unique per claim: announced to the group and written in the release marker. */
  readonly id: string
  phase: Phase
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
  /** A gap met at `at` (the claim's position) and how many batches in a row started past it. */
  gap: { readonly at: number; count: number } | undefined
  fiber: Fiber.Fiber<void> | undefined
}

export const make = (partition: number): Claim => ({
  partition,
  id: randomUUID(),
  phase: Phase.Starting(),
  revoked: Deferred.makeUnsafe<void>(),
  buffer: undefined,
  nextOffset: 0,
  delivered: 0,
  startOffset: 0,
  endOffset: 0,
  lastCommitted: undefined,
  backpressured: false,
  gap: undefined,
  fiber: undefined
})

/** Logs why a claim's handler is started again. */
export const reportEarlyEnd = (exit: Exit.Exit<void>): Effect.Effect<void> =>
  Exit.isSuccess(exit)
    ? Effect.logWarning("claim handler returned before its claim ended; restarting it from the committed offset")
    : Cause.hasInterruptsOnly(exit.cause)
      ? Effect.logWarning(
          "claim handler was interrupted before its claim ended; restarting it from the committed offset"
        )
      : Effect.logError("claim handler failed; restarting it from the committed offset", exit.cause)

/**
 * The records of a fetched batch the claim's buffer takes: those from
 * `nextOffset` on, contiguous (anything below it is a duplicate); advances
 * `nextOffset`. A record past `nextOffset` with the ones before it missing
 * ends the take: a batch fetched from a stale position (before a seek) must
 * not move the claim past records its handler never saw — the caller seeks
 * back (`gapIn`). Only with `acceptGap` (the records are gone from the log,
 * deleted by retention) does it jump the gap.
 */
export const accept = <M extends { readonly offset: string }>(
  claim: Claim,
  messages: ReadonlyArray<M>,
  toRecord: (message: M) => LogRecord,
  acceptGap = false
): Array<LogRecord> => {
  const fresh: Array<LogRecord> = []
  for (const message of messages) {
    const offset = Number(message.offset)
    if (offset < claim.nextOffset) continue
    if (offset > claim.nextOffset && !acceptGap) break
    fresh.push(toRecord(message))
    claim.nextOffset = offset + 1
  }
  return fresh
}

/** The first offset of the batch past a gap after `nextOffset`, if the batch has one. */
export const gapIn = (claim: Claim, messages: ReadonlyArray<{ readonly offset: string }>): number | undefined => {
  const first = messages.find((message) => Number(message.offset) >= claim.nextOffset)
  return first === undefined || Number(first.offset) === claim.nextOffset ? undefined : Number(first.offset)
}

/**
 * The claim's records from its buffer, as the handler pulls them; ends once
 * the claim is revoked (whatever is left in the buffer is not delivered).
 * `resume` lets the partition be fetched again once the handler has pulled
 * the buffer down to the low-water mark.
 */
export const records = (
  claim: Claim,
  buffer: Queue.Queue<LogRecord, Cause.Done>,
  resume: () => void
): Stream.Stream<LogRecord> =>
  Stream.fromPull(
    Effect.succeed(
      Effect.suspend(() => {
        if (Deferred.isDoneUnsafe(claim.revoked)) return Cause.done()
        return Effect.raceFirst(
          Queue.takeBetween(buffer, 1, maxChunk),
          Deferred.await(claim.revoked).pipe(Effect.andThen(Cause.done()))
        ).pipe(
          Effect.map((chunk) => {
            const last = chunk.at(-1)
            if (last !== undefined) claim.delivered = Math.max(claim.delivered, last.offset + 1)
            if (claim.backpressured && Queue.sizeUnsafe(buffer) <= lowWater) {
              claim.backpressured = false
              resume()
            }
            return chunk as unknown as Arr.NonEmptyReadonlyArray<LogRecord>
          })
        )
      })
    )
  )
