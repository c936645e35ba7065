/**
 * Token refresh against a server whose access tokens live 6 seconds: the
 * client refreshes before expiry and re-authenticates its open socket, so the
 * connection survives several token lifetimes; a token that expires anyway
 * (refresh unreachable for a while) costs a 4001, a refresh and a reconnect
 * with nothing lost; a dead refresh token ends the session cleanly.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "@effect/vitest"
import type { HarmonyError, Session } from "../../src/client/index.ts"
import { type Harmony, startHarmony } from "../support/harmony.ts"
import { clientPool, collect, password, recordingWebSocket, registered, uniqueUsername, waitUntil } from "./support.ts"

describe("client SDK token refresh", { timeout: 180_000 }, () => {
  let harmony: Harmony
  const pool = clientPool()

  beforeAll(async () => {
    harmony = await startHarmony({ mode: "embedded", env: { ACCESS_TOKEN_TTL: "6 seconds" } })
  })
  afterEach(() => pool.closeAll())
  afterAll(() => harmony?.stop())

  it("refreshes before expiry and keeps the socket open across several token lifetimes", async () => {
    const sessions: Array<Session | null> = []
    const alice = pool.make({ baseUrl: harmony.url, onSession: (s) => sessions.push(s) })
    const first = await alice.register({ username: uniqueUsername("rfa"), password })
    expect(first.expiresIn).toBe(6)
    const bob = await registered(pool.make, { baseUrl: harmony.url }, "rfb")
    const chat = await alice.createChat({ kind: "group", name: "refresh", memberIds: [bob.user.id] })
    const atBob = collect(bob.client, "message")
    const statuses = collect(alice, "status")
    await bob.client.subscribe(chat.id)
    await alice.subscribe(chat.id)

    // Three refreshes: well past the first token's expiry, sending all along.
    let sent = 0
    while (sessions.length < 4) {
      await alice.send(chat.id, `tick ${++sent}`)
      await new Promise((resolve) => setTimeout(resolve, 500))
    }
    await alice.send(chat.id, `tick ${++sent}`)
    await waitUntil("every tick at bob", () => atBob.length === sent)
    expect(atBob.map((m) => m.seq)).toEqual(Array.from({ length: sent }, (_, i) => i + 1))

    const tokens = sessions.map((s) => s?.accessToken)
    expect(new Set(tokens).size).toBe(tokens.length)
    expect(sessions.every((s) => s?.user.id === first.user.id)).toBe(true)
    // The same socket all along: re-authenticated, never dropped.
    expect(statuses).toEqual(["connecting", "open"])
    expect((await alice.me()).id).toBe(first.user.id)
  })

  it("after a 4001 (the token expired while refresh was unreachable) refreshes, reconnects and misses nothing", async () => {
    const alice = await registered(pool.make, { baseUrl: harmony.url }, "exa")
    let refreshBlocked = false
    const sockets = recordingWebSocket()
    const bob = pool.make({
      baseUrl: harmony.url,
      WebSocket: sockets.WebSocket,
      reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 },
      fetch: (input, init) =>
        refreshBlocked && String(input).endsWith("/v1/auth/refresh")
          ? Promise.reject(new TypeError("fetch failed (blocked by the test)"))
          : fetch(input, init)
    })
    const bobSession = await bob.register({ username: uniqueUsername("exb"), password })
    const chat = await alice.client.createChat({ kind: "group", name: "expiry", memberIds: [bobSession.user.id] })
    const atBob = collect(bob, "message")
    const errors = collect(bob, "error")
    const statuses = collect(bob, "status")
    await bob.subscribe(chat.id)
    await alice.client.send(chat.id, "one")
    await waitUntil("one", () => atBob.length === 1)

    refreshBlocked = true
    // The server ends Bob's session when his token expires; he cannot refresh yet.
    await waitUntil("bob disconnected", () => statuses.includes("reconnecting"))
    for (const body of ["two", "three"]) await alice.client.send(chat.id, body)
    await waitUntil("the failed refresh reported", () => errors.some((e: HarmonyError) => e.code === "network"))

    refreshBlocked = false
    await waitUntil("bob caught up", () => atBob.length >= 3)
    await alice.client.send(chat.id, "four")
    await waitUntil("four", () => atBob.length >= 4)
    expect(atBob.map((m) => [m.seq, m.body])).toEqual([
      [1, "one"],
      [2, "two"],
      [3, "three"],
      [4, "four"]
    ])
    expect(bob.status).toBe("open")
    expect(sockets.closeCodes).toContain(4001)
  })

  it("ends the session when the refresh token was revoked elsewhere", async () => {
    const sessions: Array<Session | null> = []
    const client = pool.make({ baseUrl: harmony.url, onSession: (s) => sessions.push(s) })
    const session = await client.register({ username: uniqueUsername("rvk"), password })
    const chat = await client.createChat({ kind: "group", name: "revoked", memberIds: [] })
    const errors = collect(client, "error")
    const pendingSubscribe = client.subscribe(chat.id)
    await pendingSubscribe

    // The same login, resumed elsewhere and logged out: the whole token family is revoked.
    const elsewhere = pool.make({ baseUrl: harmony.url })
    await elsewhere.resume(session)
    await elsewhere.logout()

    await waitUntil("the session ended", () => sessions.at(-1) === null)
    expect(client.user).toBeUndefined()
    await waitUntil("idle", () => client.status === "idle")
    expect(errors.map((e) => e.code)).toContain("unauthorized")
    await expect(client.send(chat.id, "too late")).rejects.toMatchObject({ code: "unauthorized" })
  })
})
