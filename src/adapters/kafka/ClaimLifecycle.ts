/**
 * A claim's whole life on this member, once assigned: wait for the previous
 * holder's release (and for this member's own earlier claim of the
 * partition to drain), start from the committed offset, run the handler —
 * again from the committed offset when it ends before its claim, with
 * backoff; interrupted when it outlives its revocation by the drain timeout
 * — and, once it has finished, write the release marker.
 */
import { type Cause, Deferred, Duration, Effect, Fiber, Queue, Schedule } from "effect"
import type { ConsumeOptions, EventLogError, LogRecord, PartitionClaim } from "../../ports/EventLog.ts"
import * as Claim from "./Claim.ts"
import * as Handover from "./Handover.ts"

/** Between runs of a claim handler that ended before its claim: 100 ms doubling to 5 s, jittered. */
const restartBackoff = Schedule.min([Schedule.exponential("100 millis"), Schedule.spaced("5 seconds")]).pipe(
  Schedule.jittered
)

/** What the lifecycle needs of its consumer. */
export interface Member {
  readonly onClaim: ConsumeOptions["onClaim"]
  readonly drainTimeout: Duration.Duration
  /** Revoked claims still draining. */
  readonly draining: ReadonlySet<Claim.Claim>
  readonly log: (effect: Effect.Effect<void>, partition?: number) => Effect.Effect<void>
  readonly awaitRelease: (partition: number, id: string) => Effect.Effect<void>
  readonly startingOffset: (partition: number) => Effect.Effect<number, EventLogError>
  /** Points the consumer at `offset` for the claim; false when it is no longer current. */
  readonly open: (claim: Claim.Claim, offset: number, buffer: Queue.Queue<LogRecord, Cause.Done>) => boolean
  readonly close: (claim: Claim.Claim) => void
  readonly partitionClaim: (claim: Claim.Claim, buffer: Queue.Queue<LogRecord, Cause.Done>) => PartitionClaim
  readonly commitOffset: (
    claim: Claim.Claim,
    offset: number,
    metadata: string | null
  ) => Effect.Effect<void, EventLogError>
  /** Drops the ended claim from the member's books. */
  readonly forget: (claim: Claim.Claim) => void
}

export const make = (deps: Member) => {
  const {
    drainTimeout,
    draining,
    log,
    awaitRelease,
    startingOffset,
    open,
    close,
    partitionClaim,
    commitOffset,
    forget
  } = deps
  /**
   * Runs the handler for as long as the claim lasts; one that ends early
   * (returned, died, interrupted) runs again from the committed offset,
   * so what it did not commit is redelivered.
   */
  const runHandler = (claim: Claim.Claim) => {
    /** One run of the handler; answers whether it should run again (it ended before its claim). */
    const runOnce = Effect.gen(function* () {
      const buffer = claim.buffer
      if (buffer === undefined) return false
      const handler = yield* Effect.forkChild(deps.onClaim(partitionClaim(claim, buffer)))
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
      if (Deferred.isDoneUnsafe(claim.revoked)) return false
      yield* log(Claim.reportEarlyEnd(exit), claim.partition)
      close(claim)
      return true
    })
    /** Points the claim at the committed offset again, after a run that ended early. */
    const reopen = Effect.gen(function* () {
      if (Deferred.isDoneUnsafe(claim.revoked)) return false
      const offset = yield* startingOffset(claim.partition).pipe(
        Effect.retry({ schedule: Schedule.exponential("200 millis"), times: 5 }),
        Effect.catch((error) => log(Effect.logError(error.message), claim.partition).pipe(Effect.as(undefined)))
      )
      return offset !== undefined && open(claim, offset, yield* Queue.unbounded<LogRecord, Cause.Done>())
    })
    let first = true
    const attempt = Effect.suspend(() => {
      if (first) {
        first = false
        return runOnce
      }
      return reopen.pipe(Effect.flatMap((opened) => (opened ? runOnce : Effect.succeed(false))))
    })
    return attempt.pipe(Effect.repeat({ schedule: restartBackoff, while: (again) => again }), Effect.asVoid)
  }

  /** The claim's whole life: wait for the partition, run the handler, release it. */
  const lifecycle = (claim: Claim.Claim): Effect.Effect<void> =>
    Effect.gen(function* () {
      for (const previous of draining) {
        if (previous.partition === claim.partition && previous.fiber !== undefined && previous !== claim) {
          yield* Fiber.await(previous.fiber)
        }
      }
      const acquired = yield* Effect.raceFirst(
        Effect.gen(function* () {
          yield* awaitRelease(claim.partition, claim.id).pipe(log)
          const offset = yield* startingOffset(claim.partition).pipe(
            Effect.retry({ schedule: Schedule.exponential("200 millis"), times: 5 })
          )
          const opened = open(claim, offset, yield* Queue.unbounded<LogRecord, Cause.Done>())
          if (opened)
            yield* log(Effect.logDebug(`claimed partition ${claim.partition} from offset ${offset}`), claim.partition)
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
      if (claim.phase._tag !== "Active") return
      // The handler has drained and made its final commit: the marker
      // tells the next owner the committed offset is now final.
      const offset = claim.lastCommitted ?? claim.startOffset
      yield* commitOffset(claim, offset, Handover.releaseMarker(claim.id)).pipe(
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
          if (claim.phase._tag !== "Lost") claim.phase = Claim.Phase.Released()
          close(claim)
          forget(claim)
        })
      )
    )

  return lifecycle
}
