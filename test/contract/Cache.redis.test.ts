import * as Net from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Fiber, Layer, Result, Scope, Stream } from "effect"
import { Redis as IORedis } from "ioredis"
import { Cache, CacheError } from "../../src/ports/Cache.ts"
import { PubSub } from "../../src/ports/PubSub.ts"
import { layer } from "../../src/adapters/redis/Redis.ts"
import { serviceUrl, uniqueName } from "../support/services.ts"
import { cacheContract } from "./Cache.contract.ts"

const redisUrl = serviceUrl("REDIS_URL")

cacheContract("Redis", layer({ url: redisUrl }))

/** A plain client for looking at what the adapter did to the server. */
const rawClient = Effect.acquireRelease(
  Effect.sync(() => new IORedis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 })),
  (client) => Effect.promise(() => client.quit())
).pipe(Effect.tap((client) => Effect.promise(() => client.connect())))

const services = (url: string) =>
  Layer.build(layer({ url })).pipe(
    Effect.map((context) => ({ cache: Context.get(context, Cache), pubsub: Context.get(context, PubSub) }))
  )

const numberOfSubscriptions = (client: IORedis, channel: string) =>
  Effect.promise(() => client.pubsub("NUMSUB", channel)).pipe(Effect.map((reply) => Number(reply[1])))

const firstMessage = (stream: Stream.Stream<string>) =>
  stream.pipe(Stream.take(1), Stream.runCollect, Effect.timeout(Duration.seconds(5)), Effect.orDie)

/**
 * A TCP proxy in front of the test Redis that can be cut and restored, to
 * play an outage without touching the shared server.
 */
const outageProxy = Effect.acquireRelease(
  Effect.promise(async () => {
    const target = new URL(redisUrl)
    const sockets = new Set<Net.Socket>()
    const listen = (port: number) =>
      new Promise<Net.Server>((resolve, reject) => {
        const server = Net.createServer((client) => {
          const upstream = Net.connect(Number(target.port || 6379), target.hostname)
          for (const socket of [client, upstream]) {
            sockets.add(socket)
            socket.on("close", () => sockets.delete(socket))
            // Either side failing ends the pair; the client sees a dropped connection.
            socket.on("error", () => {
              client.destroy()
              upstream.destroy()
            })
          }
          client.pipe(upstream).pipe(client)
        })
        server.once("error", reject)
        server.listen(port, "127.0.0.1", () => resolve(server))
      })
    let server = await listen(0)
    const port = (server.address() as Net.AddressInfo).port
    const proxied = new URL(redisUrl)
    proxied.hostname = "127.0.0.1"
    proxied.port = String(port)
    const cut = () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      })
    return {
      url: proxied.toString(),
      cut,
      restore: async () => {
        server = await listen(port)
      }
    }
  }),
  (proxy) => Effect.promise(() => proxy.cut())
)

describe("Redis adapter", () => {
  it.live("holds one Redis subscription per channel however many local subscribers, and drops it after the last", () =>
    Effect.gen(function* () {
      const raw = yield* rawClient
      const { pubsub } = yield* services(redisUrl)
      const channel = uniqueName("numsub")
      const scope = yield* Scope.make()
      yield* Effect.all([pubsub.subscribe(channel), pubsub.subscribe(channel), pubsub.subscribe(channel)], {
        concurrency: "unbounded"
      }).pipe(Scope.provide(scope))
      assert.strictEqual(yield* numberOfSubscriptions(raw, channel), 1)
      yield* Scope.close(scope, Exit.void)
      assert.strictEqual(yield* numberOfSubscriptions(raw, channel), 0)
      const again = yield* pubsub.subscribe(channel)
      assert.strictEqual(yield* numberOfSubscriptions(raw, channel), 1)
      yield* pubsub.publish(channel, "again")
      assert.deepStrictEqual(yield* firstMessage(again), ["again"])
    })
  )

  it.live("subscribe answers only once Redis has confirmed the subscription", () =>
    Effect.gen(function* () {
      const raw = yield* rawClient
      const { pubsub } = yield* services(redisUrl)
      // Another node publishes: a node's own publishes reach its subscribers without Redis.
      const other = yield* services(redisUrl)
      const channel = uniqueName("confirmed")
      // Keeps the server busy for 500 ms, so a SUBSCRIBE written now is only
      // processed afterwards, and possibly after a PUBLISH written later.
      const busy = raw.eval(
        "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] " +
          "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - s > 500000 return 1",
        0
      )
      yield* Effect.sleep(Duration.millis(100))
      const start = Date.now()
      const messages = yield* pubsub.subscribe(channel)
      assert.isAtLeast(Date.now() - start, 300, "subscribe returned while Redis could not have confirmed it")
      yield* other.pubsub.publish(channel, "first")
      assert.deepStrictEqual(yield* firstMessage(messages), ["first"])
      yield* Effect.promise(() => busy)
    })
  )

  it.live("a node's own publish reaches its subscribers at once and once; another node's comes through Redis", () =>
    Effect.gen(function* () {
      const raw = yield* rawClient
      const here = yield* services(redisUrl)
      const there = yield* services(redisUrl)
      const channel = uniqueName("local-first")
      const received = { here: [] as Array<string>, there: [] as Array<string> }
      for (const [node, into] of [
        [here, received.here],
        [there, received.there]
      ] as const) {
        const messages = yield* node.pubsub.subscribe(channel)
        yield* Effect.forkScoped(Stream.runForEach(messages, (message) => Effect.sync(() => into.push(message))))
      }
      // Redis is busy for 300 ms: what arrives meanwhile did not come through it.
      const busy = raw.eval(
        "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] " +
          "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - s > 300000 return 1",
        0
      )
      yield* Effect.sleep(Duration.millis(50))
      const publishing = yield* Effect.forkScoped(here.pubsub.publish(channel, "from here, with spaces"))
      yield* Effect.sleep(Duration.millis(50))
      assert.deepStrictEqual(received.here, ["from here, with spaces"])
      assert.deepStrictEqual(received.there, [])
      yield* Effect.promise(() => busy)
      yield* Fiber.join(publishing)
      const deadline = Date.now() + 5_000
      const until = (delivered: () => boolean) =>
        Effect.gen(function* () {
          while (!delivered()) {
            assert.isBelow(Date.now(), deadline, `not delivered: ${JSON.stringify(received)}`)
            yield* Effect.sleep(Duration.millis(20))
          }
        })
      yield* until(() => received.there.length === 1)
      yield* there.pubsub.publish(channel, "from there")
      yield* until(() => received.here.length === 2)
      // Redis' echo of a node's own publish is not delivered a second time.
      yield* Effect.sleep(Duration.millis(200))
      assert.deepStrictEqual(received.here, ["from here, with spaces", "from there"])
      assert.deepStrictEqual(received.there, ["from here, with spaces", "from there"])
    })
  )

  it.live("a token bucket's key expires once the bucket would be full again", () =>
    Effect.gen(function* () {
      const raw = yield* rawClient
      const { cache } = yield* services(redisUrl)
      const key = uniqueName("bucket-ttl")
      yield* cache.take(key, { capacity: 5, refillPerSecond: 10 })
      const ttl = yield* Effect.promise(() => raw.pttl(key))
      // One token short, at 10 per second: 100 ms.
      assert.isAbove(ttl, 0)
      assert.isAtMost(ttl, 100)
      assert.deepStrictEqual(yield* Effect.promise(() => raw.hkeys(key)), ["tokens", "ts"])
    })
  )

  it.live("the token bucket survives a script cache flush (a restart or failover)", () =>
    Effect.gen(function* () {
      const raw = yield* rawClient
      const { cache } = yield* services(redisUrl)
      const key = uniqueName("flushed")
      const bucket = { capacity: 2, refillPerSecond: 0.01 }
      assert.isTrue((yield* cache.take(key, bucket)).allowed)
      yield* Effect.promise(() => raw.script("FLUSH"))
      assert.isTrue((yield* cache.take(key, bucket)).allowed)
      assert.isFalse((yield* cache.take(key, bucket)).allowed)
    })
  )

  it.live("a URL where no Redis answers fails the layer with a CacheError, promptly", () =>
    Effect.gen(function* () {
      const start = Date.now()
      const result = yield* Effect.result(Effect.scoped(services("redis://127.0.0.1:1")))
      assert.isTrue(Result.isFailure(result))
      if (Result.isFailure(result)) {
        assert.instanceOf(result.failure, CacheError)
        assert.include(result.failure.message, "127.0.0.1:1")
      }
      assert.isBelow(Date.now() - start, 5_000)
    })
  )

  it.live("during an outage commands fail fast; afterwards the adapter reconnects and resubscribes", () =>
    Effect.gen(function* () {
      const proxy = yield* outageProxy
      const { cache, pubsub } = yield* services(proxy.url)
      // Another node, not behind the proxy: what it publishes reaches this one only through Redis.
      const other = yield* services(redisUrl)
      const channel = uniqueName("outage")
      const messages = yield* pubsub.subscribe(channel)
      const received: Array<string> = []
      yield* Effect.forkScoped(Stream.runForEach(messages, (message) => Effect.sync(() => received.push(message))))

      yield* Effect.promise(() => proxy.cut())
      const start = Date.now()
      const failed = yield* Effect.result(cache.get(uniqueName("key")))
      assert.isTrue(Result.isFailure(failed), "a command succeeded with Redis unreachable")
      assert.isBelow(Date.now() - start, 2_000, "a command took too long to fail")
      assert.isTrue(Result.isFailure(yield* Effect.result(pubsub.publish(uniqueName("outage-publish"), "lost"))))
      yield* other.pubsub.publish(channel, "lost")
      const later = uniqueName("outage-later")
      const refused = yield* Effect.result(pubsub.subscribe(later))
      assert.isTrue(Result.isFailure(refused), "subscribed with Redis unreachable")
      if (Result.isFailure(refused)) assert.instanceOf(refused.failure, CacheError)

      yield* Effect.promise(() => proxy.restore())
      // The backoff is capped at 5 s; give it two goes.
      const deadline = Date.now() + 12_000
      while (Result.isFailure(yield* Effect.result(cache.ping))) {
        assert.isBelow(Date.now(), deadline, "never reconnected")
        yield* Effect.sleep(Duration.millis(100))
      }
      // The subscriber connection resubscribes on its own; publish until it has.
      while (received.length === 0) {
        assert.isBelow(Date.now(), deadline, "never resubscribed")
        yield* other.pubsub.publish(channel, "after")
        yield* Effect.sleep(Duration.millis(100))
      }
      assert.strictEqual(received[0], "after")
      // The failed subscribe was not cached: the same scope may try again.
      const laterMessages = yield* pubsub.subscribe(later)
      yield* pubsub.publish(later, "later")
      assert.deepStrictEqual(yield* firstMessage(laterMessages), ["later"])
    })
  )
})
