/**
 * Rate limits: atomic token buckets in the cache (shared by every node in
 * cluster mode). Limits are configurable; a cache that cannot answer lets
 * the request through (availability over strictness) and says so in the log.
 * The buckets themselves are checked when the layer is built: a bucket the
 * arithmetic cannot serve is a configuration error, never "the cache is down".
 */
import { Context, Effect, Layer, Metric } from "effect"
import { Cache, type TokenBucket } from "../ports/Cache.ts"
import { rateLimited } from "../Metrics.ts"
import { RateLimited } from "../schema/Errors.ts"
import * as CacheBreaker from "./CacheBreaker.ts"
import { ExportGate, spanWhenExported } from "../Tracing.ts"

export type Limit = "send" | "loginUser" | "loginAddress" | "register" | "refresh" | "createChat" | "write" | "search"

export type RateLimitSettings = Record<Limit, TokenBucket>

export const defaultRateLimits: RateLimitSettings = {
  send: { capacity: 100, refillPerSecond: 50 },
  loginUser: { capacity: 10, refillPerSecond: 0.2 },
  loginAddress: { capacity: 200, refillPerSecond: 20 },
  register: { capacity: 200, refillPerSecond: 20 },
  refresh: { capacity: 200, refillPerSecond: 20 },
  createChat: { capacity: 60, refillPerSecond: 1 },
  write: { capacity: 300, refillPerSecond: 20 },
  search: { capacity: 30, refillPerSecond: 2 }
}

/** The environment variable that configures each limit (docs/operations.md). */
export const rateLimitVariables: Record<Limit, string> = {
  send: "RATE_LIMIT_SEND",
  loginUser: "RATE_LIMIT_LOGIN_USER",
  loginAddress: "RATE_LIMIT_LOGIN_ADDRESS",
  register: "RATE_LIMIT_REGISTER",
  refresh: "RATE_LIMIT_REFRESH",
  createChat: "RATE_LIMIT_CREATE_CHAT",
  write: "RATE_LIMIT_WRITE",
  search: "RATE_LIMIT_SEARCH"
}

const describe: Record<Limit, string> = {
  send: "too many messages",
  loginUser: "too many failed logins for this username from this address",
  loginAddress: "too many login attempts from this address",
  register: "too many registrations from this address",
  refresh: "too many token refreshes from this address",
  createChat: "too many chats created",
  write: "too many changes",
  search: "too many searches"
}

/** Why a bucket cannot be used, or undefined when it can (a zero refill would never refill). */
export const bucketProblem = (bucket: TokenBucket): string | undefined =>
  Number.isInteger(bucket.capacity) &&
  bucket.capacity >= 1 &&
  Number.isFinite(bucket.refillPerSecond) &&
  bucket.refillPerSecond > 0
    ? undefined
    : `needs a whole capacity >= 1 and a refill per second > 0, got ${bucket.capacity}/${bucket.refillPerSecond}`

export class RateLimits extends Context.Service<
  RateLimits,
  {
    /** Takes a token for `key` under `limit`; fails with RateLimited (with the wait) when there is none. */
    readonly take: (limit: Limit, key: string) => Effect.Effect<void, RateLimited>
    /** Gives back a token taken for an attempt that turned out not to count (a login that succeeded). */
    readonly giveBack: (limit: Limit, key: string) => Effect.Effect<void>
  }
>()("harmony/state/RateLimits") {
  static readonly layer = (settings: RateLimitSettings) =>
    Layer.effect(
      RateLimits,
      Effect.gen(function* () {
        for (const [limit, bucket] of Object.entries(settings) as Array<[Limit, TokenBucket]>) {
          const problem = bucketProblem(bucket)
          if (problem !== undefined) return yield* Effect.die(new Error(`${rateLimitVariables[limit]} ${problem}`))
        }
        const cache = yield* Cache
        // Fail-open without waiting: a cache that is down or silent is skipped (issue 11).
        const breaker = CacheBreaker.make({ what: "rate limits", inProcess: cache.inProcess })
        const gate = yield* ExportGate
        const take = Effect.fnUntraced(
          function* (limit: Limit, key: string) {
            const result = yield* breaker
              .run(cache.take(`harmony:rate:${limit}:${key}`, settings[limit]))
              .pipe(
                Effect.catchTag("CacheError", (error) =>
                  breaker
                    .warn("not checked, the request goes through", error)
                    .pipe(Effect.as({ allowed: true, retryAfterMs: 0 }))
                )
              )
            if (result.allowed) return
            yield* Metric.update(Metric.withAttributes(rateLimited, { limit }), 1)
            const retryAfterSeconds = Math.max(1, Math.ceil(result.retryAfterMs / 1000))
            return yield* new RateLimited({
              message: `${describe[limit]}; retry in ${retryAfterSeconds} s`,
              retryAfterSeconds
            })
          },
          spanWhenExported(gate, "RateLimits.take")
        )
        const giveBack = (limit: Limit, key: string) =>
          cache.take(`harmony:rate:${limit}:${key}`, settings[limit], -1).pipe(
            Effect.asVoid,
            Effect.catchTag("CacheError", (error) =>
              Effect.logWarning(`rate limit ${limit}: token not returned`, error)
            )
          )
        return RateLimits.of({ take, giveBack })
      })
    )
}
