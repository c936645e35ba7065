/**
 * The Cache, PubSub and Presence ports on Redis (cluster mode), over two
 * connections: one for commands and one for SUBSCRIBE, since a subscribed
 * connection takes no other commands. Passes test/contract/Cache.contract.ts
 * and test/contract/Presence.contract.ts.
 *
 * Failure model: a Redis that is down fails commands within about a second
 * (no offline queue, one retry of in-flight commands) instead of stalling
 * requests, while ioredis keeps reconnecting in the background with capped,
 * jittered backoff and resubscribes its channels once back. Messages other
 * nodes publish while the subscriber connection is down are lost; delivery is
 * at most once (see PubSub.ts).
 */
import { createHash, randomUUID } from "node:crypto"
import { Context, Duration, Effect, Layer, Schema } from "effect"
import { Redis as IORedis } from "ioredis"
import type { RedisOptions } from "ioredis"
import { Cache, CacheError } from "../../ports/Cache.ts"
import type { TakeResult, TokenBucket } from "../../ports/Cache.ts"
import { checkBucket, makeChannelFanout, subscriberBufferSize, ttlMillis } from "../memory/Memory.ts"
import { Presence } from "../../ports/Presence.ts"
import { PubSub } from "../../ports/PubSub.ts"

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
 * answers the milliseconds until one token is there; ARGV[3] = -1 gives one
 * back (up to capacity). Either way the refilled
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
local cost = tonumber(ARGV[3]) or 1
local allowed = 0
local retry = 0
if cost < 0 then
  tokens = math.min(capacity, tokens - cost)
  allowed = 1
elseif tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((capacity - tokens) * 1000 / rate)))
return {allowed, retry}
`

/** A Lua script and the SHA1 that EVALSHA names it by. */
interface Script {
  /** For error messages. */
  readonly name: string
  readonly body: string
  readonly sha: string
}

const script = (name: string, body: string): Script => ({
  name,
  body,
  sha: createHash("sha1").update(body).digest("hex")
})

const take = script("token bucket script", takeScript)

const TakeReply = Schema.Tuple([Schema.Number, Schema.Number])
const decodeTakeReply = Schema.decodeUnknownEffect(TakeReply)

/**
 * Presence, per chat, in two keys that share the chat as their hash tag:
 *
 * - `presence:{chatId}`, a sorted set of the chat's users, each scored with
 *   the latest expiry (ms, Redis TIME) among their nodes' heartbeats: who is
 *   online is a range query above now, and expired users are found (and
 *   pruned) from the low end.
 * - `presence-nodes:{chatId}`, a hash from user id to a JSON object from
 *   node id to that node's heartbeat expiry: whether the user is on another
 *   node is one HGET, however many users the chat has.
 *
 * The ids go into keys and JSON verbatim, never split on a separator (ids may
 * hold any printable character), and the two key families differ before the
 * chat id, so no two chats' keys can collide. The scripts below share a
 * prelude; each runs atomically, and every expiry comes from Redis TIME, so
 * the nodes agree on it. Memory.ts implements the same model.
 */
const presencePrelude = `
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- Drops users whose every heartbeat has expired, a bounded number per call
-- (the rest go on later calls; reads never count them as online anyway).
local function prune(users, nodes)
  local expired = redis.call('ZRANGEBYSCORE', users, '-inf', now, 'LIMIT', 0, 128)
  if #expired > 0 then
    redis.call('ZREM', users, unpack(expired))
    redis.call('HDEL', nodes, unpack(expired))
  end
  if redis.call('EXISTS', users) == 0 then redis.call('DEL', nodes) end
end
-- The user's unexpired heartbeats other than skip's, the latest expiry
-- among them, and whether the user had any unexpired heartbeat, skip's included.
local function others(nodes, user, skip)
  local kept, latest, online = {}, nil, false
  local raw = redis.call('HGET', nodes, user)
  if raw then
    for node, expiry in pairs(cjson.decode(raw)) do
      if expiry > now then
        online = true
        if node ~= skip then
          kept[node] = expiry
          if latest == nil or expiry > latest then latest = expiry end
        end
      end
    end
  end
  return kept, latest, online
end
`

/**
 * KEYS: each chat's users key then its nodes key; ARGV: node id, user id,
 * TTL (ms). Writes the node's heartbeat (the latest one sets the expiry, even
 * when sooner than the last) and answers the 1-based indexes of the chats in
 * which the user had no unexpired heartbeat before, from any node. Both keys
 * expire a second after the chat's latest heartbeat, so an abandoned chat
 * leaves nothing behind.
 */
const enterScript = `${presencePrelude}
local node, user, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local expiry = now + ttl
local joined = {}
for i = 1, #KEYS, 2 do
  local users, nodes = KEYS[i], KEYS[i + 1]
  prune(users, nodes)
  local kept, latest, online = others(nodes, user, node)
  if not online then joined[#joined + 1] = (i + 1) / 2 end
  kept[node] = expiry
  if latest == nil or expiry > latest then latest = expiry end
  redis.call('HSET', nodes, user, cjson.encode(kept))
  redis.call('ZADD', users, latest, user)
  local last = redis.call('ZRANGE', users, -1, -1, 'WITHSCORES')
  local keep = math.max(1, tonumber(last[2]) - now + 1000)
  redis.call('PEXPIRE', users, keep)
  redis.call('PEXPIRE', nodes, keep)
end
return joined
`

/**
 * KEYS: the chat's users key and nodes key; ARGV: node id, user id. Removes
 * the node's heartbeat; answers 1 when the user has no unexpired one left on
 * any node (and removes them), else 0.
 */
const leaveScript = `${presencePrelude}
local node, user = ARGV[1], ARGV[2]
local kept, latest = others(KEYS[2], user, node)
if latest == nil then
  redis.call('ZREM', KEYS[1], user)
  redis.call('HDEL', KEYS[2], user)
  if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
  return 1
end
redis.call('HSET', KEYS[2], user, cjson.encode(kept))
redis.call('ZADD', KEYS[1], latest, user)
return 0
`

/** KEYS: the chat's users key and nodes key. Answers the users with an unexpired heartbeat. */
const onlineScript = `${presencePrelude}
prune(KEYS[1], KEYS[2])
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
`

const enter = script("presence enter script", enterScript)
const leave = script("presence leave script", leaveScript)
const online = script("presence online script", onlineScript)

const presenceKeys = (chatId: string): [users: string, nodes: string] => [
  `presence:{${chatId}}`,
  `presence-nodes:{${chatId}}`
]

/**
 * Chats per enter script call: bounds how long one call holds Redis. (A call
 * spans several chats' keys, so on a Redis Cluster, where each chat's pair
 * shares a slot but different chats do not, it would have to be one chat per
 * call; this adapter talks to a single Redis.)
 */
const enterChunk = 100

const decodeIndexes = Schema.decodeUnknownEffect(Schema.Array(Schema.Number))
const decodeFlag = Schema.decodeUnknownEffect(Schema.Number)
const decodeUsers = Schema.decodeUnknownEffect(Schema.Array(Schema.String))

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
    // Commands issued in the same tick go out in one write: fanout publishes
    // and cache lookups come in bursts.
    enableAutoPipelining: role === "command",
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

const runScript = (
  client: IORedis,
  script: Script,
  keys: ReadonlyArray<string>,
  args: ReadonlyArray<string | number>
): Effect.Effect<unknown, CacheError> =>
  command(script.name, () =>
    client.evalsha(script.sha, keys.length, ...keys, ...args).catch((error: unknown) =>
      // NOSCRIPT after a restart, failover or SCRIPT FLUSH: EVAL sends the
      // body and caches it again. Anything else is a real failure.
      messageOf(error).startsWith("NOSCRIPT")
        ? client.eval(script.body, keys.length, ...keys, ...args)
        : Promise.reject(error)
    )
  )

/** Decodes a script's reply, failing with what Redis actually answered. */
const replyOf = <A>(
  script: Script,
  reply: unknown,
  decode: (reply: unknown) => Effect.Effect<A, unknown>
): Effect.Effect<A, CacheError> =>
  decode(reply).pipe(
    Effect.mapError(
      (cause) => new CacheError({ message: `unexpected ${script.name} reply: ${JSON.stringify(reply)}`, cause })
    )
  )

const makeCache = (client: IORedis, subscriber: IORedis) => {
  const runTake = (key: string, bucket: TokenBucket, cost: 1 | -1) =>
    runScript(client, take, [key], [bucket.capacity, bucket.refillPerSecond, cost])

  return Cache.of({
    get: (key) => command("GET", () => client.get(key)).pipe(Effect.map((value) => value ?? undefined)),
    set: (key, value, ttl) =>
      Effect.flatMap(ttlMillis(ttl), (millis) => command("SET", () => client.set(key, value, "PX", millis))),
    setIfAbsent: (key, value, ttl) =>
      Effect.flatMap(ttlMillis(ttl), (millis) =>
        command("SET NX", () => client.set(key, value, "PX", millis, "NX")).pipe(Effect.map((reply) => reply === "OK"))
      ),
    delete: (keys) => (keys.length === 0 ? Effect.void : command("DEL", () => client.del(...keys))),
    take: Effect.fnUntraced(function* (key: string, bucket: TokenBucket, cost: 1 | -1 = 1) {
      yield* checkBucket(bucket)
      const reply = yield* runTake(key, bucket, cost)
      const [allowed, retryAfterMs] = yield* replyOf(take, reply, decodeTakeReply)
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

/**
 * A node's own publishes reach its own subscribers at once, not through
 * Redis: that saves the round trip on the fanout of every message whose chat
 * actor and subscribers share a node. Each payload on Redis is prefixed with
 * its publisher's tag, and a publisher skips its own payloads when Redis
 * echoes them back.
 */
const makePubSub = Effect.fnUntraced(function* (client: IORedis, subscriber: IORedis) {
  const context = yield* Effect.context<never>()
  const fanout = yield* makeChannelFanout({
    bufferSize: subscriberBufferSize,
    open: (channel) => subscriber.subscribe(channel),
    close: (channel) => subscriber.unsubscribe(channel)
  })
  // One per PubSub, not per process: two in one process (as in tests) are two nodes.
  const tag = `${randomUUID()} `
  subscriber.on("message", (channel: string, message: string) => {
    const handled = message.startsWith(tag)
      ? fanout.has(channel)
      : fanout.deliver(channel, message.slice(message.indexOf(" ") + 1))
    if (handled) return
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
    publish: (channel, payload) =>
      Effect.suspend(() => {
        fanout.deliver(channel, payload)
        return Effect.asVoid(command("PUBLISH", () => client.publish(channel, tag + payload)))
      }),
    subscribe: fanout.subscribe
  })
})

const makePresence = (client: IORedis) =>
  Presence.of({
    enter: Effect.fnUntraced(function* (
      nodeId: string,
      userId: string,
      chatIds: ReadonlyArray<string>,
      ttl: Duration.Input
    ) {
      const millis = yield* ttlMillis(ttl)
      const unique = [...new Set(chatIds)]
      const chunks = Array.from({ length: Math.ceil(unique.length / enterChunk) }, (_, i) =>
        unique.slice(i * enterChunk, (i + 1) * enterChunk)
      )
      const joined = yield* Effect.forEach(
        chunks,
        Effect.fnUntraced(function* (chats: ReadonlyArray<string>) {
          const reply = yield* runScript(client, enter, chats.flatMap(presenceKeys), [nodeId, userId, millis])
          const indexes = yield* replyOf(enter, reply, decodeIndexes)
          return indexes.flatMap((index) => {
            const chat = chats[index - 1]
            return chat === undefined ? [] : [chat]
          })
        }),
        // Pipelined on the one connection; Redis runs them one after another.
        { concurrency: "unbounded" }
      )
      return joined.flat()
    }),
    leave: (nodeId, userId, chatId) =>
      runScript(client, leave, presenceKeys(chatId), [nodeId, userId]).pipe(
        Effect.flatMap((reply) => replyOf(leave, reply, decodeFlag)),
        Effect.map((flag) => flag === 1)
      ),
    online: (chatId) =>
      runScript(client, online, presenceKeys(chatId), []).pipe(
        Effect.flatMap((reply) => replyOf(online, reply, decodeUsers))
      )
  })

/** Cache, PubSub and Presence on the Redis at `options.url`; fails to build when it cannot be reached. */
export const layer = (options: RedisLayerOptions): Layer.Layer<Cache | PubSub | Presence, CacheError> =>
  Layer.effectContext(
    Effect.gen(function* () {
      const [client, subscriber] = yield* Effect.all(
        [connection(options.url, "command"), connection(options.url, "subscriber")],
        { concurrency: 2 }
      )
      const cache = makeCache(client, subscriber)
      const pubsub = yield* makePubSub(client, subscriber)
      return Context.make(Cache, cache).pipe(Context.add(PubSub, pubsub), Context.add(Presence, makePresence(client)))
    })
  )
