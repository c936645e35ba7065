/**
 * The Cache port: shared key/value with TTL and atomic token buckets. Redis in
 * cluster mode, in-process in embedded mode (Redis.ts, Memory.ts). Both pass
 * test/contract/Cache.contract.ts.
 */
import { Context, Schema } from "effect"
import type { Duration, Effect } from "effect"

export class CacheError extends Schema.TaggedError<CacheError>()("CacheError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {}

export interface TokenBucket {
  /** Tokens the bucket holds when full. */
  readonly capacity: number
  /** Tokens added back per second. */
  readonly refillPerSecond: number
}

export interface TakeResult {
  readonly allowed: boolean
  /** When not allowed: milliseconds until a token is available. */
  readonly retryAfterMs: number
}

export class Cache extends Context.Service<
  Cache,
  {
    readonly get: (key: string) => Effect.Effect<string | undefined, CacheError>
    readonly set: (key: string, value: string, ttl: Duration.Input) => Effect.Effect<void, CacheError>
    /**
     * Sets the key only when it is absent; answers whether it did. Cache-aside
     * readers fill with this, so a value read from the database before an
     * invalidation cannot overwrite what the invalidator wrote after it.
     */
    readonly setIfAbsent: (key: string, value: string, ttl: Duration.Input) => Effect.Effect<boolean, CacheError>
    readonly delete: (keys: ReadonlyArray<string>) => Effect.Effect<void, CacheError>
    /**
     * Atomically takes one token from the bucket at `key` (created full). With
     * `tokens` -1 it gives one back instead (never past capacity; always allowed).
     */
    readonly take: (key: string, bucket: TokenBucket, tokens?: 1 | -1) => Effect.Effect<TakeResult, CacheError>
    /** Answers when the cache is reachable (readiness). */
    readonly ping: Effect.Effect<void, CacheError>
    /**
     * True when the cache lives in this process and answers without I/O:
     * there is no slow or unreachable server to guard against (CacheBreaker).
     */
    readonly inProcess?: boolean | undefined
  }
>()("harmony/ports/Cache") {}
