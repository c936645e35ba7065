import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Layer } from "effect"
import { Redis as IORedis } from "ioredis"
import { Presence } from "../../src/ports/Presence.ts"
import { layer } from "../../src/adapters/redis/Redis.ts"
import { serviceUrl, uniqueName } from "../support/services.ts"
import { presenceContract } from "./Presence.contract.ts"

const redisUrl = serviceUrl("REDIS_URL")

presenceContract("Redis", layer({ url: redisUrl }))

/** A plain client for looking at what the adapter left on the server. */
const rawClient = Effect.acquireRelease(
  Effect.sync(() => new IORedis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 })),
  (client) => Effect.promise(() => client.quit())
).pipe(Effect.tap((client) => Effect.promise(() => client.connect())))

const presenceService = Layer.build(layer({ url: redisUrl })).pipe(
  Effect.map((context) => Context.get(context, Presence))
)

describe("Redis presence adapter", () => {
  it.live("a chat's keys vanish shortly after its last heartbeat expires, and after its last leave", () =>
    Effect.gen(function* () {
      const raw = yield* rawClient
      const presence = yield* presenceService
      const keysOf = (chat: string) => [`presence:{${chat}}`, `presence-nodes:{${chat}}`]

      const abandoned = uniqueName("abandoned")
      yield* presence.enter("node-killed", uniqueName("user"), [abandoned], "200 millis")
      for (const key of keysOf(abandoned)) {
        const pttl = yield* Effect.promise(() => raw.pttl(key))
        assert.isAbove(pttl, 0, `${key} has no expiry`)
        assert.isAtMost(pttl, 1_200)
      }
      const deadline = Date.now() + 10_000
      while ((yield* Effect.promise(() => raw.exists(...keysOf(abandoned)))) > 0) {
        assert.isBelow(Date.now(), deadline, "the keys of an abandoned chat were never removed")
        yield* Effect.sleep(Duration.millis(50))
      }

      const left = uniqueName("left")
      const user = uniqueName("user")
      yield* presence.enter("node-1", user, [left], "1 minute")
      assert.isTrue(yield* presence.leave("node-1", user, left))
      assert.strictEqual(yield* Effect.promise(() => raw.exists(...keysOf(left))), 0)
    })
  )

  it.live("the scripts survive a script cache flush (a restart or failover)", () =>
    Effect.gen(function* () {
      const raw = yield* rawClient
      const presence = yield* presenceService
      const chat = uniqueName("flushed")
      const user = uniqueName("user")
      yield* Effect.promise(() => raw.script("FLUSH"))
      assert.deepStrictEqual(yield* presence.enter("node-1", user, [chat], "1 minute"), [chat])
      yield* Effect.promise(() => raw.script("FLUSH"))
      assert.deepStrictEqual(yield* presence.online(chat), [user])
      yield* Effect.promise(() => raw.script("FLUSH"))
      assert.isTrue(yield* presence.leave("node-1", user, chat))
    })
  )

  it.live("an enter across more chats than one script call takes answers every joined chat", () =>
    Effect.gen(function* () {
      const presence = yield* presenceService
      const user = uniqueName("user")
      const chats = Array.from({ length: 250 }, (_, i) => uniqueName(`many-${i}`))
      yield* presence.enter("node-1", user, chats.slice(0, 120), "1 minute")
      const joined = yield* presence.enter("node-1", user, chats, "1 minute")
      assert.deepStrictEqual([...joined].sort(), chats.slice(120).sort())
      assert.deepStrictEqual(yield* presence.online(chats[249]!), [user])
    })
  )
})
