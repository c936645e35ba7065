/**
 * How SQL failures reach callers: a database that cannot be reached is the
 * contract's `unavailable` (503, try again); anything else is a defect (a bug
 * in a statement), logged with its cause and never shown to clients.
 */
import { Effect } from "effect"
import { isSqlError, type SqlError } from "effect/sql/SqlError"
import { Unavailable } from "../schema/Errors.ts"

export const orUnavailable = <A, E, R>(
  self: Effect.Effect<A, E | SqlError, R>
): Effect.Effect<A, Exclude<E, SqlError> | Unavailable, R> =>
  Effect.catchIf(self, isSqlError, (error) =>
    error.reason.isRetryable
      ? Effect.logWarning("database unavailable", error).pipe(
          Effect.andThen(Effect.fail(new Unavailable({ message: "the database is unavailable, try again" })))
        )
      : Effect.die(error)
  ) as Effect.Effect<A, Exclude<E, SqlError> | Unavailable, R>

/** Milliseconds → the ISO-8601 UTC form used on the wire. */
export const iso = (date: Date | string): string => (date instanceof Date ? date : new Date(date)).toISOString()
