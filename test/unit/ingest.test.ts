/**
 * Ingest with a message log that does not answer (issue 11, defect 4: with
 * the broker down, sends waited for ten seconds and more): every send is
 * answered `unavailable` within the send timeout, however many are waiting,
 * and a send whose caller was answered so before its produce started is not
 * produced afterwards. The log, membership and rate limits are stand-ins;
 * virtual time (TestClock), so nothing depends on the machine's speed.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Fiber, Layer, Logger, Option, References } from "effect"
import { TestClock } from "effect/testing"
import { Ingest } from "../../src/messages/Ingest.ts"
import { EventLog, EventLogError } from "../../src/ports/EventLog.ts"
import type { ChatId, UserId } from "../../src/schema/Domain.ts"
import { Membership } from "../../src/state/Membership.ts"
import { RateLimits } from "../../src/state/RateLimits.ts"

const silentLog = () => {
  const produced = { records: 0, calls: 0 }
  const log = EventLog.of({
    produce: (_topic, records) =>
      Effect.suspend(() => {
        produced.calls++
        produced.records += records.length
        // As kafkajs with the broker down: retries for a while, then fails.
        return Effect.sleep(Duration.seconds(10)).pipe(
          Effect.andThen(Effect.fail(new EventLogError({ message: "broker down" })))
        )
      })
  } as Partial<EventLog["Service"]> as EventLog["Service"])
  return { produced, log }
}

const membership = Membership.of({
  roleOf: () => Effect.succeed(Option.some("member" as const)),
  refresh: () => Effect.void,
  changed: () => Effect.void
})
const limits = RateLimits.of({ take: () => Effect.void, giveBack: () => Effect.void })

describe("Ingest", () => {
  it.effect("a log that does not answer: every send is answered unavailable within the send timeout", () =>
    Effect.gen(function* () {
      const { produced, log } = silentLog()
      const context = yield* Layer.build(
        Ingest.layerWith({ sendTimeout: Duration.seconds(3) }).pipe(
          Layer.provide(
            Layer.mergeAll(
              Layer.succeed(EventLog, log),
              Layer.succeed(Membership, membership),
              Layer.succeed(RateLimits, limits)
            )
          )
        )
      )
      const ingest = Context.get(context, Ingest)
      const sends = yield* Effect.forEach(Array.from({ length: 20 }), (_, i) =>
        Effect.forkChild(ingest.send("u1" as UserId, "c1" as ChatId, `m${i}`, "hello"))
      )
      yield* TestClock.adjust(Duration.seconds(3))
      for (const fiber of sends) {
        const exit = fiber.pollUnsafe()
        assert.isDefined(exit, "answered within the send timeout")
        assert.isTrue(exit !== undefined && Exit.isFailure(exit))
        if (exit !== undefined && Exit.isFailure(exit)) assert.include(String(exit.cause), "Unavailable")
      }
      // The first produce took what was queued then; later ones were answered before theirs started.
      const callsBefore = produced.calls
      yield* TestClock.adjust(Duration.seconds(30))
      assert.strictEqual(produced.calls, callsBefore, "nothing is produced for sends already answered")
      yield* Fiber.interruptAll(sends)
    })
  )

  it.effect("a log that does not answer: one warning per 10 s for the sends it fails, not one per send", () => {
    const lines: Array<string> = []
    const logger = Logger.make((options) => {
      if (options.logLevel === "Warn") lines.push(String(options.message))
    })
    return Effect.gen(function* () {
      const { log } = silentLog()
      const context = yield* Layer.build(
        Ingest.layerWith({ sendTimeout: Duration.seconds(3) }).pipe(
          Layer.provide(
            Layer.mergeAll(
              Layer.succeed(EventLog, log),
              Layer.succeed(Membership, membership),
              Layer.succeed(RateLimits, limits)
            )
          )
        )
      )
      const ingest = Context.get(context, Ingest)
      const burst = (from: number) =>
        Effect.forEach(Array.from({ length: 20 }), (_, i) =>
          Effect.forkChild(ingest.send("u1" as UserId, "c1" as ChatId, `m${from + i}`, "hello"))
        )
      const first = yield* burst(0)
      yield* TestClock.adjust(Duration.seconds(3))
      const unacknowledged = () => lines.filter((line) => line.includes("the send is not acknowledged"))
      assert.strictEqual(unacknowledged().length, 1, lines.join("\n"))
      // Ten seconds on, the next failure warns again and counts the ones it did not log.
      yield* TestClock.adjust(Duration.seconds(8))
      const second = yield* burst(20)
      yield* TestClock.adjust(Duration.seconds(3))
      assert.strictEqual(unacknowledged().length, 2, lines.join("\n"))
      assert.include(unacknowledged()[1], "(19 more since the last warning)")
      yield* Fiber.interruptAll([...first, ...second])
    }).pipe(Effect.provideService(References.CurrentLoggers, new Set([logger])))
  })
})
