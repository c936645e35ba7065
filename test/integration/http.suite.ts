/**
 * The HTTP half of the client contract (docs/protocol.md "Errors" and "HTTP, under
 * /v1"), black-box: the real `harmony serve` binary in a child process, driven
 * over plain fetch. One server per file; every test makes its own users (names
 * unique per run, since cluster mode shares one Postgres across runs), so the
 * tests run concurrently.
 */
import { randomBytes, randomUUID } from "node:crypto"
import { SignJWT } from "jose"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Api, api, type Harmony, type Reply, startHarmony } from "../support/harmony.ts"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** The error codes of docs/protocol.md "Errors". */
const contractCodes = [
  "bad_request",
  "unauthorized",
  "forbidden",
  "not_found",
  "conflict",
  "too_large",
  "rate_limited",
  "unavailable"
]

const expectStatus = (reply: Reply, status: number) => {
  expect(reply.status, `answered ${reply.status}: ${reply.text}`).toBe(status)
}

/** Exactly `{"error":{"code","message"}}` with the given status and code, JSON, no stack trace. */
const expectError = (reply: Reply, status: number, code: string) => {
  expectStatus(reply, status)
  expect(reply.body).toEqual({ error: { code, message: expect.any(String) } })
  expect(reply.body.error.message).not.toBe("")
  expect(reply.headers.get("content-type") ?? "").toMatch(/^application\/json/)
  expect(reply.text).not.toMatch(/\bat .*:\d+:\d+|stack/i)
}

const expectNoContent = (reply: Reply) => {
  expectStatus(reply, 204)
  expect(reply.text).toBe("")
}

const isoNow = (value: string) => {
  expect(new Date(value).toISOString()).toBe(value)
  expect(Math.abs(Date.parse(value) - Date.now())).toBeLessThan(5 * 60_000)
}

const byUserId = (members: ReadonlyArray<{ userId: string; role: string }>) =>
  [...members].sort((a, b) => (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0))

const base64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")

export const httpSuite = (mode: "embedded" | "cluster") => {
  describe(`HTTP API (${mode} mode)`, () => {
    let harmony: Harmony | undefined
    let http: Api

    const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}`
    let counter = 0
    /** A username no other run used: `<label>-<run>-<n>`, at most 32 characters. */
    const uniqueUsername = (label: string) => `${label}-${run}-${(counter++).toString(36)}`
    const password = "correct horse battery"

    interface Account {
      readonly id: string
      readonly username: string
      readonly accessToken: string
      readonly refreshToken: string
      readonly session: any
    }

    const register = async (label = "u", through: Api = http): Promise<Account> => {
      const username = uniqueUsername(label)
      const reply = await through.post("/v1/auth/register", { username, password })
      expectStatus(reply, 201)
      return {
        id: reply.body.user.id,
        username,
        accessToken: reply.body.accessToken,
        refreshToken: reply.body.refreshToken,
        session: reply.body
      }
    }

    const login = async (account: Account) => {
      const reply = await http.post("/v1/auth/login", { username: account.username, password })
      expectStatus(reply, 200)
      return reply.body as { accessToken: string; refreshToken: string }
    }

    const createChat = async (owner: Account, body: { name?: string; kind: string; memberIds: Array<string> }) => {
      const reply = await http.post("/v1/chats", body, { token: owner.accessToken })
      expectStatus(reply, 201)
      return reply.body
    }

    const myChats = async (account: Account) => {
      const reply = await http.get("/v1/me/chats", { token: account.accessToken })
      expectStatus(reply, 200)
      return reply.body.chats as Array<any>
    }

    beforeAll(async () => {
      harmony = await startHarmony({ mode })
      http = api(harmony.url)
    })

    afterAll(async () => {
      if (harmony === undefined) return
      const exit = await harmony.stop("SIGTERM")
      expect(exit, harmony.logs()).toEqual({ code: 0, signal: null })
    })

    describe.concurrent("registration and login", () => {
      it("register answers 201 with a Session; displayName defaults to the username", async () => {
        const username = uniqueUsername("reg")
        const reply = await http.post("/v1/auth/register", { username, password })
        expectStatus(reply, 201)
        expect(reply.headers.get("content-type") ?? "").toMatch(/^application\/json/)
        expect(reply.body).toEqual({
          user: { id: expect.any(String), username, displayName: username },
          accessToken: expect.stringMatching(/^[\w-]+\.[\w-]+\.[\w-]+$/),
          refreshToken: expect.any(String),
          expiresIn: 900
        })
        expect(reply.body.user.id).not.toBe("")
        expect(reply.body.refreshToken).not.toBe("")

        const named = uniqueUsername("reg")
        const withName = await http.post("/v1/auth/register", { username: named, password, displayName: "Bea Example" })
        expectStatus(withName, 201)
        expect(withName.body.user).toEqual({ id: expect.any(String), username: named, displayName: "Bea Example" })
        expect(withName.body.user.id).not.toBe(reply.body.user.id)

        const me = await http.get("/v1/me", { token: reply.body.accessToken })
        expectStatus(me, 200)
        expect(me.body).toEqual(reply.body.user)
      })

      it("login answers 200 with a new Session for the same user", async () => {
        const account = await register("login")
        const reply = await http.post("/v1/auth/login", { username: account.username, password })
        expectStatus(reply, 200)
        expect(reply.body).toEqual({
          user: account.session.user,
          accessToken: expect.stringMatching(/^[\w-]+\.[\w-]+\.[\w-]+$/),
          refreshToken: expect.any(String),
          expiresIn: 900
        })
        expect(reply.body.refreshToken).not.toBe(account.refreshToken)
        const me = await http.get("/v1/me", { token: reply.body.accessToken })
        expectStatus(me, 200)
        expect(me.body).toEqual(account.session.user)
      })

      it("a wrong password or an unknown username answers 401 unauthorized", async () => {
        const account = await register("badpw")
        expectError(
          await http.post("/v1/auth/login", { username: account.username, password: `${password}!` }),
          401,
          "unauthorized"
        )
        expectError(
          await http.post("/v1/auth/login", { username: uniqueUsername("nobody"), password }),
          401,
          "unauthorized"
        )
        expectError(
          await http.post("/v1/auth/login", { username: account.username.toUpperCase(), password }),
          401,
          "unauthorized"
        )
      })

      it("a taken username answers 409 conflict and creates no second user", async () => {
        const account = await register("dup")
        const again = await http.post("/v1/auth/register", { username: account.username, password: "another password" })
        expectError(again, 409, "conflict")
        const search = await http.get(`/v1/users?q=${encodeURIComponent(account.username)}`, {
          token: account.accessToken
        })
        expectStatus(search, 200)
        expect(search.body).toEqual({ users: [account.session.user] })
        // The first registration's password still holds; the second's never did.
        expectError(
          await http.post("/v1/auth/login", { username: account.username, password: "another password" }),
          401,
          "unauthorized"
        )
        await login(account)
      })

      it("concurrent registrations of one username: exactly one succeeds, the rest answer 409", async () => {
        const username = uniqueUsername("race")
        const replies = await Promise.all(
          Array.from({ length: 4 }, (_, i) => http.post("/v1/auth/register", { username, password: `${password}${i}` }))
        )
        expect(replies.map((r) => r.status).sort()).toEqual([201, 409, 409, 409])
        for (const reply of replies.filter((r) => r.status === 409)) expectError(reply, 409, "conflict")
      })
    })

    describe.concurrent("request validation", () => {
      it("usernames are 3-32 of [a-z0-9_.-]; anything else answers 400 naming username", async () => {
        const cases = ["ab", `Upper${run}`, `a${run}`.padEnd(33, "x"), "has space", "", "émile", "semi;colon"]
        for (const username of cases) {
          const reply = await http.post("/v1/auth/register", { username, password })
          expectError(reply, 400, "bad_request")
          expect(reply.body.error.message, `for ${JSON.stringify(username)}`).toContain("username")
        }
        const longest = `m${run}${randomBytes(16).toString("hex")}`.slice(0, 32)
        expectStatus(await http.post("/v1/auth/register", { username: longest, password }), 201)
        expectStatus(await http.post("/v1/auth/register", { username: uniqueUsername("ok_.-9"), password }), 201)
      })

      it("passwords are 8-128 characters; otherwise 400 naming password", async () => {
        for (const candidate of ["x".repeat(7), "x".repeat(129), ""]) {
          const reply = await http.post("/v1/auth/register", { username: uniqueUsername("pw"), password: candidate })
          expectError(reply, 400, "bad_request")
          expect(reply.body.error.message).toContain("password")
        }
        for (const candidate of ["x".repeat(8), "y".repeat(128)]) {
          expectStatus(
            await http.post("/v1/auth/register", { username: uniqueUsername("pw"), password: candidate }),
            201
          )
        }
      })

      it("a displayName outside 1-64 characters answers 400 naming displayName", async () => {
        for (const displayName of ["", "d".repeat(65)]) {
          const reply = await http.post("/v1/auth/register", { username: uniqueUsername("dn"), password, displayName })
          expectError(reply, 400, "bad_request")
          expect(reply.body.error.message).toContain("displayName")
        }
      })

      it("missing fields and wrong types answer 400 naming the field", async () => {
        const username = uniqueUsername("types")
        const cases: Array<[string, unknown, string | undefined]> = [
          ["/v1/auth/register", {}, undefined],
          ["/v1/auth/register", { username }, "password"],
          ["/v1/auth/register", { password }, "username"],
          ["/v1/auth/register", { username: 5, password }, "username"],
          ["/v1/auth/register", { username, password: true }, "password"],
          ["/v1/auth/register", { username, password, displayName: 7 }, "displayName"],
          ["/v1/auth/register", null, undefined],
          ["/v1/auth/register", [username, password], undefined],
          ["/v1/auth/login", { username }, "password"],
          ["/v1/auth/login", { username: ["x"], password }, "username"],
          ["/v1/auth/refresh", {}, "refreshToken"],
          ["/v1/auth/refresh", { refreshToken: 5 }, "refreshToken"],
          ["/v1/auth/logout", {}, "refreshToken"]
        ]
        for (const [path, body, field] of cases) {
          const reply = await http.post(path, body)
          expectError(reply, 400, "bad_request")
          if (field !== undefined) expect(reply.body.error.message, `${path} ${JSON.stringify(body)}`).toContain(field)
        }
        // Nothing was registered along the way.
        const account = await register("types")
        const search = await http.get(`/v1/users?q=${username}`, { token: account.accessToken })
        expect(search.body).toEqual({ users: [] })
      })

      it("malformed JSON answers 400 bad_request", async () => {
        for (const raw of ['{"username":', "{'username':'abc'}", "not json at all", "{}}"]) {
          expectError(await http.post("/v1/auth/register", undefined, { raw }), 400, "bad_request")
        }
        const account = await register("json")
        expectError(
          await http.post("/v1/chats", undefined, { raw: '{"kind":"group",', token: account.accessToken }),
          400,
          "bad_request"
        )
      })

      it("a body that is not application/json answers 400 bad_request", async () => {
        const body = JSON.stringify({ username: uniqueUsername("ctype"), password })
        for (const contentType of ["text/plain", "application/x-www-form-urlencoded"]) {
          const reply = await http.post("/v1/auth/register", undefined, {
            raw: body,
            headers: { "content-type": contentType }
          })
          expectError(reply, 400, "bad_request")
        }
      })

      it("a body over 64 KiB answers 413 too_large, with or without a Content-Length", async () => {
        const big = { username: uniqueUsername("big"), password: "p".repeat(70 * 1024) }
        expectError(await http.post("/v1/auth/register", big), 413, "too_large")

        // Chunked: no Content-Length, the server has to count.
        const chunk = new TextEncoder().encode(JSON.stringify(big))
        const stream = new ReadableStream<Uint8Array>({
          start(controller) {
            for (let at = 0; at < chunk.length; at += 8192) controller.enqueue(chunk.subarray(at, at + 8192))
            controller.close()
          }
        })
        const response = await fetch(`${harmony!.url}/v1/auth/register`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: stream,
          duplex: "half"
        } as RequestInit)
        const text = await response.text()
        expectError(
          { status: response.status, headers: response.headers, text, body: JSON.parse(text) },
          413,
          "too_large"
        )
        // Just under the limit is fine (and then fails validation, not size).
        const under = await http.post("/v1/auth/register", {
          username: uniqueUsername("big"),
          password: "p".repeat(60_000)
        })
        expectError(under, 400, "bad_request")
        expect(under.body.error.message).toContain("password")
      })

      it("unknown routes answer 404 not_found in the error shape", async () => {
        expectError(await http.get("/nope"), 404, "not_found")
        expectError(await http.get("/v1/nope"), 404, "not_found")
        expectError(await http.post("/v1/auth/nope", { username: "abc" }), 404, "not_found")
        expectError(await http.get("/v1/auth/register"), 404, "not_found")
        const account = await register("route")
        expectError(await http.get("/v1/chats/some-chat/nope", { token: account.accessToken }), 404, "not_found")
      })

      it("GET /v1/users without q, or with an empty q, answers 400 bad_request", async () => {
        const account = await register("q")
        for (const path of ["/v1/users", "/v1/users?q="]) {
          const reply = await http.get(path, { token: account.accessToken })
          expectError(reply, 400, "bad_request")
          expect(reply.body.error.message).toContain("q")
        }
      })

      it("never answers 5xx for bad input (NUL characters in strings)", async () => {
        const account = await register("nul")
        const chat = await createChat(account, { kind: "group", memberIds: [] })
        const token = account.accessToken
        const replies: Array<[string, Reply]> = [
          ["login username", await http.post("/v1/auth/login", { username: "a\u0000b", password })],
          [
            "register displayName",
            await http.post("/v1/auth/register", { username: uniqueUsername("nul"), password, displayName: "x\u0000" })
          ],
          [
            "register password",
            await http.post("/v1/auth/register", { username: uniqueUsername("nul"), password: `${password}\u0000` })
          ],
          ["refresh token", await http.post("/v1/auth/refresh", { refreshToken: "a\u0000b" })],
          ["chat id", await http.get("/v1/chats/%00", { token })],
          ["search q", await http.get("/v1/users?q=%00", { token })],
          ["create memberIds", await http.post("/v1/chats", { kind: "group", memberIds: ["a\u0000"] }, { token })],
          ["create name", await http.post("/v1/chats", { kind: "group", name: "x\u0000", memberIds: [] }, { token })],
          ["rename", await http.patch(`/v1/chats/${chat.id}`, { name: "x\u0000" }, { token })],
          ["add members", await http.post(`/v1/chats/${chat.id}/members`, { userIds: ["a\u0000"] }, { token })],
          ["remove member", await http.delete(`/v1/chats/${chat.id}/members/%00`, { token })]
        ]
        const failures = replies
          .filter(
            ([, reply]) =>
              reply.status >= 500 || (reply.status >= 400 && !contractCodes.includes(reply.body?.error?.code))
          )
          .map(([what, reply]) => `${what}: ${reply.status} ${reply.text}`)
        expect(failures).toEqual([])
      })
    })

    describe.concurrent("access tokens", () => {
      it("no, malformed or garbage Authorization answers 401 unauthorized", async () => {
        expectError(await http.get("/v1/me"), 401, "unauthorized")
        expectError(await http.get("/v1/me/chats"), 401, "unauthorized")
        expectError(await http.post("/v1/chats", { kind: "group", memberIds: [] }), 401, "unauthorized")
        for (const authorization of ["Bearer garbage", "Bearer a.b.c", "Bearer ", "Basic dXNlcjpwYXNz", "garbage"]) {
          expectError(await http.get("/v1/me", { headers: { authorization } }), 401, "unauthorized")
        }
      })

      it("a token signed with another secret, unsigned or tampered answers 401", async () => {
        const [victim, other] = await Promise.all([register("forge"), register("forge")])
        const now = Math.floor(Date.now() / 1000)
        const forged = await new SignJWT({})
          .setProtectedHeader({ alg: "HS256", typ: "JWT" })
          .setSubject(victim.id)
          .setIssuedAt(now)
          .setExpirationTime(now + 600)
          .sign(new TextEncoder().encode(randomBytes(32).toString("hex")))
        expectError(await http.get("/v1/me", { token: forged }), 401, "unauthorized")

        const unsigned = `${base64url({ alg: "none", typ: "JWT" })}.${base64url({ sub: victim.id, exp: now + 600 })}.`
        expectError(await http.get("/v1/me", { token: unsigned }), 401, "unauthorized")

        // The other user's valid token with the victim's subject swapped in.
        const [header, , signature] = other.accessToken.split(".")
        const payload = JSON.parse(Buffer.from(other.accessToken.split(".")[1]!, "base64url").toString())
        const tampered = `${header}.${base64url({ ...payload, sub: victim.id })}.${signature}`
        expectError(await http.get("/v1/me", { token: tampered }), 401, "unauthorized")

        const me = await http.get("/v1/me", { token: victim.accessToken })
        expectStatus(me, 200)
        expect(me.body.id).toBe(victim.id)
      })

      it("an expired access token answers 401 (a server with ACCESS_TOKEN_TTL=3 seconds)", async () => {
        const short = await startHarmony({ mode, env: { ACCESS_TOKEN_TTL: "3 seconds" } })
        try {
          const through = api(short.url)
          const account = await register("ttl", through)
          expect(account.session.expiresIn).toBe(3)
          // A token works until it expires: it lives 2 to 3 s (its expiry is
          // in whole seconds). On a busy machine a token may not reach its
          // first use in time, so fresh ones are asked for until one is used
          // within 1.5 s of asking (a server that refused live tokens fails here).
          let accessToken = ""
          let askedAt = 0
          for (let attempt = 1; ; attempt++) {
            askedAt = Date.now()
            const fresh = await through.post("/v1/auth/login", { username: account.username, password })
            expectStatus(fresh, 200)
            accessToken = fresh.body.accessToken
            const reply = await through.get("/v1/me", { token: accessToken })
            if (Date.now() - askedAt < 1_500 || attempt === 5) {
              expectStatus(reply, 200)
              break
            }
          }
          await sleep(Math.max(0, askedAt + 4_500 - Date.now()))
          expectError(await through.get("/v1/me", { token: accessToken }), 401, "unauthorized")
          // The refresh token outlives it and gets a working access token.
          const refreshed = await through.post("/v1/auth/refresh", { refreshToken: account.refreshToken })
          expectStatus(refreshed, 200)
          expectStatus(await through.get("/v1/me", { token: refreshed.body.accessToken }), 200)
        } finally {
          const exit = await short.stop("SIGTERM")
          expect(exit, short.logs()).toEqual({ code: 0, signal: null })
        }
      })
    })

    describe.concurrent("refresh tokens", () => {
      it("refresh rotates the pair; the old token works within the grace period; reuse after it revokes the family", async () => {
        const account = await register("grace")
        const otherLogin = await login(account)

        const first = await http.post("/v1/auth/refresh", { refreshToken: account.refreshToken })
        const rotatedAt = Date.now()
        expectStatus(first, 200)
        expect(first.body).toEqual({
          user: account.session.user,
          accessToken: expect.stringMatching(/^[\w-]+\.[\w-]+\.[\w-]+$/),
          refreshToken: expect.any(String),
          expiresIn: 900
        })
        expect(first.body.refreshToken).not.toBe(account.refreshToken)
        expectStatus(await http.get("/v1/me", { token: first.body.accessToken }), 200)

        // A parallel refresh with the same (now rotated) token, within the grace period.
        const second = await http.post("/v1/auth/refresh", { refreshToken: account.refreshToken })
        expectStatus(second, 200)
        expect(second.body.user).toEqual(account.session.user)
        expect(second.body.refreshToken).not.toBe(first.body.refreshToken)

        // The newest token of the family, never used.
        const third = await http.post("/v1/auth/refresh", { refreshToken: first.body.refreshToken })
        expectStatus(third, 200)
        const newest = third.body.refreshToken as string

        await sleep(Math.max(0, rotatedAt + 6_000 - Date.now()))
        expectError(await http.post("/v1/auth/refresh", { refreshToken: account.refreshToken }), 401, "unauthorized")
        // The reuse ended every token of that login...
        expectError(await http.post("/v1/auth/refresh", { refreshToken: newest }), 401, "unauthorized")
        expectError(
          await http.post("/v1/auth/refresh", { refreshToken: second.body.refreshToken }),
          401,
          "unauthorized"
        )
        // ...and nothing of another login.
        expectStatus(await http.post("/v1/auth/refresh", { refreshToken: otherLogin.refreshToken }), 200)
      })

      it("logout answers 204 and the refresh token stops working", async () => {
        const account = await register("logout")
        const session = await login(account)
        expectNoContent(await http.post("/v1/auth/logout", { refreshToken: session.refreshToken }))
        expectError(await http.post("/v1/auth/refresh", { refreshToken: session.refreshToken }), 401, "unauthorized")
        // The registration's own login is another family and still works.
        expectStatus(await http.post("/v1/auth/refresh", { refreshToken: account.refreshToken }), 200)
      })

      it("logout also ends the tokens rotated from the logged-out one", async () => {
        const account = await register("logout")
        const rotated = await http.post("/v1/auth/refresh", { refreshToken: account.refreshToken })
        expectStatus(rotated, 200)
        expectNoContent(await http.post("/v1/auth/logout", { refreshToken: rotated.body.refreshToken }))
        expectError(
          await http.post("/v1/auth/refresh", { refreshToken: rotated.body.refreshToken }),
          401,
          "unauthorized"
        )
        // Within the grace period, but the family is revoked.
        expectError(await http.post("/v1/auth/refresh", { refreshToken: account.refreshToken }), 401, "unauthorized")
      })

      it("malformed, unknown or tampered refresh tokens answer 401 unauthorized", async () => {
        const account = await register("badref")
        const [id, secret] = account.refreshToken.split(".") as [string, string]
        const flipped = `${secret.slice(0, -1)}${secret.endsWith("A") ? "B" : "A"}`
        const candidates = [
          "garbage",
          "",
          `${"A".repeat(16)}.${"A".repeat(43)}`,
          `${id}.${flipped}`,
          `${id}.`,
          account.accessToken
        ]
        for (const refreshToken of candidates) {
          expectError(await http.post("/v1/auth/refresh", { refreshToken }), 401, "unauthorized")
          expectError(await http.post("/v1/auth/logout", { refreshToken }), 401, "unauthorized")
        }
        // Guessing did not harm the real token.
        expectStatus(await http.post("/v1/auth/refresh", { refreshToken: account.refreshToken }), 200)
      })
    })

    describe.concurrent("me and user search", () => {
      it("GET /v1/me answers the caller's User", async () => {
        const account = await register("me")
        const reply = await http.get("/v1/me", { token: account.accessToken })
        expectStatus(reply, 200)
        expect(reply.body).toEqual({ id: account.id, username: account.username, displayName: account.username })
      })

      it("GET /v1/users/{userId} answers that user; an unknown id answers 404", async () => {
        const [a, b] = await Promise.all([register("byid"), register("byid")])
        const reply = await http.get(`/v1/users/${b.id}`, { token: a.accessToken })
        expectStatus(reply, 200)
        expect(reply.body).toEqual(b.session.user)
        expectError(await http.get(`/v1/users/${a.id}x`, { token: a.accessToken }), 404, "not_found")
        expectError(await http.get(`/v1/users/${b.id}`), 401, "unauthorized")
      })

      it("GET /v1/users?q= matches username prefixes, at most 20, ordered by username", async () => {
        const prefix = `s${run}${(counter++).toString(36)}`
        const names = Array.from({ length: 22 }, (_, i) => `${prefix}-${String(i).padStart(2, "0")}`)
        const created = await Promise.all(
          names.map(async (username) => {
            const reply = await http.post("/v1/auth/register", { username, password })
            expectStatus(reply, 201)
            return reply.body as { user: { id: string; username: string; displayName: string }; accessToken: string }
          })
        )
        const token = created[0]!.accessToken
        const search = async (q: string) => {
          const reply = await http.get(`/v1/users?q=${encodeURIComponent(q)}`, { token })
          expectStatus(reply, 200)
          return reply.body.users as Array<{ id: string; username: string; displayName: string }>
        }

        const all = await search(prefix)
        expect(all.map((u) => u.username)).toEqual([...names].sort().slice(0, 20))
        const byName = new Map(created.map((c) => [c.user.username, c.user]))
        for (const user of all) expect(user).toEqual(byName.get(user.username))

        expect(await search(`${prefix}-07`)).toEqual([byName.get(`${prefix}-07`)])
        expect((await search(`${prefix}-2`)).map((u) => u.username)).toEqual([`${prefix}-20`, `${prefix}-21`])
        // A prefix, not a substring.
        expect(await search(prefix.slice(1))).toEqual([])
        // LIKE metacharacters match only themselves.
        expect(await search(`${prefix.slice(0, -1)}_`)).toEqual([])
        expect(await search("%")).toEqual([])
      })
    })

    describe.concurrent("chats", () => {
      it("creating a group answers 201 Chat with the caller as owner and member", async () => {
        const [a, b, c] = await Promise.all([register("cg"), register("cg"), register("cg")])
        const reply = await http.post(
          "/v1/chats",
          { name: "Team", kind: "group", memberIds: [b.id, c.id, a.id, b.id] },
          { token: a.accessToken }
        )
        expectStatus(reply, 201)
        const chat = reply.body
        expect(chat).toEqual({
          id: expect.any(String),
          name: "Team",
          kind: "group",
          ownerId: a.id,
          createdAt: expect.any(String),
          members: expect.any(Array)
        })
        isoNow(chat.createdAt)
        expect(byUserId(chat.members)).toEqual(
          byUserId([
            { userId: a.id, role: "owner" },
            { userId: b.id, role: "member" },
            { userId: c.id, role: "member" }
          ])
        )

        const seen = await http.get(`/v1/chats/${chat.id}`, { token: b.accessToken })
        expectStatus(seen, 200)
        expect({ ...seen.body, members: byUserId(seen.body.members) }).toEqual({
          ...chat,
          members: byUserId(chat.members)
        })

        const summary = { id: chat.id, name: "Team", kind: "group", lastSeq: 0, lastReadSeq: 0 }
        expect(await myChats(a)).toEqual([{ ...summary, role: "owner" }])
        expect(await myChats(b)).toEqual([{ ...summary, role: "member" }])

        // Unnamed, alone.
        const solo = await createChat(a, { kind: "group", memberIds: [] })
        expect(solo).toEqual({
          id: expect.any(String),
          name: null,
          kind: "group",
          ownerId: a.id,
          createdAt: expect.any(String),
          members: [{ userId: a.id, role: "owner" }]
        })
      })

      it("creating with an unknown member answers 400 and creates nothing", async () => {
        const [a, b] = await Promise.all([register("cu"), register("cu")])
        const before = await myChats(a)
        const reply = await http.post(
          "/v1/chats",
          { name: "Ghosts", kind: "group", memberIds: [b.id, "no-such-user"] },
          { token: a.accessToken }
        )
        expectError(reply, 400, "bad_request")
        expect(await myChats(a)).toEqual(before)
        expect(await myChats(b)).toEqual([])
        const direct = await http.post(
          "/v1/chats",
          { kind: "direct", memberIds: ["no-such-user"] },
          { token: a.accessToken }
        )
        expectError(direct, 400, "bad_request")
        expect(await myChats(a)).toEqual(before)
      })

      it("malformed create requests answer 400", async () => {
        const a = await register("cm")
        const token = a.accessToken
        for (const body of [
          { kind: "channel", memberIds: [] },
          { kind: "group" },
          { memberIds: [] },
          { kind: "group", memberIds: "x" },
          { kind: "group", memberIds: [], name: "" },
          { kind: "group", memberIds: [], name: "n".repeat(101) }
        ]) {
          expectError(await http.post("/v1/chats", body, { token }), 400, "bad_request")
        }
        expect(await myChats(a)).toEqual([])
      })

      it("a direct chat has exactly one other member, and a pair has only one", async () => {
        const [a, b, c] = await Promise.all([register("cd"), register("cd"), register("cd")])
        const token = a.accessToken
        for (const memberIds of [[], [a.id], [b.id, c.id]]) {
          expectError(await http.post("/v1/chats", { kind: "direct", memberIds }, { token }), 400, "bad_request")
        }
        expect(await myChats(a)).toEqual([])

        const chat = await createChat(a, { kind: "direct", memberIds: [b.id] })
        expect(chat.kind).toBe("direct")
        expect(byUserId(chat.members)).toEqual(
          byUserId([
            { userId: a.id, role: "owner" },
            { userId: b.id, role: "member" }
          ])
        )
        expect((await createChat(a, { kind: "direct", memberIds: [b.id] })).id).toBe(chat.id)
        expect((await createChat(b, { kind: "direct", memberIds: [a.id] })).id).toBe(chat.id)
        expect((await myChats(a)).map((s) => s.id)).toEqual([chat.id])
        expect((await myChats(b)).map((s) => s.id)).toEqual([chat.id])
        // Another pair gets another chat.
        expect((await createChat(a, { kind: "direct", memberIds: [c.id] })).id).not.toBe(chat.id)
      })

      it("a chat is invisible to non-members: 404, exactly as an unknown chat", async () => {
        const [a, b, outsider] = await Promise.all([register("ci"), register("ci"), register("ci")])
        const chat = await createChat(a, { name: "Private", kind: "group", memberIds: [b.id] })
        const unknown = randomUUID()
        const token = outsider.accessToken
        const calls: Array<[string, (id: string) => Promise<Reply>]> = [
          ["GET", (id) => http.get(`/v1/chats/${id}`, { token })],
          ["PATCH", (id) => http.patch(`/v1/chats/${id}`, { name: "Mine now" }, { token })],
          ["DELETE", (id) => http.delete(`/v1/chats/${id}`, { token })],
          ["POST members", (id) => http.post(`/v1/chats/${id}/members`, { userIds: [outsider.id] }, { token })],
          ["DELETE member", (id) => http.delete(`/v1/chats/${id}/members/${b.id}`, { token })],
          ["DELETE self", (id) => http.delete(`/v1/chats/${id}/members/${outsider.id}`, { token })]
        ]
        for (const [what, call] of calls) {
          const hidden = await call(chat.id)
          const missing = await call(unknown)
          expectError(hidden, 404, "not_found")
          expectError(missing, 404, "not_found")
          expect(hidden.body.error.message.replaceAll(chat.id, "<id>"), what).toBe(
            missing.body.error.message.replaceAll(unknown, "<id>")
          )
        }
        // Nothing changed.
        const after = await http.get(`/v1/chats/${chat.id}`, { token: a.accessToken })
        expectStatus(after, 200)
        expect(after.body.name).toBe("Private")
        expect(byUserId(after.body.members).map((m) => m.userId)).toEqual([a.id, b.id].sort())
      })

      it("rename: owner 200, member 403, non-member 404; names are 1-100 characters", async () => {
        const [a, b, outsider] = await Promise.all([register("cr"), register("cr"), register("cr")])
        const chat = await createChat(a, { name: "Before", kind: "group", memberIds: [b.id] })
        const renamed = await http.patch(`/v1/chats/${chat.id}`, { name: "After" }, { token: a.accessToken })
        expectStatus(renamed, 200)
        expect({ ...renamed.body, members: byUserId(renamed.body.members) }).toEqual({
          ...chat,
          name: "After",
          members: byUserId(chat.members)
        })
        expectError(
          await http.patch(`/v1/chats/${chat.id}`, { name: "Mine" }, { token: b.accessToken }),
          403,
          "forbidden"
        )
        expectError(
          await http.patch(`/v1/chats/${chat.id}`, { name: "Mine" }, { token: outsider.accessToken }),
          404,
          "not_found"
        )
        for (const body of [{ name: "" }, { name: "n".repeat(101) }, {}, { name: 5 }, { name: null }]) {
          const reply = await http.patch(`/v1/chats/${chat.id}`, body, { token: a.accessToken })
          expectError(reply, 400, "bad_request")
        }
        const longest = "n".repeat(100)
        const ok = await http.patch(`/v1/chats/${chat.id}`, { name: longest }, { token: a.accessToken })
        expectStatus(ok, 200)
        expect(ok.body.name).toBe(longest)
        const seen = await http.get(`/v1/chats/${chat.id}`, { token: b.accessToken })
        expect(seen.body.name).toBe(longest)
        expect((await myChats(b))[0]?.name).toBe(longest)
      })

      it("adding members: the owner adds, a member gets 403, unknown users 400 and nobody is added", async () => {
        const [a, b, c, d] = await Promise.all([register("ca"), register("ca"), register("ca"), register("ca")])
        const chat = await createChat(a, { name: "Grow", kind: "group", memberIds: [b.id] })
        const added = await http.post(`/v1/chats/${chat.id}/members`, { userIds: [c.id] }, { token: a.accessToken })
        expectStatus(added, 200)
        expect(added.body.id).toBe(chat.id)
        expect(byUserId(added.body.members)).toEqual(
          byUserId([
            { userId: a.id, role: "owner" },
            { userId: b.id, role: "member" },
            { userId: c.id, role: "member" }
          ])
        )
        expectStatus(await http.get(`/v1/chats/${chat.id}`, { token: c.accessToken }), 200)
        expect(await myChats(c)).toEqual([
          { id: chat.id, name: "Grow", kind: "group", role: "member", lastSeq: 0, lastReadSeq: 0 }
        ])

        expectError(
          await http.post(`/v1/chats/${chat.id}/members`, { userIds: [d.id] }, { token: b.accessToken }),
          403,
          "forbidden"
        )
        expectError(
          await http.post(
            `/v1/chats/${chat.id}/members`,
            { userIds: [d.id, "no-such-user"] },
            { token: a.accessToken }
          ),
          400,
          "bad_request"
        )
        expectError(
          await http.post(`/v1/chats/${chat.id}/members`, { userIds: [] }, { token: a.accessToken }),
          400,
          "bad_request"
        )
        expectError(await http.get(`/v1/chats/${chat.id}`, { token: d.accessToken }), 404, "not_found")
        expect(await myChats(d)).toEqual([])

        // Adding someone already there changes nothing.
        const again = await http.post(
          `/v1/chats/${chat.id}/members`,
          { userIds: [c.id, b.id] },
          { token: a.accessToken }
        )
        expectStatus(again, 200)
        expect(byUserId(again.body.members)).toEqual(byUserId(added.body.members))
      })

      it("removing members: anyone removes themselves, only the owner removes others", async () => {
        const [a, b, c, d] = await Promise.all([register("cx"), register("cx"), register("cx"), register("cx")])
        const chat = await createChat(a, { name: "Shrink", kind: "group", memberIds: [b.id, c.id, d.id] })

        expectError(
          await http.delete(`/v1/chats/${chat.id}/members/${c.id}`, { token: b.accessToken }),
          403,
          "forbidden"
        )
        expectError(
          await http.delete(`/v1/chats/${chat.id}/members/${a.id}`, { token: b.accessToken }),
          403,
          "forbidden"
        )

        expectNoContent(await http.delete(`/v1/chats/${chat.id}/members/${b.id}`, { token: b.accessToken }))
        expectError(await http.get(`/v1/chats/${chat.id}`, { token: b.accessToken }), 404, "not_found")
        expect(await myChats(b)).toEqual([])

        expectNoContent(await http.delete(`/v1/chats/${chat.id}/members/${c.id}`, { token: a.accessToken }))
        expectError(await http.get(`/v1/chats/${chat.id}`, { token: c.accessToken }), 404, "not_found")
        expect(await myChats(c)).toEqual([])

        const left = await http.get(`/v1/chats/${chat.id}`, { token: d.accessToken })
        expectStatus(left, 200)
        expect(left.body.ownerId).toBe(a.id)
        expect(byUserId(left.body.members)).toEqual(
          byUserId([
            { userId: a.id, role: "owner" },
            { userId: d.id, role: "member" }
          ])
        )
      })

      it("when the owner leaves, the oldest remaining member becomes owner", async () => {
        const [a, b, c] = await Promise.all([register("co"), register("co"), register("co")])
        const chat = await createChat(a, { name: "Heirs", kind: "group", memberIds: [b.id] })
        await sleep(20)
        expectStatus(
          await http.post(`/v1/chats/${chat.id}/members`, { userIds: [c.id] }, { token: a.accessToken }),
          200
        )

        expectNoContent(await http.delete(`/v1/chats/${chat.id}/members/${a.id}`, { token: a.accessToken }))
        const after = await http.get(`/v1/chats/${chat.id}`, { token: c.accessToken })
        expectStatus(after, 200)
        expect(after.body.ownerId).toBe(b.id)
        expect(byUserId(after.body.members)).toEqual(
          byUserId([
            { userId: b.id, role: "owner" },
            { userId: c.id, role: "member" }
          ])
        )
        expect((await myChats(b)).map((s) => s.role)).toEqual(["owner"])
        expectError(await http.get(`/v1/chats/${chat.id}`, { token: a.accessToken }), 404, "not_found")

        // The new owner has the owner's powers; the next heir is the only one left.
        expectStatus(await http.patch(`/v1/chats/${chat.id}`, { name: "B's" }, { token: b.accessToken }), 200)
        expectNoContent(await http.delete(`/v1/chats/${chat.id}/members/${b.id}`, { token: b.accessToken }))
        const last = await http.get(`/v1/chats/${chat.id}`, { token: c.accessToken })
        expectStatus(last, 200)
        expect(last.body.ownerId).toBe(c.id)
        expect(last.body.members).toEqual([{ userId: c.id, role: "owner" }])
      })

      it("deleting a chat: non-owner 403, owner 204, then 404 for everyone", async () => {
        const [a, b] = await Promise.all([register("cdel"), register("cdel")])
        const chat = await createChat(a, { name: "Doomed", kind: "group", memberIds: [b.id] })
        expectError(await http.delete(`/v1/chats/${chat.id}`, { token: b.accessToken }), 403, "forbidden")
        expectStatus(await http.get(`/v1/chats/${chat.id}`, { token: b.accessToken }), 200)

        expectNoContent(await http.delete(`/v1/chats/${chat.id}`, { token: a.accessToken }))
        for (const who of [a, b]) {
          expectError(await http.get(`/v1/chats/${chat.id}`, { token: who.accessToken }), 404, "not_found")
          expect(await myChats(who)).toEqual([])
        }
        expectError(await http.delete(`/v1/chats/${chat.id}`, { token: a.accessToken }), 404, "not_found")
      })

      it("GET /v1/me/chats lists a ChatSummary per membership", async () => {
        const [a, b] = await Promise.all([register("cl"), register("cl")])
        expect(await myChats(a)).toEqual([])
        const group = await createChat(a, { name: "Listed", kind: "group", memberIds: [b.id] })
        const direct = await createChat(b, { kind: "direct", memberIds: [a.id] })
        const sortById = (list: Array<any>) => [...list].sort((x, y) => (x.id < y.id ? -1 : 1))
        expect(sortById(await myChats(a))).toEqual(
          sortById([
            { id: group.id, name: "Listed", kind: "group", role: "owner", lastSeq: 0, lastReadSeq: 0 },
            { id: direct.id, name: null, kind: "direct", role: "member", lastSeq: 0, lastReadSeq: 0 }
          ])
        )
        expect(sortById(await myChats(b))).toEqual(
          sortById([
            { id: group.id, name: "Listed", kind: "group", role: "member", lastSeq: 0, lastReadSeq: 0 },
            { id: direct.id, name: null, kind: "direct", role: "owner", lastSeq: 0, lastReadSeq: 0 }
          ])
        )
      })
    })

    describe.concurrent("closing an account", () => {
      it("DELETE /v1/me ends tokens and sessions, leaves every chat and keeps the username taken", async () => {
        const [x, y, z] = await Promise.all([register("close"), register("close"), register("close")])
        const secondSession = await login(x)
        const owned = await createChat(x, { name: "X owns", kind: "group", memberIds: [y.id] })
        const member = await createChat(y, { name: "Y owns", kind: "group", memberIds: [x.id, z.id] })
        const direct = await createChat(x, { kind: "direct", memberIds: [y.id] })
        await createChat(x, { name: "X alone", kind: "group", memberIds: [] })

        expectNoContent(await http.delete("/v1/me", { token: x.accessToken }))

        expectError(await http.get("/v1/me", { token: x.accessToken }), 401, "unauthorized")
        expectError(await http.get("/v1/me/chats", { token: secondSession.accessToken }), 401, "unauthorized")
        expectError(await http.delete("/v1/me", { token: x.accessToken }), 401, "unauthorized")
        expectError(await http.post("/v1/auth/refresh", { refreshToken: x.refreshToken }), 401, "unauthorized")
        expectError(
          await http.post("/v1/auth/refresh", { refreshToken: secondSession.refreshToken }),
          401,
          "unauthorized"
        )
        expectError(await http.post("/v1/auth/login", { username: x.username, password }), 401, "unauthorized")
        expectError(
          await http.post("/v1/auth/register", { username: x.username, password: "a new password" }),
          409,
          "conflict"
        )

        const search = await http.get(`/v1/users?q=${x.username}`, { token: y.accessToken })
        expectStatus(search, 200)
        expect(search.body).toEqual({ users: [] })
        // Looked up by id (a message's author), the closed account keeps its id and username, not its name.
        const closed = await http.get(`/v1/users/${x.id}`, { token: y.accessToken })
        expectStatus(closed, 200)
        expect(closed.body).toEqual({ id: x.id, username: x.username, displayName: "Deleted user" })

        const ownedAfter = await http.get(`/v1/chats/${owned.id}`, { token: y.accessToken })
        expectStatus(ownedAfter, 200)
        expect(ownedAfter.body.ownerId).toBe(y.id)
        expect(ownedAfter.body.members).toEqual([{ userId: y.id, role: "owner" }])

        const memberAfter = await http.get(`/v1/chats/${member.id}`, { token: z.accessToken })
        expectStatus(memberAfter, 200)
        expect(memberAfter.body.ownerId).toBe(y.id)
        expect(byUserId(memberAfter.body.members)).toEqual(
          byUserId([
            { userId: y.id, role: "owner" },
            { userId: z.id, role: "member" }
          ])
        )

        const directAfter = await http.get(`/v1/chats/${direct.id}`, { token: y.accessToken })
        expectStatus(directAfter, 200)
        expect(directAfter.body.members).toEqual([{ userId: y.id, role: "owner" }])

        // A closed account cannot be brought into a chat again.
        expectError(
          await http.post("/v1/chats", { kind: "direct", memberIds: [x.id] }, { token: y.accessToken }),
          400,
          "bad_request"
        )
        expectError(
          await http.post(`/v1/chats/${member.id}/members`, { userIds: [x.id] }, { token: y.accessToken }),
          400,
          "bad_request"
        )
        expect((await myChats(y)).map((s) => s.id).sort((p: string, q: string) => (p < q ? -1 : 1))).toEqual(
          [owned.id, member.id, direct.id].sort()
        )
      })
    })

    describe.concurrent("search", () => {
      /** A word nobody else sends. */
      const wordOf = (label: string) => `${label}${run}${(counter++).toString(36)}`.toLowerCase()
      const send = async (account: Account, chatId: string, body: string) => {
        const reply = await http.post(
          `/v1/chats/${chatId}/messages`,
          { clientMsgId: randomUUID(), body },
          { token: account.accessToken }
        )
        expectStatus(reply, 202)
        return reply.body.id as string
      }
      const search = (account: Account, query: string) =>
        http.get(`/v1/search?${query}`, { token: account.accessToken })
      /** Searches until `done` holds for the hits (the index follows the store within a second or so). */
      const searchUntil = async (account: Account, query: string, done: (hits: Array<any>) => boolean) => {
        const deadline = Date.now() + 60_000
        while (true) {
          const reply = await search(account, query)
          expectStatus(reply, 200)
          if (done(reply.body.hits)) return reply.body
          if (Date.now() > deadline) throw new Error(`search ${query}: not within 60 s; last ${reply.text}`)
          await sleep(100)
        }
      }

      it("a word sent a moment ago is found, with its chat, seq, author, time and a highlighted snippet", async () => {
        const [ann, bob] = [await register("srch"), await register("srch")]
        const chat = await createChat(ann, { name: "search", kind: "group", memberIds: [bob.id] })
        const word = wordOf("w")
        const id = await send(ann, chat.id, `meet me by the ${word} at noon`)
        const page = await searchUntil(bob, `q=${word}`, (hits) => hits.length > 0)
        expect(page).toEqual({
          hits: [
            {
              chatId: chat.id,
              seq: expect.any(Number),
              id,
              authorId: ann.id,
              createdAt: expect.any(String),
              snippet: `meet me by the ${word} at noon`,
              highlights: [[15, 15 + word.length]]
            }
          ],
          nextBefore: null
        })
        isoNow(page.hits[0].createdAt)
        const history = await http.get(`/v1/chats/${chat.id}/messages?after=${page.hits[0].seq - 1}&limit=1`, {
          token: bob.accessToken
        })
        expect(history.body.messages[0].id).toBe(id)
        // Scoped to the chat: the same hit.
        expect((await search(bob, `q=${word}&chatId=${chat.id}`)).body.hits.map((h: any) => h.id)).toEqual([id])
      })

      it("pages by the cursor in rank order, each hit once", async () => {
        const ann = await register("srch")
        const chat = await createChat(ann, { name: "pages", kind: "group", memberIds: [] })
        const word = wordOf("p")
        for (let i = 1; i <= 5; i++) await send(ann, chat.id, Array.from({ length: i }, () => word).join(" "))
        await searchUntil(ann, `q=${word}`, (hits) => hits.length === 5)
        const seqs: Array<number> = []
        let before: string | null = null
        do {
          const reply = await search(ann, `q=${word}&limit=2${before === null ? "" : `&before=${before}`}`)
          expectStatus(reply, 200)
          expect(reply.body.hits.length).toBeLessThanOrEqual(2)
          seqs.push(...reply.body.hits.map((h: any) => h.seq))
          before = reply.body.nextBefore
        } while (before !== null)
        expect(new Set(seqs).size).toBe(5)
        // The message with the word five times ranks first.
        expect(seqs[0]).toBe(Math.max(...seqs))
      })

      it("a non-member learns nothing; a removed member stops seeing the chat's hits; 401 without a token", async () => {
        const [ann, bob, eve] = [await register("srch"), await register("srch"), await register("srch")]
        const chat = await createChat(ann, { name: "private", kind: "group", memberIds: [bob.id] })
        const word = wordOf("s")
        await send(ann, chat.id, `the ${word} is hidden`)
        await searchUntil(bob, `q=${word}`, (hits) => hits.length === 1)
        const outside = await search(eve, `q=${word}`)
        expectStatus(outside, 200)
        expect(outside.body).toEqual({ hits: [], nextBefore: null })
        expectError(await search(eve, `q=${word}&chatId=${chat.id}`), 404, "not_found")
        expectError(await search(eve, `q=${word}&chatId=nochat-${run}`), 404, "not_found")
        expectNoContent(await http.delete(`/v1/chats/${chat.id}/members/${bob.id}`, { token: ann.accessToken }))
        expect((await search(bob, `q=${word}`)).body).toEqual({ hits: [], nextBefore: null })
        expectError(await search(bob, `q=${word}&chatId=${chat.id}`), 404, "not_found")
        expectError(await http.get(`/v1/search?q=${word}`), 401, "unauthorized")
        // The owner still finds it; once the chat is deleted, nobody does.
        expect((await search(ann, `q=${word}`)).body.hits).toHaveLength(1)
        expectNoContent(await http.delete(`/v1/chats/${chat.id}`, { token: ann.accessToken }))
        expect((await search(ann, `q=${word}`)).body.hits).toEqual([])
      })

      it("bounds the query: q of 1 to 200 characters and 32 words, limit 1 to 50, a cursor it gave out", async () => {
        const ann = await register("srch")
        expectError(await search(ann, "q="), 400, "bad_request")
        expectError(await search(ann, ""), 400, "bad_request")
        expectError(await search(ann, `q=${"a".repeat(201)}`), 400, "bad_request")
        expectStatus(await search(ann, `q=${"a".repeat(200)}`), 200)
        const words = (n: number) => encodeURIComponent(Array.from({ length: n }, (_, i) => `w${i}`).join(" "))
        expectStatus(await search(ann, `q=${words(32)}`), 200)
        const tooMany = await search(ann, `q=${words(33)}`)
        expectError(tooMany, 400, "bad_request")
        expect(tooMany.body.error.message).toContain("at most 32 words")
        expectError(await search(ann, "q=x&limit=51"), 400, "bad_request")
        expectError(await search(ann, "q=x&limit=0"), 400, "bad_request")
        expectError(await search(ann, "q=x&before=garbage"), 400, "bad_request")
        // Operators and punctuation are words, never SQL or a syntax error.
        expectStatus(await search(ann, `q=${encodeURIComponent("'); DROP TABLE users; -- \\ & | ! :*")}`), 200)
      })

      it("is rate limited per user", async () => {
        const ann = await register("srch")
        const replies = await Promise.all(Array.from({ length: 80 }, () => search(ann, "q=anything")))
        const limited = replies.filter((reply) => reply.status === 429)
        expect(limited.length).toBeGreaterThan(0)
        expectError(limited[0]!, 429, "rate_limited")
        expect(replies.every((reply) => reply.status === 200 || reply.status === 429)).toBe(true)
      })

      it("reports the index lag on /metrics and documents the call in OpenAPI", async () => {
        const metrics = await http.get("/metrics")
        expect(metrics.text).toMatch(/^harmony_search_index_lag_seconds(\{[^}]*\})? \d/m)
        const openapi = await http.get("/openapi.json")
        expect(Object.keys(openapi.body.paths["/v1/search"] ?? {})).toEqual(["get"])
      })
    })

    describe.concurrent("system endpoints", () => {
      it("GET /healthz answers 200", async () => {
        const reply = await http.get("/healthz")
        expectStatus(reply, 200)
        expect(reply.body).toEqual({ status: "ok" })
      })

      it('GET /readyz answers 200 {status:"ready"} with every check ok', async () => {
        const reply = await http.get("/readyz")
        expectStatus(reply, 200)
        expect(reply.body.status).toBe("ready")
        for (const outcome of Object.values(reply.body.checks ?? {})) expect(outcome).toBe("ok")
      })

      it("GET /openapi.json answers the OpenAPI document of the HTTP API", async () => {
        const reply = await http.get("/openapi.json")
        expectStatus(reply, 200)
        expect(reply.body.openapi).toMatch(/^3\./)
        expect(Object.keys(reply.body.paths)).toEqual(
          expect.arrayContaining(["/v1/auth/register", "/v1/chats/{chatId}", "/v1/me", "/v1/users"])
        )
        expect(Object.keys(reply.body.paths["/v1/auth/register"])).toContain("post")
        expect(Object.keys(reply.body.paths["/v1/chats/{chatId}"])).toEqual(
          expect.arrayContaining(["get", "patch", "delete"])
        )
      })

      it("GET /metrics answers 200 Prometheus text; GET /docs a page and its script", async () => {
        const metrics = await http.get("/metrics")
        expectStatus(metrics, 200)
        expect(metrics.headers.get("content-type") ?? "").toMatch(/^text\/plain/)
        expect(typeof metrics.body).toBe("string")
        const docs = await http.get("/docs")
        expectStatus(docs, 200)
        expect(docs.headers.get("content-type") ?? "").toMatch(/^text\/html/)
        // Scalar's script, read from effect's package when asked for.
        const script = await http.get("/docs/scalar.js")
        expectStatus(script, 200)
        expect(script.headers.get("content-type") ?? "").toMatch(/^text\/javascript/)
        expect(String(script.body)).toContain("createApiReference")
      })
    })

    it("SIGTERM drains and exits 0", async () => {
      const exit = await harmony!.stop("SIGTERM")
      expect(exit, harmony!.logs()).toEqual({ code: 0, signal: null })
      await expect(fetch(`${harmony!.url}/healthz`)).rejects.toThrow()
    })
  })
}
