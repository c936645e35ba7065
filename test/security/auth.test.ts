/**
 * Authentication as an attacker probes it, against the real `harmony serve`
 * (embedded): forged access tokens of every kind (HTTP and the `auth`
 * frame), forged refresh tokens, a login lockout an attacker cannot impose
 * on the owner, and ending a login — logout, or a refresh token reused
 * after rotation — ending its access tokens and its open sockets (4001).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Api, api, type Harmony, startHarmony } from "../support/harmony.ts"
import { WsClient } from "../support/wsClient.ts"
import {
  type Account,
  accounts,
  claimsOf,
  devSecret,
  eventually,
  password,
  postFrom,
  session,
  signJwt,
  sleep,
  unsignedJwt
} from "./support.ts"

let harmony: Harmony
let http: Api
let register: (label: string) => Promise<Account>

beforeAll(async () => {
  harmony = await startHarmony({ mode: "embedded", env: { RATE_LIMIT_LOGIN_USER: "3/0.01" } })
  http = api(harmony.url)
  register = accounts(http).register
}, 120_000)

afterAll(async () => {
  if (harmony === undefined) return
  expect(await harmony.stop("SIGTERM"), harmony.logs()).toEqual({ code: 0, signal: null })
})

/** Whether `token` is refused both over HTTP (401 unauthorized) and as the `auth` frame (close 4001). */
const expectRefused = async (what: string, token: string) => {
  const me = await http.get("/v1/me", { token })
  expect.soft(me.status, `${what}: GET /v1/me answered ${me.text}`).toBe(401)
  expect.soft(me.body?.error?.code, what).toBe("unauthorized")
  const client = await WsClient.connect(harmony.url)
  client.send({ type: "auth", token, ref: "a" })
  const closed = await client.waitForClose(30_000)
  expect.soft(closed.code, `${what}: the auth frame`).toBe(4001)
  expect
    .soft(
      client.matching((frame) => frame.type === "ready"),
      what
    )
    .toEqual([])
}

describe("forged tokens", () => {
  it("every kind of forged, expired or foreign access token is refused over HTTP and WebSocket", async () => {
    const victim = await register("forged")
    const secret = devSecret(harmony)
    const real = claimsOf(victim.accessToken)
    const [header, payload, signature] = victim.accessToken.split(".")
    const otherPayload = Buffer.from(JSON.stringify({ ...real, sub: "00000000-0000-4000-8000-000000000000" })).toString(
      "base64url"
    )
    const cases: Array<[string, string | Promise<string>]> = [
      ["empty", ""],
      ["garbage", "not-a-token"],
      ["two parts", `${header}.${payload}`],
      ["alg none", unsignedJwt({ sub: victim.id, exp: real.exp })],
      ["signed with another secret", signJwt("x".repeat(48), { sub: victim.id, fid: real.fid }, { expiresIn: "5m" })],
      [
        "HS512 with the right secret",
        signJwt(secret, { sub: victim.id, fid: real.fid }, { alg: "HS512", expiresIn: "5m" })
      ],
      [
        "expired",
        signJwt(secret, { sub: victim.id, fid: real.fid }, { expiresIn: Math.floor(Date.now() / 1000) - 60 })
      ],
      ["no expiry", signJwt(secret, { sub: victim.id, fid: real.fid })],
      ["no subject", signJwt(secret, { fid: real.fid }, { expiresIn: "5m" })],
      ["an unknown user", signJwt(secret, { sub: "00000000-0000-4000-8000-000000000000" }, { expiresIn: "5m" })],
      ["an unknown login", signJwt(secret, { sub: victim.id, fid: "no-such-login" }, { expiresIn: "5m" })],
      [
        "another user's login",
        signJwt(secret, { sub: (await register("forged")).id, fid: real.fid }, { expiresIn: "5m" })
      ],
      ["a payload swapped under the signature", `${header}.${otherPayload}.${signature}`],
      ["a signature from another token", `${header}.${payload}.${signature!.slice(0, -4)}AAAA`],
      ["the refresh token", victim.refreshToken]
    ]
    for (const [what, token] of cases) await expectRefused(what, await token)
    // The real one still works.
    expect((await http.get("/v1/me", { token: victim.accessToken })).status).toBe(200)
  }, 120_000)

  it("forged refresh tokens are refused with 401", async () => {
    const victim = await register("forged-refresh")
    const [id] = victim.refreshToken.split(".")
    for (const token of [
      "",
      "x",
      `${id}.`,
      `${id}.${"A".repeat(43)}`,
      `${"A".repeat(16)}.${"A".repeat(43)}`,
      victim.accessToken
    ]) {
      const reply = await http.post("/v1/auth/refresh", { refreshToken: token })
      expect.soft(reply.status, `refresh with ${JSON.stringify(token.slice(0, 30))}: ${reply.text}`).toBe(401)
      const logout = await http.post("/v1/auth/logout", { refreshToken: token })
      expect.soft(logout.status, `logout with ${JSON.stringify(token.slice(0, 30))}: ${logout.text}`).toBe(401)
    }
  }, 60_000)
})

describe("login throttling", () => {
  it("an attacker guessing from elsewhere cannot lock the owner out; only failures count", async () => {
    const victim = await register("victim")
    const attacker = "127.0.0.2"
    const guesses = await Promise.all(
      Array.from({ length: 6 }, () =>
        postFrom(attacker, harmony.url, "/v1/auth/login", { username: victim.username, password: "x" })
      )
    )
    const statuses = guesses.map((reply) => reply.status).sort()
    expect(statuses).toEqual([401, 401, 401, 429, 429, 429])
    for (const reply of guesses.filter((r) => r.status === 429)) {
      expect(reply.body).toEqual({ error: { code: "rate_limited", message: expect.any(String) } })
      expect(Number(reply.headers["retry-after"])).toBeGreaterThanOrEqual(1)
    }
    // The attacker's address is throttled for this username, even with the right password…
    expect(
      (await postFrom(attacker, harmony.url, "/v1/auth/login", { username: victim.username, password })).status
    ).toBe(429)
    // …but the owner, from their own address, logs in — again and again: a success gives its token back.
    for (let i = 0; i < 6; i++) {
      expect((await http.post("/v1/auth/login", { username: victim.username, password })).status).toBe(200)
    }
    // The owner's own failures do count, from the owner's address.
    const own = []
    for (let i = 0; i < 4; i++)
      own.push((await http.post("/v1/auth/login", { username: victim.username, password: "y" })).status)
    expect(own).toEqual([401, 401, 401, 429])
  }, 60_000)
})

describe("ending a login", () => {
  it("logout ends that login's access tokens and closes its sockets with 4001; another login of the user goes on", async () => {
    const user = await register("logout")
    const second = await http.post("/v1/auth/login", { username: user.username, password })
    expect(second.status).toBe(200)
    const [ended, ended2, other] = await Promise.all([
      session(harmony, user),
      session(harmony, user),
      session(harmony, { ...user, accessToken: second.body.accessToken })
    ])
    expect((await http.post("/v1/auth/logout", { refreshToken: user.refreshToken })).status).toBe(204)
    for (const client of [ended, ended2]) {
      const closed = await client.waitForClose(30_000)
      expect(closed.code).toBe(4001)
    }
    const me = await http.get("/v1/me", { token: user.accessToken })
    expect(me.status, me.text).toBe(401)
    await expectRefused("a logged-out token", user.accessToken)
    // The other login is untouched.
    await other.ping()
    expect(other.isOpen).toBe(true)
    expect((await http.get("/v1/me", { token: second.body.accessToken })).status).toBe(200)
    await other.close()
  }, 60_000)

  it("a refresh token reused after rotation ends every access token and socket of that login", async () => {
    const user = await register("reuse")
    const rotated = await http.post("/v1/auth/refresh", { refreshToken: user.refreshToken })
    expect(rotated.status).toBe(200)
    const newest = rotated.body.accessToken as string
    const [first, second] = await Promise.all([
      session(harmony, user),
      session(harmony, { ...user, accessToken: newest })
    ])
    // Past the 5 s grace period, the old refresh token comes back: a thief.
    await sleep(5_500)
    const reuse = await http.post("/v1/auth/refresh", { refreshToken: user.refreshToken })
    expect(reuse.status, reuse.text).toBe(401)
    for (const client of [first, second]) expect((await client.waitForClose(30_000)).code).toBe(4001)
    for (const token of [user.accessToken, newest]) await expectRefused("an access token of a reused login", token)
    expect((await http.post("/v1/auth/refresh", { refreshToken: rotated.body.refreshToken })).status).toBe(401)
  }, 60_000)

  it("a session re-authenticated with another login's token ends with that login", async () => {
    const user = await register("reauth")
    const second = await http.post("/v1/auth/login", { username: user.username, password })
    const client = await session(harmony, user)
    expect((await client.request({ type: "auth", token: second.body.accessToken })).type).toBe("ready")
    // The first login ends: the session now belongs to the second one and stays.
    expect((await http.post("/v1/auth/logout", { refreshToken: user.refreshToken })).status).toBe(204)
    await client.ping()
    expect(client.isOpen).toBe(true)
    expect((await http.post("/v1/auth/logout", { refreshToken: second.body.refreshToken })).status).toBe(204)
    expect((await client.waitForClose(30_000)).code).toBe(4001)
    await eventually("closed", () => !client.isOpen)
  }, 60_000)
})
