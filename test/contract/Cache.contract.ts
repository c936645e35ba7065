/**
 * The behaviour every Cache + PubSub adapter promises (src/ports/Cache.ts,
 * src/ports/PubSub.ts). Each adapter's suite calls `cacheContract` with its
 * layer; the tests run on the live clock because TTLs, refills and Redis TIME
 * are real time.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Duration, Effect, Exit, Result, Scope, Stream } from "effect"
import type { Layer } from "effect"
import { Cache, CacheError } from "../../src/ports/Cache.ts"
import { PubSub } from "../../src/ports/PubSub.ts"
import { uniqueName } from "../support/services.ts"

/** How long a test waits for messages that should arrive before calling them lost. */
const deliveryDeadline = Duration.seconds(5)

/** The first `count` messages of a stream, failing the test when they do not all arrive in time. */
const collect = (stream: Stream.Stream<string>, count: number) =>
  stream.pipe(
    Stream.take(count),
    Stream.runCollect,
    Effect.timeoutOrElse({
      duration: deliveryDeadline,
      orElse: () => Effect.die(new Error(`expected ${count} messages within ${Duration.format(deliveryDeadline)}`))
    })
  )

/** Polls `effect` until it answers `undefined`, failing the test past the deadline. */
const awaitUndefined = <A, E, R>(effect: Effect.Effect<A | undefined, E, R>, deadlineMs: number) =>
  Effect.gen(function* () {
    const start = Date.now()
    while (Date.now() - start < deadlineMs) {
      if ((yield* effect) === undefined) return Date.now() - start
      yield* Effect.sleep(Duration.millis(20))
    }
    return yield* Effect.die(new Error(`still present after ${deadlineMs} ms`))
  })

/** Polls a condition until it holds, failing the test past the delivery deadline. */
const waitUntil = (condition: () => boolean, failure: string) =>
  Effect.gen(function* () {
    const start = Date.now()
    while (!condition()) {
      if (Date.now() - start > Duration.toMillis(deliveryDeadline)) return yield* Effect.die(new Error(failure))
      yield* Effect.sleep(Duration.millis(5))
    }
  })

const numbered = (prefix: string, count: number) => Array.from({ length: count }, (_, i) => `${prefix}-${i}`)

export const cacheContract = (name: string, adapter: Layer.Layer<Cache | PubSub, CacheError>): void => {
  layer(adapter, { excludeTestServices: true })(`${name} Cache and PubSub contract`, (it) => {
    describe("key/value", () => {
      it.effect("get answers undefined for a key never set", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          assert.strictEqual(yield* cache.get(uniqueName("missing")), undefined)
        })
      )

      it.effect("set then get round-trips the value, and a second set replaces it", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const key = uniqueName("kv")
          yield* cache.set(key, "first", "1 minute")
          assert.strictEqual(yield* cache.get(key), "first")
          yield* cache.set(key, "second ✓ 🎉", "1 minute")
          assert.strictEqual(yield* cache.get(key), "second ✓ 🎉")
          yield* cache.set(key, "", "1 minute")
          assert.strictEqual(yield* cache.get(key), "")
        })
      )

      it.effect("delete removes every listed key, leaves the rest, and accepts an empty list", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const prefix = uniqueName("del")
          const keys = numbered(prefix, 5)
          yield* Effect.forEach(keys, (key) => cache.set(key, key, "1 minute"), { discard: true })
          yield* cache.delete([keys[0]!, keys[2]!, keys[4]!, `${prefix}-never-set`])
          yield* cache.delete([])
          const values = yield* Effect.forEach(keys, (key) => cache.get(key))
          assert.deepStrictEqual(values, [undefined, keys[1], undefined, keys[3], undefined])
        })
      )

      it.effect("an entry vanishes once its TTL has passed, not before, and others stay", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const short = uniqueName("ttl-short")
          const long = uniqueName("ttl-long")
          const start = Date.now()
          yield* cache.set(short, "soon gone", "200 millis")
          yield* cache.set(long, "stays", "1 minute")
          assert.strictEqual(yield* cache.get(short), "soon gone")
          yield* awaitUndefined(cache.get(short), 5_000)
          assert.isAtLeast(Date.now() - start, 190, "expired before its TTL")
          assert.strictEqual(yield* cache.get(long), "stays")
        })
      )

      it.effect(
        "setIfAbsent sets an absent key and answers true; on a present key answers false and keeps the value",
        () =>
          Effect.gen(function* () {
            const cache = yield* Cache
            const key = uniqueName("nx")
            assert.isTrue(yield* cache.setIfAbsent(key, "first", "1 minute"))
            assert.strictEqual(yield* cache.get(key), "first")
            assert.isFalse(yield* cache.setIfAbsent(key, "second", "1 minute"))
            assert.strictEqual(yield* cache.get(key), "first")
            // A value set by set is just as present.
            const other = uniqueName("nx-set")
            yield* cache.set(other, "", "1 minute")
            assert.isFalse(yield* cache.setIfAbsent(other, "filled", "1 minute"))
            assert.strictEqual(yield* cache.get(other), "")
            // Once deleted it is absent again.
            yield* cache.delete([key])
            assert.isTrue(yield* cache.setIfAbsent(key, "third", "1 minute"))
            assert.strictEqual(yield* cache.get(key), "third")
          })
      )

      it.effect("setIfAbsent counts an expired entry as absent, and gives its own value the TTL", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const key = uniqueName("nx-ttl")
          assert.isTrue(yield* cache.setIfAbsent(key, "short", "200 millis"))
          assert.isFalse(yield* cache.setIfAbsent(key, "too early", "1 minute"))
          yield* awaitUndefined(cache.get(key), 5_000)
          assert.isTrue(yield* cache.setIfAbsent(key, "after expiry", "200 millis"))
          assert.strictEqual(yield* cache.get(key), "after expiry")
          // The new value expires by its own TTL too.
          yield* awaitUndefined(cache.get(key), 5_000)
          // An entry past its TTL but never read counts as absent as well.
          const unread = uniqueName("nx-unread")
          yield* cache.set(unread, "stale", "100 millis")
          yield* Effect.sleep(Duration.millis(300))
          assert.isTrue(yield* cache.setIfAbsent(unread, "fresh", "1 minute"))
          assert.strictEqual(yield* cache.get(unread), "fresh")
        })
      )

      it.effect("concurrent setIfAbsent on one key: exactly one answers true, and its value is kept", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const key = uniqueName("nx-race")
          const candidates = numbered("candidate", 50)
          const results = yield* Effect.all(
            candidates.map((value) => cache.setIfAbsent(key, value, "1 minute")),
            { concurrency: "unbounded" }
          )
          const winners = candidates.filter((_, i) => results[i])
          assert.strictEqual(winners.length, 1)
          assert.strictEqual(yield* cache.get(key), winners[0])
        })
      )

      it.effect("setIfAbsent rejects a TTL that is not a positive, finite duration", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const key = uniqueName("nx-bad-ttl")
          for (const ttl of [0, -5, Duration.infinity]) {
            const result = yield* Effect.result(cache.setIfAbsent(key, "x", ttl))
            assert.isTrue(Result.isFailure(result), `TTL ${String(ttl)} was accepted`)
            if (Result.isFailure(result)) assert.instanceOf(result.failure, CacheError)
          }
          assert.strictEqual(yield* cache.get(key), undefined)
        })
      )

      it.effect("set rejects a TTL that is not a positive, finite duration", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const key = uniqueName("bad-ttl")
          for (const ttl of [0, -5, Duration.infinity]) {
            const result = yield* Effect.result(cache.set(key, "x", ttl))
            assert.isTrue(Result.isFailure(result), `TTL ${String(ttl)} was accepted`)
            if (Result.isFailure(result)) assert.instanceOf(result.failure, CacheError)
          }
          assert.strictEqual(yield* cache.get(key), undefined)
        })
      )

      it.effect("ping answers", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          yield* cache.ping
        })
      )
    })

    describe("token bucket", () => {
      it.effect("a new bucket allows exactly capacity takes, then denies with retryAfterMs of about one refill", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const bucket = { capacity: 5, refillPerSecond: 2 }
          // The takes must finish within one refill (500 ms) for the bucket to be empty at the end: on a very
          // busy machine they may not, and the scenario is tried again on a fresh bucket.
          for (let attempt = 1; ; attempt++) {
            const key = uniqueName("bucket")
            const began = Date.now()
            const results = []
            for (let i = 0; i <= bucket.capacity; i++) results.push(yield* cache.take(key, bucket))
            const spent = Date.now() - began
            if (spent >= 450 && attempt < 5) continue
            results.slice(0, bucket.capacity).forEach((taken, i) => {
              assert.isTrue(taken.allowed, `take ${i + 1} of ${bucket.capacity} was denied`)
            })
            const denied = results[bucket.capacity]!
            assert.isFalse(denied.allowed)
            // One token takes 500 ms; the takes above cost part of that wait.
            assert.isAtLeast(denied.retryAfterMs, 500 - spent - 5)
            assert.isAtMost(denied.retryAfterMs, 500)
            const again = yield* cache.take(key, bucket)
            assert.isFalse(again.allowed, "a denied take must not be counted as a token")
            return
          }
        })
      )

      it.effect("tokens refill at refillPerSecond, up to capacity", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const key = uniqueName("refill")
          const bucket = { capacity: 20, refillPerSecond: 10 }
          /** Takes until denied: how many were allowed, and how long the burst took. */
          const burst = Effect.gen(function* () {
            const began = Date.now()
            let allowed = 0
            while ((yield* cache.take(key, bucket)).allowed) allowed++
            return { allowed, millis: Date.now() - began }
          })
          // Emptied; while it was being emptied, it refilled at most by the time that took.
          const first = yield* burst
          assert.isAtLeast(first.allowed, bucket.capacity)
          assert.isAtMost(
            first.allowed,
            bucket.capacity + Math.ceil((first.millis / 1000) * bucket.refillPerSecond) + 1
          )
          // Tokens come back at refillPerSecond: as many as the time since the bucket was empty allows, no more.
          const emptiedAt = Date.now()
          yield* Effect.sleep(Duration.millis(300))
          const second = yield* burst
          const elapsed = Date.now() - emptiedAt
          assert.isAtLeast(second.allowed, 2, "no token after 300 ms at 10 a second")
          assert.isAtMost(
            second.allowed,
            Math.ceil((elapsed / 1000) * bucket.refillPerSecond) + 1,
            `refilled faster than refillPerSecond: ${second.allowed} tokens in ${elapsed} ms`
          )
          // Long enough to refill far past capacity: only capacity tokens come back (plus what refills during the burst).
          yield* Effect.sleep(Duration.millis(3_000))
          const third = yield* burst
          assert.isAtLeast(third.allowed, bucket.capacity)
          assert.isAtMost(
            third.allowed,
            bucket.capacity + Math.ceil((third.millis / 1000) * bucket.refillPerSecond) + 1,
            "refilled past capacity"
          )
        })
      )

      it.effect("concurrent takes are atomic: 50 at once on capacity 20 allow exactly 20", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const key = uniqueName("atomic")
          // Slow enough that no token comes back while the takes run.
          const bucket = { capacity: 20, refillPerSecond: 0.001 }
          const results = yield* Effect.all(
            Array.from({ length: 50 }, () => cache.take(key, bucket)),
            { concurrency: "unbounded" }
          )
          assert.strictEqual(results.filter((result) => result.allowed).length, 20)
          for (const result of results) {
            if (!result.allowed) assert.isAbove(result.retryAfterMs, 0)
          }
        })
      )

      it.effect("buckets at different keys are independent, and delete refills one", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const first = uniqueName("bucket-a")
          const second = uniqueName("bucket-b")
          const bucket = { capacity: 1, refillPerSecond: 0.01 }
          assert.isTrue((yield* cache.take(first, bucket)).allowed)
          assert.isFalse((yield* cache.take(first, bucket)).allowed)
          assert.isTrue((yield* cache.take(second, bucket)).allowed)
          yield* cache.delete([first])
          assert.isTrue((yield* cache.take(first, bucket)).allowed, "a deleted bucket starts full")
        })
      )

      it.effect("a token given back (take with -1) can be taken again, never past capacity", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const key = uniqueName("give-back")
          const bucket = { capacity: 2, refillPerSecond: 0.001 }
          assert.isTrue((yield* cache.take(key, bucket)).allowed)
          assert.isTrue((yield* cache.take(key, bucket)).allowed)
          assert.isFalse((yield* cache.take(key, bucket)).allowed)
          assert.isTrue((yield* cache.take(key, bucket, -1)).allowed, "giving back is always allowed")
          assert.isTrue((yield* cache.take(key, bucket)).allowed, "the token given back")
          assert.isFalse((yield* cache.take(key, bucket)).allowed)
          // Giving back to a full bucket leaves it full.
          const full = uniqueName("give-back-full")
          for (let i = 0; i < 3; i++) yield* cache.take(full, bucket, -1)
          assert.isTrue((yield* cache.take(full, bucket)).allowed)
          assert.isTrue((yield* cache.take(full, bucket)).allowed)
          assert.isFalse((yield* cache.take(full, bucket)).allowed, "given back past capacity")
        })
      )

      it.effect("take rejects a bucket that cannot refill", () =>
        Effect.gen(function* () {
          const cache = yield* Cache
          const key = uniqueName("bad-bucket")
          for (const bucket of [
            { capacity: 5, refillPerSecond: 0 },
            { capacity: 0, refillPerSecond: 1 },
            { capacity: Number.NaN, refillPerSecond: 1 }
          ]) {
            const result = yield* Effect.result(cache.take(key, bucket))
            assert.isTrue(Result.isFailure(result), `${JSON.stringify(bucket)} was accepted`)
            if (Result.isFailure(result)) assert.instanceOf(result.failure, CacheError)
          }
        })
      )
    })

    describe("pubsub", () => {
      it.effect("a subscriber gets every message published after subscribe returns, in order", () =>
        Effect.gen(function* () {
          const pubsub = yield* PubSub
          const channel = uniqueName("ordered")
          const messages = yield* pubsub.subscribe(channel)
          const sent = numbered("m", 200)
          yield* Effect.forEach(sent, (message) => pubsub.publish(channel, message), { discard: true })
          assert.deepStrictEqual(yield* collect(messages, sent.length), sent)
        })
      )

      it.effect("two subscribers on one channel each get every message", () =>
        Effect.gen(function* () {
          const pubsub = yield* PubSub
          const channel = uniqueName("shared")
          const first = yield* pubsub.subscribe(channel)
          const second = yield* pubsub.subscribe(channel)
          const sent = numbered("m", 50)
          yield* Effect.forEach(sent, (message) => pubsub.publish(channel, message), { discard: true })
          const [a, b] = yield* Effect.all([collect(first, sent.length), collect(second, sent.length)], {
            concurrency: 2
          })
          assert.deepStrictEqual(a, sent)
          assert.deepStrictEqual(b, sent)
        })
      )

      it.effect("subscribers arriving together on a new channel all get the first message", () =>
        Effect.gen(function* () {
          const pubsub = yield* PubSub
          const channel = uniqueName("together")
          const streams = yield* Effect.all(
            Array.from({ length: 10 }, () => pubsub.subscribe(channel)),
            { concurrency: "unbounded" }
          )
          yield* pubsub.publish(channel, "first")
          const received = yield* Effect.forEach(streams, (stream) => collect(stream, 1), { concurrency: "unbounded" })
          assert.deepStrictEqual(
            received,
            Array.from({ length: 10 }, () => ["first"])
          )
        })
      )

      it.effect("channels are isolated", () =>
        Effect.gen(function* () {
          const pubsub = yield* PubSub
          const red = uniqueName("red")
          const blue = uniqueName("blue")
          const redMessages = yield* pubsub.subscribe(red)
          const blueMessages = yield* pubsub.subscribe(blue)
          yield* pubsub.publish(red, "r1")
          yield* pubsub.publish(blue, "b1")
          yield* pubsub.publish(red, "r2")
          yield* pubsub.publish(`${red}-suffix`, "neighbour")
          yield* pubsub.publish(blue, "b-end")
          yield* pubsub.publish(red, "r-end")
          assert.deepStrictEqual(yield* collect(redMessages, 3), ["r1", "r2", "r-end"])
          assert.deepStrictEqual(yield* collect(blueMessages, 2), ["b1", "b-end"])
        })
      )

      it.effect("after its scope closes a subscriber's stream ends, and the channel can be subscribed again", () =>
        Effect.gen(function* () {
          const pubsub = yield* PubSub
          const channel = uniqueName("closing")
          const scope = yield* Scope.make()
          const early = yield* pubsub.subscribe(channel).pipe(Scope.provide(scope))
          yield* pubsub.publish(channel, "while open")
          assert.deepStrictEqual(yield* collect(early, 1), ["while open"])
          yield* Scope.close(scope, Exit.void)

          yield* pubsub.publish(channel, "after close")
          // Ended, not merely quiet: runCollect returns rather than timing out.
          assert.deepStrictEqual(yield* collect(early, 1), [])

          // The last subscriber left, so this one starts a fresh underlying subscription.
          const late = yield* pubsub.subscribe(channel)
          yield* pubsub.publish(channel, "resubscribed")
          assert.deepStrictEqual(yield* collect(late, 1), ["resubscribed"])
        })
      )

      it.effect("a subscriber joining while the last one leaves still gets messages", () =>
        Effect.gen(function* () {
          const pubsub = yield* PubSub
          const channel = uniqueName("rejoin")
          // Many rounds, since whether the leave or the join runs first varies.
          for (let round = 0; round < 30; round++) {
            const leaving = yield* Scope.make()
            yield* pubsub.subscribe(channel).pipe(Scope.provide(leaving))
            const joining = yield* Scope.make()
            const [, joined] = yield* Effect.all(
              [Scope.close(leaving, Exit.void), pubsub.subscribe(channel).pipe(Scope.provide(joining))],
              { concurrency: 2 }
            )
            yield* pubsub.publish(channel, `round ${round}`)
            assert.deepStrictEqual(yield* collect(joined, 1), [`round ${round}`])
            yield* Scope.close(joining, Exit.void)
          }
        })
      )

      it.effect("one subscriber leaving does not end the channel for another", () =>
        Effect.gen(function* () {
          const pubsub = yield* PubSub
          const channel = uniqueName("leaving")
          const staying = yield* pubsub.subscribe(channel)
          yield* Effect.scoped(pubsub.subscribe(channel))
          yield* pubsub.publish(channel, "still here")
          assert.deepStrictEqual(yield* collect(staying, 1), ["still here"])
        })
      )

      it.effect("a stalled subscriber neither holds up another nor loses the newest messages", () =>
        Effect.gen(function* () {
          const pubsub = yield* PubSub
          const channel = uniqueName("stalled")
          const stalled = yield* pubsub.subscribe(channel)
          const reading = yield* pubsub.subscribe(channel)
          const received: Array<string> = []
          yield* Effect.forkScoped(Stream.runForEach(reading, (message) => Effect.sync(() => received.push(message))))
          // More than any sensible per-subscriber buffer, so the stalled one
          // overflows; published in batches the reader keeps up with, so the
          // reading one never does.
          const sent = numbered("m", 3000)
          for (let batch = 0; batch < sent.length; batch += 100) {
            const messages = sent.slice(batch, batch + 100)
            yield* Effect.forEach(messages, (message) => pubsub.publish(channel, message), { discard: true })
            yield* waitUntil(() => received.length >= batch + messages.length, "the reading subscriber fell behind")
          }
          assert.deepStrictEqual(received, sent)

          // The stalled subscriber has some suffix-ordered subset ending with the last message.
          const last = sent[sent.length - 1]!
          const kept = yield* stalled.pipe(
            Stream.takeUntil((message) => message === last),
            Stream.runCollect,
            Effect.timeoutOrElse({
              duration: deliveryDeadline,
              orElse: () => Effect.die(new Error("the stalled subscriber never got the newest message"))
            })
          )
          assert.strictEqual(kept[kept.length - 1], last)
          assert.isBelow(kept.length, sent.length, "a stalled subscriber's buffer must be bounded")
          const indexes = kept.map((message) => sent.indexOf(message))
          assert.isTrue(
            indexes.every((index, i) => index >= 0 && (i === 0 || index > indexes[i - 1]!)),
            "out of order or unknown messages"
          )
        })
      )

      it.effect("unicode and 64 KiB payloads round-trip", () =>
        Effect.gen(function* () {
          const pubsub = yield* PubSub
          const channel = uniqueName("payloads")
          const messages = yield* pubsub.subscribe(channel)
          const sent = [
            "héllo wörld — 日本語 — 🎉👩‍👩‍👧 — \u0000 nul — \r\n crlf",
            "x".repeat(64 * 1024),
            "🎉".repeat(16 * 1024),
            JSON.stringify({ text: 'quote " and backslash \\', n: 1 }),
            ""
          ]
          yield* Effect.forEach(sent, (message) => pubsub.publish(channel, message), { discard: true })
          assert.deepStrictEqual(yield* collect(messages, sent.length), sent)
        })
      )

      it.effect("publishing to a channel nobody subscribes to succeeds", () =>
        Effect.gen(function* () {
          const pubsub = yield* PubSub
          yield* pubsub.publish(uniqueName("nobody"), "into the void")
        })
      )
    })
  })
}
