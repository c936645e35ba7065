/**
 * A cache that is down or not answering stays out of the send path (issue
 * 11, defect 5): membership lookups answer from Postgres and the rate
 * limiter lets sends through without waiting for it — once a lookup has
 * failed, later ones do not touch the cache until it is probed again — and
 * the fallback is logged once in a while, not once per send. The cache here
 * never answers (a Redis that accepts commands and goes silent); Postgres is
 * stood in for by a Chats that knows one member. Virtual time (TestClock):
 * nothing here depends on the machine's speed.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Fiber, Layer, Logger, Option, References } from "effect"
import { TestClock } from "effect/testing"
import { Cache } from "../../src/ports/Cache.ts"
import type { ChatId, UserId } from "../../src/schema/Domain.ts"
import { Chats } from "../../src/state/Chats.ts"
import { Membership } from "../../src/state/Membership.ts"
import { defaultRateLimits, RateLimits } from "../../src/state/RateLimits.ts"

/** A cache whose every call waits forever; counts the calls. */
const silentCache = () => {
  const calls = { count: 0 }
  const never = Effect.suspend(() => {
    calls.count++
    return Effect.never
  })
  const cache = Cache.of({
    get: () => never,
    set: () => never,
    setIfAbsent: () => never,
    delete: () => never,
    take: () => never,
    ping: never
  })
  return { calls, cache }
}

const chats = Chats.of({ roleOf: () => Effect.succeed(Option.some("member" as const)) } as unknown as Chats["Service"])

const warnings = () => {
  const lines: Array<string> = []
  const logger = Logger.make((options) => {
    if (options.logLevel === "Warn") lines.push(String(options.message))
  })
  return { lines, provide: Effect.provideService(References.CurrentLoggers, new Set([logger])) }
}

/** Runs `count` calls one after the other, each given a second of virtual time to answer. */
const answered = <A, E>(call: Effect.Effect<A, E>, count: number) =>
  Effect.gen(function* () {
    const results: Array<A> = []
    for (let i = 0; i < count; i++) {
      const fiber = yield* Effect.forkChild(call)
      yield* TestClock.adjust(Duration.millis(10))
      const exit = fiber.pollUnsafe()
      if (exit === undefined) {
        yield* TestClock.adjust(Duration.seconds(1))
        const late = fiber.pollUnsafe()
        assert.isDefined(late, `call ${i} has not answered a second after it was made`)
        results.push(yield* Fiber.join(fiber))
      } else results.push(yield* Fiber.join(fiber))
    }
    return results
  })

describe("a cache that does not answer", () => {
  it.effect("membership lookups answer from Postgres, skip the cache after a failure, and warn once", () =>
    Effect.gen(function* () {
      const { calls, cache } = silentCache()
      const log = warnings()
      const context = yield* Layer.build(
        Membership.layer.pipe(Layer.provide(Layer.mergeAll(Layer.succeed(Cache, cache), Layer.succeed(Chats, chats))))
      )
      const membership = Context.get(context, Membership)
      const roles = yield* answered(membership.roleOf("c1" as ChatId, "u1" as UserId), 50).pipe(log.provide)
      assert.isTrue(roles.every((role) => Option.isSome(role) && role.value === "member"))
      assert.isAtMost(calls.count, 2, "after the first failure the cache is left alone")
      assert.strictEqual(log.lines.length, 1, log.lines.join("\n"))
    })
  )

  it.effect("the rate limiter lets sends through at once, and warns once", () =>
    Effect.gen(function* () {
      const { calls, cache } = silentCache()
      const log = warnings()
      const context = yield* Layer.build(
        RateLimits.layer(defaultRateLimits).pipe(Layer.provide(Layer.succeed(Cache, cache)))
      )
      const limits = Context.get(context, RateLimits)
      yield* answered(limits.take("send", "u1"), 50).pipe(log.provide)
      assert.isAtMost(calls.count, 1, "after the first failure the cache is left alone")
      assert.strictEqual(log.lines.length, 1, log.lines.join("\n"))
    })
  )
})
