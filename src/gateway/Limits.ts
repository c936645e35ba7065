/**
 * Limits on a connection's work (docs/operations.md "Limits"): token buckets
 * per connection for each kind of frame other than `send` (whose limit is
 * per user, shared by every node: src/state/RateLimits.ts), and the gateway's
 * caps on sockets and subscriptions. Per-connection buckets live in the
 * session's memory — a frame costs no cache round trip to be counted — and
 * the socket caps bound how many such buckets one user or address can have.
 */
import type { TokenBucket } from "../ports/Cache.ts"
import type { ClientFrame } from "../schema/Protocol.ts"

export interface FrameLimits {
  readonly typing: TokenBucket
  /** `subscribe` and `unsubscribe`. */
  readonly subscribe: TokenBucket
  readonly read: TokenBucket
  /** `ping` and `auth` (re-authentication). */
  readonly ping: TokenBucket
}

export const defaultFrameLimits: FrameLimits = {
  typing: { capacity: 30, refillPerSecond: 5 },
  subscribe: { capacity: 1000, refillPerSecond: 50 },
  read: { capacity: 200, refillPerSecond: 20 },
  ping: { capacity: 20, refillPerSecond: 1 }
}

export interface GatewayLimits {
  /** Open sockets of one user on one node. */
  readonly maxSocketsPerUser: number
  /** Open sockets from one address on one node, authenticated or not. */
  readonly maxSocketsPerAddress: number
  readonly maxSubscriptionsPerSocket: number
}

export const defaultGatewayLimits: GatewayLimits = {
  maxSocketsPerUser: 50,
  maxSocketsPerAddress: 1000,
  maxSubscriptionsPerSocket: 1000
}

/** A token bucket in memory (one connection's): `take` answers whether a token was there and spends it. */
export const localBucket = (bucket: TokenBucket, now: () => number = Date.now) => {
  let tokens = bucket.capacity
  let updatedAt = now()
  return {
    take: (): boolean => {
      const at = now()
      tokens = Math.min(bucket.capacity, tokens + ((at - updatedAt) * bucket.refillPerSecond) / 1000)
      updatedAt = at
      if (tokens < 1) return false
      tokens -= 1
      return true
    }
  }
}

/** One connection's bucket for each frame type (`send` is limited per user, in the ingest). */
export const frameBucketsOf = (
  limits: FrameLimits
): Partial<Record<ClientFrame["type"], { readonly take: () => boolean }>> => {
  const subscribe = localBucket(limits.subscribe)
  const ping = localBucket(limits.ping)
  return {
    typing: localBucket(limits.typing),
    read: localBucket(limits.read),
    subscribe,
    unsubscribe: subscribe,
    ping,
    auth: ping
  }
}
