/**
 * The Cache and PubSub ports on Redis (cluster mode), over two connections:
 * one for commands and one for SUBSCRIBE, since a subscribed connection takes
 * no other commands. Passes test/contract/Cache.contract.ts.
 *
 * Failure model: a Redis that is down fails commands within about a second
 * (no offline queue, one retry of in-flight commands) instead of stalling
 * requests, while ioredis keeps reconnecting in the background with capped,
 * jittered backoff and resubscribes its channels once back. Messages published
 * while the subscriber connection is down are lost; delivery is at most once
 * (see PubSub.ts).
 */
import { createHash } from "node:crypto"
import { Context, Duration, Effect, Layer, Schema } from "effect"
import { Redis as IORedis } from "ioredis"
import type { RedisOptions } from "ioredis"
import { Cache, CacheError } from "./Cache.ts"
import type { TakeResult, TokenBucket } from "./Cache.ts"
import { checkBucket, makeChannelFanout, subscriberBufferSize, ttlMillis } from "./Memory.ts"
import { PubSub } from "./PubSub.ts"

export interface RedisLayerOptions {
  /** `redis://[user:password@]host:port[/db]` */
  readonly url: string
}

const connectTimeout = Duration.seconds(2)
/** Bounds a command on a connection that is up but not answering (a partition). */
const commandTimeout = Duration.seconds(5)
/** How long shutdown waits for QUIT before dropping the socket. */
const quitTimeout = Duration.seconds(1)

/** 200 ms doubling to 5 s, jittered so a fleet does not reconnect in lockstep. */
const retryStrategy = (attempt: number): number =>
  Math.round(Math.min(100 * 2 ** Math.min(attempt, 6), 5_000) * (0.5 + Math.random() / 2))

/**
 * The token bucket, run atomically by Redis. KEYS[1] is a hash holding
 * `tokens` (fractional) and `ts` (ms of the last update, by Redis TIME so every
 * node shares one clock); ARGV is capacity and refill per second. A missing
 * bucket is full. Refill is continuous: tokens + elapsed * rate, capped at
 * capacity. An allowed take spends one token; a denied one spends nothing and
 * answers the milliseconds until one token is there. Either way the refilled
 * state is stored, and the key expires when the bucket would be full again,
 * which is indistinguishable from it being absent, so idle buckets vanish.
 * Answers {allowed (1 or 0), retryAfterMs}, integers because Redis truncates
 * Lua numbers in replies. Memory.ts does the same arithmetic.
 */
const takeScript = `
if redis.replicate_commands then redis.replicate_commands() end
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
else
  tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate / 1000)
end
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((capacity - tokens) * 1000 / rate)))
return {allowed, retry}
`
const takeScriptSha = createHash("sha1").update(takeScript).digest("hex")

const TakeReply = Schema.Tuple([Schema.Number, Schema.Number])
const decodeTakeReply = Schema.decodeUnknownEffect(TakeReply)

/** The URL without credentials, for messages and logs. */
const describeUrl = (url: string): string => {
  // Not a URL at all: say so rather than echo what may be a secret.
  if (!URL.canParse(url)) return "<unparseable Redis URL>"
  const parsed = new URL(url)
  return `${parsed.protocol}//${parsed.host}${parsed.pathname === "/" ? "" : parsed.pathname}`
}

const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

const command = <A>(what: string, run: () => Promise<A>): Effect.Effect<A, CacheError> =>
  Effect.tryPromise({
    try: run,
    catch: (cause) => new CacheError({ message: `Redis ${what} failed: ${messageOf(cause)}`, cause })
  })

/**
 * One ioredis connection, connected and answering PING before the layer is
 * built, so a wrong URL or a down Redis fails the layer with the reason. It
 * is quit (or, failing that, dropped) when the layer's scope closes.
 */
const connection = Effect.fnUntraced(function* (url: string, role: "command" | "subscriber") {
  const where = describeUrl(url)
  const context = yield* Effect.context<never>()
  let lastError: Error | undefined
  const options: RedisOptions = {
    lazyConnect: true,
    connectionName: `harmony-${role}`,
    connectTimeout: Duration.toMillis(connectTimeout),
    commandTimeout: Duration.toMillis(commandTimeout),
    maxRetriesPerRequest: 1,
    enableOfflineQueue: false,
    retryStrategy
  }
  const client = yield* Effect.acquireRelease(
    Effect.try({
      try: () => {
        const client = new IORedis(url, options)
        // Without a listener ioredis reports these on stderr; each reconnect
        // attempt while Redis is down emits one, so they are throttled by the
        // retry backoff.
        client.on("error", (error: Error) => {
          lastError = error
          Effect.runForkWith(context)(
            Effect.logWarning(`Redis ${role} connection to ${where}: ${error.message}`).pipe(
              Effect.annotateLogs({ redis: where, role })
            )
          )
        })
        return client
      },
      catch: (cause) => new CacheError({ message: `invalid Redis URL ${where}: ${messageOf(cause)}`, cause })
    }),
    (client) =>
      // QUIT lets replies in flight arrive; a connection that is not up has none.
      (client.status === "ready" ? command("QUIT", () => client.quit()) : Effect.void).pipe(
        Effect.timeoutOrElse({
          duration: quitTimeout,
          orElse: () =>
            Effect.fail(new CacheError({ message: `Redis QUIT timed out after ${Duration.format(quitTimeout)}` }))
        }),
        Effect.ignore({ log: "Warn" }),
        // Also stops the background reconnects of a connection that never came up.
        Effect.ensuring(Effect.sync(() => client.disconnect()))
      )
  )
  yield* command("connect", () => client.connect()).pipe(
    Effect.andThen(command("PING", () => client.ping())),
    Effect.timeoutOrElse({
      duration: Duration.sum(connectTimeout, Duration.seconds(1)),
      orElse: () => Effect.fail(new CacheError({ message: "timed out" }))
    }),
    Effect.mapError(
      (error) =>
        new CacheError({
          message: `cannot reach Redis at ${where} (${role} connection): ${lastError?.message ?? error.message}`,
          cause: lastError ?? error
        })
    )
  )
  return client
})

const makeCache = (client: IORedis, subscriber: IORedis) => {
  const runTake = (key: string, bucket: TokenBucket) =>
    command("token bucket script", () =>
      client.evalsha(takeScriptSha, 1, key, bucket.capacity, bucket.refillPerSecond).catch((error: unknown) =>
        // NOSCRIPT after a restart, failover or SCRIPT FLUSH: EVAL sends the
        // body and caches it again. Anything else is a real failure.
        messageOf(error).startsWith("NOSCRIPT")
          ? client.eval(takeScript, 1, key, bucket.capacity, bucket.refillPerSecond)
          : Promise.reject(error)
      )
    )

  return Cache.of({
    get: (key) => command("GET", () => client.get(key)).pipe(Effect.map((value) => value ?? undefined)),
    set: (key, value, ttl) =>
      Effect.flatMap(ttlMillis(ttl), (millis) => command("SET", () => client.set(key, value, "PX", millis))),
    delete: (keys) => (keys.length === 0 ? Effect.void : command("DEL", () => client.del(...keys))),
    take: Effect.fnUntraced(function* (key: string, bucket: TokenBucket) {
      yield* checkBucket(bucket)
      const reply = yield* runTake(key, bucket)
      const [allowed, retryAfterMs] = yield* decodeTakeReply(reply).pipe(
        Effect.mapError(
          (cause) => new CacheError({ message: `unexpected token bucket reply: ${JSON.stringify(reply)}`, cause })
        )
      )
      const result: TakeResult = { allowed: allowed === 1, retryAfterMs }
      return result
    }),
    // Both connections: a node whose subscriber is down misses broadcasts.
    ping: Effect.all([command("PING", () => client.ping()), command("PING", () => subscriber.ping())], {
      concurrency: 2,
      discard: true
    })
  })
}

const makePubSub = Effect.fnUntraced(function* (client: IORedis, subscriber: IORedis) {
  const context = yield* Effect.context<never>()
  const fanout = yield* makeChannelFanout({
    bufferSize: subscriberBufferSize,
    open: (channel) => subscriber.subscribe(channel),
    close: (channel) => subscriber.unsubscribe(channel)
  })
  subscriber.on("message", (channel: string, message: string) => {
    if (fanout.deliver(channel, message)) return
    // A subscription nobody here wants any more: an UNSUBSCRIBE that failed
    // while Redis was away (ioredis resubscribed it on reconnect), or a
    // SUBSCRIBE that timed out here but went through. Issued synchronously,
    // so it cannot overtake a SUBSCRIBE from a newer local subscriber.
    subscriber.unsubscribe(channel).then(
      () => undefined,
      (cause: unknown) =>
        Effect.runForkWith(context)(
          Effect.logWarning(`could not unsubscribe from stray Redis channel ${channel}: ${messageOf(cause)}`)
        )
    )
  })
  return PubSub.of({
    publish: (channel, payload) => Effect.asVoid(command("PUBLISH", () => client.publish(channel, payload))),
    subscribe: fanout.subscribe
  })
})

/** Cache and PubSub on the Redis at `options.url`; fails to build when it cannot be reached. */
export const layer = (options: RedisLayerOptions): Layer.Layer<Cache | PubSub, CacheError> =>
  Layer.effectContext(
    Effect.gen(function* () {
      const [client, subscriber] = yield* Effect.all(
        [connection(options.url, "command"), connection(options.url, "subscriber")],
        { concurrency: 2 }
      )
      const cache = makeCache(client, subscriber)
      const pubsub = yield* makePubSub(client, subscriber)
      return Context.make(Cache, cache).pipe(Context.add(PubSub, pubsub))
    })
  )
