/**
 * The Cache, PubSub and Presence ports in-process, for embedded mode: one
 * node, so the "shared" state is this process's memory. Semantics match
 * Redis.ts (both pass test/contract/Cache.contract.ts and
 * test/contract/Presence.contract.ts): TTLs, token buckets and presence
 * heartbeats on the Clock, pub/sub ref-counted per channel with
 * per-subscriber sliding buffers.
 *
 * The channel fan-out and the argument checks are exported for Redis.ts, which
 * layers one Redis SUBSCRIBE per channel on the same fan-out.
 */
import { Clock, Duration, Effect, Layer, Option, Queue, RcMap, Schedule, Stream } from "effect"
import type { Cause, Scope } from "effect"
import { Cache, CacheError } from "../../ports/Cache.ts"
import type { TakeResult, TokenBucket } from "../../ports/Cache.ts"
import { Presence } from "../../ports/Presence.ts"
import { PubSub } from "../../ports/PubSub.ts"

/**
 * Messages a local subscriber may have waiting before the oldest are dropped.
 * Sliding rather than back-pressure because one stalled socket must not hold
 * up the channel's other subscribers (nor, in Redis.ts, the shared subscriber
 * connection); sliding rather than dropping-newest because chat consumers
 * detect the gap from sequence numbers and backfill from the store, so the
 * freshest messages are the ones worth keeping.
 */
export const subscriberBufferSize = 1024

/** Checks a TTL and answers it in whole milliseconds (Redis PX takes integers). */
export const ttlMillis = (ttl: Duration.Input): Effect.Effect<number, CacheError> => {
  const duration = Duration.fromInput(ttl)
  const millis = Option.isSome(duration) ? Duration.toMillis(duration.value) : Number.NaN
  return Number.isFinite(millis) && millis > 0
    ? Effect.succeed(Math.ceil(millis))
    : Effect.fail(new CacheError({ message: `TTL must be a positive, finite duration, got ${String(ttl)}` }))
}

/** Rejects buckets the refill arithmetic cannot serve (a zero rate never refills). */
export const checkBucket = (bucket: TokenBucket): Effect.Effect<void, CacheError> =>
  Number.isFinite(bucket.capacity) &&
  bucket.capacity >= 1 &&
  Number.isFinite(bucket.refillPerSecond) &&
  bucket.refillPerSecond > 0
    ? Effect.void
    : Effect.fail(
        new CacheError({
          message: `token bucket needs capacity >= 1 and refillPerSecond > 0, got capacity ${bucket.capacity}, refillPerSecond ${bucket.refillPerSecond}`
        })
      )

interface ChannelFanoutOptions {
  readonly bufferSize: number
  /**
   * Starts the underlying subscription when a channel gets its first local
   * subscriber; that subscriber waits for the promise. Called synchronously
   * right after the channel is registered locally, so the command order on
   * the wire follows the order of registrations (see `release` below).
   */
  readonly open?: ((channel: string) => Promise<unknown>) | undefined
  /** Ends the underlying subscription once the channel's last local subscriber has left. */
  readonly close?: ((channel: string) => Promise<unknown>) | undefined
}

export interface ChannelFanout {
  /**
   * Hands a message to every local subscriber of the channel without waiting
   * on any of them; answers false when the channel has no local registration.
   */
  readonly deliver: (channel: string, payload: string) => boolean
  /** Whether the channel has a local registration. */
  readonly has: (channel: string) => boolean
  readonly subscribe: (channel: string) => Effect.Effect<Stream.Stream<string>, CacheError, Scope.Scope>
}

type Subscribers = Set<Queue.Queue<string, Cause.Done>>

/**
 * Local fan-out of channel messages: one registration (and one underlying
 * subscription) per channel, ref-counted by an RcMap, and one sliding queue
 * per local subscriber. Closing the enclosing scope ends every subscriber's
 * stream.
 */
export const makeChannelFanout = Effect.fnUntraced(function* (options: ChannelFanoutOptions) {
  const channels = new Map<string, Subscribers>()

  // Registration and command happen in one synchronous block, and so does the
  // check-and-unsubscribe in `release`; the connection sends commands in call
  // order, so whatever order a closing and a reopening registration race in,
  // the last command for the channel on the wire matches whether it is wanted.
  const acquire = (channel: string, subscribers: Subscribers) =>
    Effect.callback<void, CacheError>((resume) => {
      channels.set(channel, subscribers)
      if (options.open === undefined) return resume(Effect.void)
      options.open(channel).then(
        () => resume(Effect.void),
        (cause: unknown) =>
          resume(Effect.fail(new CacheError({ message: `could not subscribe to channel ${channel}`, cause })))
      )
    })

  const release = (channel: string, subscribers: Subscribers) =>
    Effect.callback<void, CacheError>((resume) => {
      for (const queue of subscribers) Queue.endUnsafe(queue)
      // Released already (its subscribe failed), or a newer registration has
      // taken the channel over and subscribed: unsubscribing now would leave
      // that one deaf.
      if (channels.get(channel) !== subscribers) return resume(Effect.void)
      channels.delete(channel)
      if (options.close === undefined) return resume(Effect.void)
      options.close(channel).then(
        () => resume(Effect.void),
        (cause: unknown) =>
          resume(Effect.fail(new CacheError({ message: `could not unsubscribe from channel ${channel}`, cause })))
      )
    }).pipe(
      // A failed unsubscribe only leaves a stray subscription whose messages
      // nobody reads; the caller (Redis.ts) reaps those on arrival.
      Effect.ignore({ log: "Warn" })
    )

  const registrations = yield* RcMap.make({
    lookup: (channel: string) =>
      Effect.gen(function* () {
        const subscribers: Subscribers = new Set()
        yield* Effect.addFinalizer(() => release(channel, subscribers))
        // Undone at once rather than when the failed entry's borrowers leave:
        // a SUBSCRIBE that timed out here may still have gone through.
        yield* acquire(channel, subscribers).pipe(Effect.onError(() => release(channel, subscribers)))
        return subscribers
      })
  })

  const deliver = (channel: string, payload: string): boolean => {
    const subscribers = channels.get(channel)
    if (subscribers === undefined) return false
    for (const queue of subscribers) Queue.offerUnsafe(queue, payload)
    return true
  }

  const subscribe = Effect.fnUntraced(function* (channel: string) {
    const subscribers = yield* RcMap.get(registrations, channel).pipe(
      // Otherwise the failed entry stays cached until this scope closes, and
      // a retry within the same scope would get the same failure back.
      Effect.tapError(() => RcMap.invalidate(registrations, channel))
    )
    const queue = yield* Effect.acquireRelease(
      Queue.sliding<string, Cause.Done>(options.bufferSize).pipe(
        Effect.tap((queue) => Effect.sync(() => subscribers.add(queue)))
      ),
      (queue) =>
        Effect.sync(() => {
          subscribers.delete(queue)
          Queue.endUnsafe(queue)
        })
    )
    return Stream.fromQueue(queue)
  })

  const fanout: ChannelFanout = { deliver, has: (channel) => channels.has(channel), subscribe }
  return fanout
})

interface Entry {
  readonly value: string
  readonly expiresAt: number
}

interface Bucket {
  readonly tokens: number
  readonly updatedAt: number
  /** When the bucket will be full again, from which point it is the same as no bucket. */
  readonly expiresAt: number
}

/** Expired entries are dropped on read; this sweep bounds the ones never read again. */
const sweepInterval = Duration.seconds(30)

const makeCache = Effect.gen(function* () {
  const entries = new Map<string, Entry>()
  const buckets = new Map<string, Bucket>()

  const sweep = Effect.gen(function* () {
    const now = yield* Clock.currentTimeMillis
    for (const [key, entry] of entries) if (entry.expiresAt <= now) entries.delete(key)
    for (const [key, bucket] of buckets) if (bucket.expiresAt <= now) buckets.delete(key)
  })
  yield* Effect.forkScoped(Effect.repeat(sweep, Schedule.spaced(sweepInterval)))

  const get = Effect.fnUntraced(function* (key: string) {
    const entry = entries.get(key)
    if (entry === undefined) return undefined
    if (entry.expiresAt <= (yield* Clock.currentTimeMillis)) {
      entries.delete(key)
      return undefined
    }
    return entry.value
  })

  const set = Effect.fnUntraced(function* (key: string, value: string, ttl: Duration.Input) {
    const millis = yield* ttlMillis(ttl)
    entries.set(key, { value, expiresAt: (yield* Clock.currentTimeMillis) + millis })
  })

  // One synchronous step after the TTL check: atomic on the single-threaded
  // runtime, so of concurrent callers exactly one sees the key absent.
  const setIfAbsent = Effect.fnUntraced(function* (key: string, value: string, ttl: Duration.Input) {
    const millis = yield* ttlMillis(ttl)
    const now = yield* Clock.currentTimeMillis
    const entry = entries.get(key)
    // An expired entry is absent, as it is to get.
    if (entry !== undefined && entry.expiresAt > now) return false
    entries.set(key, { value, expiresAt: now + millis })
    return true
  })

  const del = (keys: ReadonlyArray<string>) =>
    Effect.sync(() => {
      for (const key of keys) {
        entries.delete(key)
        buckets.delete(key)
      }
    })

  // The same arithmetic as the Lua script in Redis.ts.
  const take = Effect.fnUntraced(function* (key: string, bucket: TokenBucket, cost: 1 | -1 = 1) {
    yield* checkBucket(bucket)
    const now = yield* Clock.currentTimeMillis
    const { capacity, refillPerSecond } = bucket
    const stored = buckets.get(key)
    const before =
      stored === undefined || stored.expiresAt <= now
        ? capacity
        : Math.min(capacity, stored.tokens + (Math.max(0, now - stored.updatedAt) * refillPerSecond) / 1000)
    const allowed = cost < 0 || before >= 1
    const tokens = allowed ? Math.min(capacity, before - cost) : before
    buckets.set(key, {
      tokens,
      updatedAt: now,
      expiresAt: now + Math.ceil(((capacity - tokens) * 1000) / refillPerSecond)
    })
    const result: TakeResult = {
      allowed,
      retryAfterMs: allowed ? 0 : Math.ceil(((1 - tokens) * 1000) / refillPerSecond)
    }
    return result
  })

  return Cache.of({ get, set, setIfAbsent, delete: del, take, ping: Effect.void, inProcess: true })
})

const makePubSub = Effect.gen(function* () {
  const fanout = yield* makeChannelFanout({ bufferSize: subscriberBufferSize })
  return PubSub.of({
    publish: (channel, payload) =>
      Effect.sync(() => {
        fanout.deliver(channel, payload)
      }),
    subscribe: fanout.subscribe
  })
})

/**
 * Presence as chat -> user -> node -> expiry (ms, on the Clock), the same
 * model as the Lua scripts in Redis.ts: a user is online in a chat while any
 * node's heartbeat for them there has not expired. Expired heartbeats are
 * dropped whenever their user is looked at, and by a periodic sweep.
 */
const makePresence = Effect.gen(function* () {
  const chats = new Map<string, Map<string, Map<string, number>>>()

  /** The user's unexpired heartbeats in the chat, or undefined (their entry removed) when none is left. */
  const live = (chatId: string, userId: string, now: number): Map<string, number> | undefined => {
    const users = chats.get(chatId)
    const nodes = users?.get(userId)
    if (users === undefined || nodes === undefined) return undefined
    for (const [node, expiresAt] of nodes) if (expiresAt <= now) nodes.delete(node)
    if (nodes.size > 0) return nodes
    users.delete(userId)
    if (users.size === 0) chats.delete(chatId)
    return undefined
  }

  const sweep = Effect.gen(function* () {
    const now = yield* Clock.currentTimeMillis
    for (const [chatId, users] of chats) for (const userId of users.keys()) live(chatId, userId, now)
  })
  yield* Effect.forkScoped(Effect.repeat(sweep, Schedule.spaced(sweepInterval)))

  const enter = Effect.fnUntraced(function* (
    nodeId: string,
    userId: string,
    chatIds: ReadonlyArray<string>,
    ttl: Duration.Input
  ) {
    const millis = yield* ttlMillis(ttl)
    const now = yield* Clock.currentTimeMillis
    const joined: Array<string> = []
    for (const chatId of new Set(chatIds)) {
      const before = live(chatId, userId, now)
      if (before === undefined) joined.push(chatId)
      const users = chats.get(chatId) ?? new Map<string, Map<string, number>>()
      const nodes = before ?? new Map<string, number>()
      chats.set(chatId, users)
      users.set(userId, nodes)
      // The latest heartbeat sets the expiry, even when it is sooner than the last one.
      nodes.set(nodeId, now + millis)
    }
    return joined
  })

  const leave = Effect.fnUntraced(function* (nodeId: string, userId: string, chatId: string) {
    const now = yield* Clock.currentTimeMillis
    chats.get(chatId)?.get(userId)?.delete(nodeId)
    return live(chatId, userId, now) === undefined
  })

  const online = Effect.fnUntraced(function* (chatId: string) {
    const now = yield* Clock.currentTimeMillis
    const users = chats.get(chatId)
    if (users === undefined) return []
    return [...users.keys()].filter((userId) => live(chatId, userId, now) !== undefined)
  })

  return Presence.of({ enter, leave, online })
})

export const layer: Layer.Layer<Cache | PubSub | Presence> = Layer.mergeAll(
  Layer.effect(Cache, makeCache),
  Layer.effect(PubSub, makePubSub),
  Layer.effect(Presence, makePresence)
)
