/**
 * Keeps a cache that is down or not answering out of the send path. Every
 * lookup on a hot path goes through a breaker: it may take at most
 * `timeout`; once one has failed, the following ones fail at once (the
 * caller falls back: Postgres for membership, fail-open for rate limits)
 * until `cooldown` has passed and a lookup probes the cache again. Redis's
 * own reconnects go on in the background meanwhile.
 *
 * Its warning is rate-limited: one line per `warnEvery`, with the number of
 * lookups it stood for, not one per request.
 */
import { Clock, Duration, Effect } from "effect"
import { CacheError } from "../ports/Cache.ts"

export interface BreakerOptions {
  /** What the lookups are for, in the warning ("membership lookups"). */
  readonly what: string
  /** The longest a lookup may take (default 1 s: Redis answers in about a millisecond, a busy node in more). */
  readonly timeout?: Duration.Input | undefined
  /** How long lookups skip the cache after a failure (default 2 s). */
  readonly cooldown?: Duration.Input | undefined
  /** At most one warning per this long (default 10 s). */
  readonly warnEvery?: Duration.Input | undefined
  /**
   * The cache is in this process (`Cache.inProcess`): lookups run as they
   * are, without a timeout (a race and a fiber per lookup) or a cooldown.
   */
  readonly inProcess?: boolean | undefined
}

export interface CacheBreaker {
  /** Runs the lookup unless the breaker is open; fails with CacheError when skipped, failed or too slow. */
  readonly run: <A>(lookup: Effect.Effect<A, CacheError>) => Effect.Effect<A, CacheError>
  /** Logs a warning about a fallback, at most once per `warnEvery`. */
  readonly warn: (fallback: string, error: CacheError) => Effect.Effect<void>
}

export const make = (options: BreakerOptions): CacheBreaker => {
  const timeout = Duration.fromInputUnsafe(options.timeout ?? Duration.seconds(1))
  const cooldown = Duration.toMillis(Duration.fromInputUnsafe(options.cooldown ?? Duration.seconds(2)))
  const warnEvery = Duration.toMillis(Duration.fromInputUnsafe(options.warnEvery ?? Duration.seconds(10)))
  let openUntil = 0
  let lastWarning: number | undefined
  let suppressed = 0
  const skipped = new CacheError({ message: `the cache failed within the last ${cooldown} ms; skipped` })

  const guarded = <A>(lookup: Effect.Effect<A, CacheError>): Effect.Effect<A, CacheError> =>
    Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      if (now < openUntil) return yield* skipped
      return yield* lookup.pipe(
        Effect.timeoutOrElse({
          duration: timeout,
          orElse: () => Effect.fail(new CacheError({ message: `no answer within ${Duration.format(timeout)}` }))
        }),
        Effect.tapError(() =>
          Effect.flatMap(Clock.currentTimeMillis, (failedAt) =>
            Effect.sync(() => {
              openUntil = failedAt + cooldown
            })
          )
        )
      )
    })

  const run = options.inProcess === true ? <A>(lookup: Effect.Effect<A, CacheError>) => lookup : guarded

  const warn = (fallback: string, error: CacheError): Effect.Effect<void> =>
    Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      if (lastWarning !== undefined && now - lastWarning < warnEvery) {
        suppressed++
        return
      }
      const more = suppressed > 0 ? ` (${suppressed} more since the last warning)` : ""
      lastWarning = now
      suppressed = 0
      yield* Effect.logWarning(`${options.what}: the cache is unavailable; ${fallback}${more}`, error)
    })

  return { run, warn }
}
