/**
 * The one retry policy for transient failures (a store, the log or the
 * database that is briefly away): exponential backoff from `base`, at most
 * `cap` between tries, jittered so that many fibers retrying the same
 * service do not retry in step. It never gives up; bound it with
 * `Schedule.upTo` or `times` where giving up is the right answer.
 */
import { type Duration, Schedule } from "effect"

export const backoff = (
  base: Duration.Input = "100 millis",
  cap: Duration.Input = "5 seconds"
): Schedule.Schedule<Duration.Duration> =>
  Schedule.min([Schedule.exponential(base), Schedule.spaced(cap)]).pipe(Schedule.jittered)

/** `backoff()`: from 100 ms to 5 s between tries, forever. */
export const retryForever = backoff()
