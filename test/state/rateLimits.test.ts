/**
 * Rate limits under concurrency (src/state/RateLimits.ts): token buckets in
 * the cache, taken atomically however many requests race for them — in
 * process (Memory) and on Redis, where several nodes (connections) share one
 * bucket. Then end to end, against the real `harmony serve` (embedded): many
 * WebSocket connections of one user sending at once, HTTP sends and logins
 * past their limits, and a connection that keeps sending while limited.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Context, Effect, Exit, Layer } from "effect"
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, expect, it } from "vitest"
import type { Cache } from "../../src/ports/Cache.ts"
import * as Memory from "../../src/adapters/memory/Memory.ts"
import * as Redis from "../../src/adapters/redis/Redis.ts"
import type { RateLimited } from "../../src/schema/Errors.ts"
import { defaultRateLimits, type RateLimitSettings, RateLimits } from "../../src/state/RateLimits.ts"
import { type Api, api, type Harmony, startHarmony } from "../support/harmony.ts"
import { serviceUrl } from "../support/services.ts"
import { type Frame, WsClient } from "../support/wsClient.ts"

const settings: RateLimitSettings = {
  ...defaultRateLimits,
  send: { capacity: 10, refillPerSecond: 0.001 },
  loginUser: { capacity: 3, refillPerSecond: 0.001 },
  loginAddress: { capacity: 50, refillPerSecond: 0.001 },
  register: { capacity: 50, refillPerSecond: 0.001 }
}

/** `count` concurrent takes, answering the passes and the RateLimited failures. */
const race = (takes: ReadonlyArray<Effect.Effect<void, RateLimited>>) =>
  Effect.gen(function* () {
    const exits = yield* Effect.forEach(takes, Effect.exit, { concurrency: "unbounded" })
    const passed = exits.filter(Exit.isSuccess).length
    const refused = exits.flatMap((exit) =>
      Exit.isFailure(exit) && exit.cause.reasons[0]?._tag === "Fail" ? [exit.cause.reasons[0].error as RateLimited] : []
    )
    assert.strictEqual(passed + refused.length, takes.length, "every take either passes or is refused")
    return { passed, refused }
  })

/** Every node's RateLimits (each on a cache connection of its own, sharing the buckets). */
class AllNodes extends Context.Service<AllNodes, ReadonlyArray<RateLimits["Service"]>>()("test/state/AllNodes") {}

/** `count` nodes, each its own RateLimits on `cache` (one layer: one connection). */
const nodesOn = <E>(count: number, cache: Layer.Layer<Cache, E>) =>
  Layer.effect(
    AllNodes,
    Effect.forEach(Array.from({ length: count }), () =>
      Effect.map(
        Layer.build(Layer.fresh(RateLimits.layer(settings).pipe(Layer.provide(Layer.fresh(cache))))),
        (context) => Context.get(context, RateLimits)
      )
    )
  ).pipe(Layer.orDie)

const bucketSuite = (name: string, nodes: Layer.Layer<AllNodes>) =>
  layer(nodes, { excludeTestServices: true })(name, (it) => {
    it.effect(
      "100 concurrent takes of one user's send bucket: exactly 10 pass, 90 are refused with a wait >= 1 s",
      () =>
        Effect.gen(function* () {
          const limits = yield* AllNodes
          const user = `rl-${randomUUID()}`
          const { passed, refused } = yield* race(
            Array.from({ length: 100 }, (_, i) => limits[i % limits.length]!.take("send", user))
          )
          assert.strictEqual(passed, 10)
          assert.strictEqual(refused.length, 90)
          for (const error of refused) {
            assert.strictEqual(error._tag, "RateLimited")
            assert.isAtLeast(error.retryAfterSeconds, 1)
            assert.isTrue(Number.isInteger(error.retryAfterSeconds))
          }
        })
    )

    it.effect("buckets of different keys and limits are independent under concurrency", () =>
      Effect.gen(function* () {
        const limits = yield* AllNodes
        const users = Array.from({ length: 20 }, () => `rl-${randomUUID()}`)
        const takes = users.flatMap((user, u) => [
          ...Array.from({ length: 15 }, (_, i) => ({ user, limit: "send" as const, node: (u + i) % limits.length })),
          ...Array.from({ length: 5 }, (_, i) => ({ user, limit: "loginUser" as const, node: (u + i) % limits.length }))
        ])
        // Interleaved, so every bucket's takes race the others'.
        const shuffled = takes
          .map((take, i) => ({ take, order: (i * 7919) % takes.length }))
          .sort((a, b) => a.order - b.order)
        const exits = yield* Effect.forEach(
          shuffled,
          ({ take }) =>
            Effect.exit(limits[take.node]!.take(take.limit, take.user)).pipe(Effect.map((exit) => ({ take, exit }))),
          { concurrency: "unbounded" }
        )
        for (const user of users) {
          const passes = (limit: string) =>
            exits.filter(({ take, exit }) => take.user === user && take.limit === limit && Exit.isSuccess(exit)).length
          assert.strictEqual(passes("send"), 10, `${user}: send`)
          assert.strictEqual(passes("loginUser"), 3, `${user}: loginUser`)
        }
      })
    )
  })

describe("rate limits under concurrency", () => {
  // One process: one in-process cache shared by every request.
  bucketSuite("in process", nodesOn(1, Memory.layer))
  // Four nodes, each with its own Redis connection, sharing the buckets.
  bucketSuite("on Redis, four nodes", nodesOn(4, Redis.layer({ url: serviceUrl("REDIS_URL") })))
})

// --- end to end ------------------------------------------------------------------

describe("rate limits end to end (harmony serve, embedded)", () => {
  let harmony: Harmony | undefined
  let http: Api
  const password = "correct horse battery"
  const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}`
  let counter = 0
  const username = (label: string) => `${label}-${run}-${(counter++).toString(36)}`
  const opened: Array<WsClient> = []

  const register = async (label: string) => {
    const name = username(label)
    const reply = await http.post("/v1/auth/register", { username: name, password })
    expect(reply.status, reply.text).toBe(201)
    return { id: reply.body.user.id as string, username: name, token: reply.body.accessToken as string }
  }

  const open = async (token: string) => {
    const { client } = await WsClient.open(harmony!.url, token)
    opened.push(client)
    return client
  }

  const isRateLimited = (frame: Frame) => frame.type === "error" && frame.code === "rate_limited"

  beforeAll(async () => {
    harmony = await startHarmony({
      mode: "embedded",
      env: { RATE_LIMIT_SEND: "5/0.01", RATE_LIMIT_LOGIN_USER: "3/0.01" }
    })
    http = api(harmony.url)
  }, 120_000)

  afterAll(async () => {
    await Promise.all(opened.map((client) => client.close()))
    if (harmony === undefined) return
    const exit = await harmony.stop("SIGTERM")
    expect(exit, harmony.logs()).toEqual({ code: 0, signal: null })
  })

  it("one user's sends over many connections and HTTP share one bucket; past it: rate_limited, 429 with Retry-After, and close 4029", async () => {
    const alice = await register("alice")
    const bob = await register("bob")
    const chat = await http.post(
      "/v1/chats",
      { kind: "group", name: "limits", memberIds: [bob.id] },
      { token: alice.token }
    )
    expect(chat.status, chat.text).toBe(201)
    const chatId = chat.body.id as string

    // Eight connections, three sends each, all at once: the bucket holds five.
    const clients = await Promise.all(Array.from({ length: 8 }, () => open(alice.token)))
    const answers = (
      await Promise.all(
        clients.map((client) =>
          client.requestAll(
            Array.from({ length: 3 }, () => ({ type: "send", chatId, clientMsgId: randomUUID(), body: "hello" })),
            { timeoutMs: 30_000 }
          )
        )
      )
    ).flat()
    const acks = answers.filter((frame) => frame.type === "ack")
    const limited = answers.filter(isRateLimited)
    expect(acks.length, JSON.stringify(answers.filter((frame) => frame.type !== "ack" && !isRateLimited(frame)))).toBe(
      5
    )
    expect(limited.length).toBe(answers.length - 5)
    for (const frame of limited) expect(frame.message).toEqual(expect.any(String))

    // Over HTTP the same user is past the limit too.
    const reply = await http.post(
      `/v1/chats/${chatId}/messages`,
      { clientMsgId: randomUUID(), body: "hi" },
      { token: alice.token }
    )
    expect(reply.status, reply.text).toBe(429)
    expect(reply.body).toEqual({ error: { code: "rate_limited", message: expect.any(String) } })
    const retryAfter = reply.headers.get("retry-after")
    expect(retryAfter).toMatch(/^\d+$/)
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1)

    // Another user's bucket is untouched.
    const bobs = await http.post(
      `/v1/chats/${chatId}/messages`,
      { clientMsgId: randomUUID(), body: "me too" },
      { token: bob.token }
    )
    expect(bobs.status, bobs.text).toBe(202)

    // A connection that keeps sending while limited is closed with 4029 after ten refusals in a row.
    const stubborn = await open(alice.token)
    const from = stubborn.mark()
    for (let i = 0; i < 12; i++)
      stubborn.send({ type: "send", chatId, clientMsgId: randomUUID(), body: "again", ref: `s${i}` })
    const close = await stubborn.waitForClose(15_000)
    expect(close.code).toBe(4029)
    expect(stubborn.matching((frame) => frame.type === "ack", from)).toEqual([])
    const refusals = stubborn.matching(isRateLimited, from).length
    expect(refusals).toBeGreaterThanOrEqual(1)
    expect(refusals).toBeLessThanOrEqual(9)
    // The other connections stay open.
    expect(clients.every((client) => client.isOpen)).toBe(true)
  }, 90_000)

  it("failed logins past RATE_LIMIT_LOGIN_USER answer 429 with Retry-After; another username is not affected", async () => {
    const carol = await register("carol")
    const dave = await register("dave")
    const attempts = await Promise.all(
      Array.from({ length: 6 }, () => http.post("/v1/auth/login", { username: carol.username, password: "wrong" }))
    )
    const statuses = attempts.map((reply) => reply.status).sort()
    expect(statuses).toEqual([401, 401, 401, 429, 429, 429])
    for (const reply of attempts.filter((r) => r.status === 429)) {
      expect(reply.body).toEqual({ error: { code: "rate_limited", message: expect.any(String) } })
      expect(Number(reply.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
    }
    const other = await http.post("/v1/auth/login", { username: dave.username, password })
    expect(other.status, other.text).toBe(200)
  }, 60_000)
})
