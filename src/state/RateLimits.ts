/**
 * Rate limits: atomic token buckets in the cache (shared by every node in
 * cluster mode). Limits are configurable; a cache that cannot answer lets
 * the request through (availability over strictness) and says so in the log.
 */
import { Context, Effect, Layer, Metric } from "effect"
import { Cache, type TokenBucket } from "../ports/Cache.ts"
import { rateLimited } from "../Metrics.ts"
import { RateLimited } from "../schema/Errors.ts"

export type Limit = "send" | "loginUser" | "loginAddress" | "register"

export type RateLimitSettings = Record<Limit, TokenBucket>

export const defaultRateLimits: RateLimitSettings = {
  send: { capacity: 100, refillPerSecond: 50 },
  loginUser: { capacity: 10, refillPerSecond: 0.2 },
  loginAddress: { capacity: 200, refillPerSecond: 20 },
  register: { capacity: 200, refillPerSecond: 20 }
}

const describe: Record<Limit, string> = {
  send: "too many messages",
  loginUser: "too many login attempts for this username",
  loginAddress: "too many login attempts from this address",
  register: "too many registrations from this address"
}

export class RateLimits extends Context.Service<
  RateLimits,
  {
    /** Takes a token for `key` under `limit`; fails with RateLimited (with the wait) when there is none. */
    readonly take: (limit: Limit, key: string) => Effect.Effect<void, RateLimited>
  }
>()("harmony/state/RateLimits") {
  static readonly layer = (settings: RateLimitSettings) =>
    Layer.effect(
      RateLimits,
      Effect.gen(function* () {
        const cache = yield* Cache
        const take = Effect.fn("RateLimits.take")(function* (limit: Limit, key: string) {
          const result = yield* cache
            .take(`harmony:rate:${limit}:${key}`, settings[limit])
            .pipe(
              Effect.catchTag("CacheError", (error) =>
                Effect.logWarning(`rate limit ${limit} not checked: the cache is unavailable`, error).pipe(
                  Effect.as({ allowed: true, retryAfterMs: 0 })
                )
              )
            )
          if (result.allowed) return
          yield* Metric.update(Metric.withAttributes(rateLimited, { limit }), 1)
          const retryAfterSeconds = Math.max(1, Math.ceil(result.retryAfterMs / 1000))
          return yield* new RateLimited({
            message: `${describe[limit]}; retry in ${retryAfterSeconds} s`,
            retryAfterSeconds
          })
        })
        return RateLimits.of({ take })
      })
    )
}
