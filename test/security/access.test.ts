/**
 * Access and input as an attacker tries them, against the real `harmony
 * serve` (embedded): no token and non-members on every call and frame get
 * the contract's answer (401; 404 `not_found`, indistinguishable from an
 * unknown chat) and change nothing; malformed and oversized input of every
 * kind gets 400 / 413 over HTTP, `bad_request` then 4400 or 1009 over
 * WebSocket, and the server stays healthy.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Api, api, type Harmony, type Reply, startHarmony } from "../support/harmony.ts"
import { type ClientFrame, WsClient } from "../support/wsClient.ts"
import { type Account, accounts, session, uuid } from "./support.ts"

let harmony: Harmony
let http: Api
let register: (label: string) => Promise<Account>
let createGroup: (owner: Account, members: ReadonlyArray<Account>) => Promise<string>
let owner: Account
let member: Account
let outsider: Account
let chatId: string

beforeAll(async () => {
  harmony = await startHarmony({ mode: "embedded" })
  http = api(harmony.url)
  ;({ register, createGroup } = accounts(http))
  ;[owner, member, outsider] = [await register("owner"), await register("member"), await register("outsider")]
  chatId = await createGroup(owner, [member])
  const reply = await http.post(
    `/v1/chats/${chatId}/messages`,
    { clientMsgId: uuid(), body: "secret" },
    { token: owner.accessToken }
  )
  expect(reply.status, reply.text).toBe(202)
}, 120_000)

afterAll(async () => {
  if (harmony === undefined) return
  expect(await harmony.stop("SIGTERM"), harmony.logs()).toEqual({ code: 0, signal: null })
})

/** Every call on a chat, as (what, request with the caller's token). */
const chatCalls = (id: string, target: string): Array<[string, (token?: string) => Promise<Reply>]> => {
  const as = (token?: string) => (token === undefined ? {} : { token })
  return [
    ["GET chat", (t) => http.get(`/v1/chats/${id}`, as(t))],
    ["PATCH chat", (t) => http.patch(`/v1/chats/${id}`, { name: "taken over" }, as(t))],
    ["DELETE chat", (t) => http.delete(`/v1/chats/${id}`, as(t))],
    ["POST members", (t) => http.post(`/v1/chats/${id}/members`, { userIds: [outsider.id] }, as(t))],
    ["DELETE member", (t) => http.delete(`/v1/chats/${id}/members/${target}`, as(t))],
    ["GET messages", (t) => http.get(`/v1/chats/${id}/messages?after=0`, as(t))],
    ["POST messages", (t) => http.post(`/v1/chats/${id}/messages`, { clientMsgId: uuid(), body: "hi" }, as(t))],
    ["POST read", (t) => http.post(`/v1/chats/${id}/read`, { seq: 1 }, as(t))],
    ["GET read", (t) => http.get(`/v1/chats/${id}/read`, as(t))]
  ]
}

describe("access", () => {
  it("without a token, every authenticated call answers 401", async () => {
    const calls: Array<[string, () => Promise<Reply>]> = [
      ...chatCalls(chatId, member.id).map(([what, call]): [string, () => Promise<Reply>] => [what, () => call()]),
      ["GET me", () => http.get("/v1/me")],
      ["DELETE me", () => http.delete("/v1/me")],
      ["GET me/chats", () => http.get("/v1/me/chats")],
      ["GET users", () => http.get("/v1/users?q=a")],
      ["GET user", () => http.get(`/v1/users/${owner.id}`)],
      ["POST chats", () => http.post("/v1/chats", { kind: "group", name: "x", memberIds: [] })]
    ]
    for (const [what, call] of calls) {
      const reply = await call()
      expect.soft(reply.status, `${what}: ${reply.text}`).toBe(401)
      expect.soft(reply.body?.error?.code, what).toBe("unauthorized")
    }
  }, 60_000)

  it("a non-member gets 404 not_found on every chat call, as for an unknown chat, and changes nothing", async () => {
    const unknown = uuid()
    for (const [what, call] of chatCalls(chatId, member.id)) {
      const reply = await call(outsider.accessToken)
      expect.soft(reply.status, `${what}: ${reply.text}`).toBe(404)
      expect.soft(reply.body?.error?.code, what).toBe("not_found")
    }
    for (const [what, call] of chatCalls(unknown, member.id)) {
      const reply = await call(outsider.accessToken)
      expect.soft(reply.status, `${what} (unknown chat): ${reply.text}`).toBe(404)
    }
    const chat = await http.get(`/v1/chats/${chatId}`, { token: owner.accessToken })
    expect(chat.body.name).toBe("security")
    expect(chat.body.members.map((m: { userId: string }) => m.userId).sort()).toEqual([owner.id, member.id].sort())
    const history = await http.get(`/v1/chats/${chatId}/messages?after=0`, { token: member.accessToken })
    expect(history.body.messages.map((m: { body: string }) => m.body)).toEqual(["secret"])
  }, 60_000)

  it("a non-member gets not_found for every frame about the chat, and sees nothing of it", async () => {
    const watcher = await session(harmony, member)
    expect((await watcher.request({ type: "subscribe", chatId })).type).toBe("subscribed")
    const stranger = await session(harmony, outsider)
    const frames: Array<[string, ClientFrame]> = [
      ["subscribe", { type: "subscribe", chatId }],
      ["subscribe since 0", { type: "subscribe", chatId, sinceSeq: 0 }],
      ["send", { type: "send", chatId, clientMsgId: uuid(), body: "intruder" }],
      ["typing", { type: "typing", chatId }],
      ["read", { type: "read", chatId, seq: 1 }]
    ]
    for (const [what, frame] of frames) {
      expect.soft(await stranger.request({ ...frame, ref: what }), what).toEqual({
        type: "error",
        code: "not_found",
        message: expect.any(String),
        ref: what
      })
    }
    expect((await stranger.request({ type: "unsubscribe", chatId })).type).toBe("unsubscribed")
    await stranger.ping()
    await watcher.ping()
    expect(
      stranger.matching(
        (frame) =>
          frame.type === "message" ||
          (frame.chatId === chatId && frame.type !== "unsubscribed" && frame.type !== "error")
      )
    ).toEqual([])
    expect(watcher.matching((frame) => frame.userId === outsider.id || frame.type === "message")).toEqual([])
    await Promise.all([watcher.close(), stranger.close()])
  }, 60_000)
})

describe("malformed and oversized input", () => {
  it("every body-taking call answers 400 to malformed JSON, wrong types and missing fields, and 413 past 64 KiB", async () => {
    const token = owner.accessToken
    const calls: Array<[string, string, boolean]> = [
      ["/v1/auth/register", "POST", false],
      ["/v1/auth/login", "POST", false],
      ["/v1/auth/refresh", "POST", false],
      ["/v1/auth/logout", "POST", false],
      ["/v1/chats", "POST", true],
      [`/v1/chats/${chatId}`, "PATCH", true],
      [`/v1/chats/${chatId}/members`, "POST", true],
      [`/v1/chats/${chatId}/messages`, "POST", true],
      [`/v1/chats/${chatId}/read`, "POST", true]
    ]
    const bodies: Array<[string, string]> = [
      ["not JSON", "{nope"],
      ["an array", "[]"],
      ["null", "null"],
      [
        "wrong types",
        JSON.stringify({
          username: 1,
          password: [],
          name: {},
          userIds: "x",
          body: 5,
          seq: "1",
          refreshToken: 3,
          kind: 1,
          memberIds: 2,
          clientMsgId: []
        })
      ],
      ["deep nesting", `${"[".repeat(5000)}${"]".repeat(5000)}`]
    ]
    const send = (path: string, method: string, body: string, authed: boolean, headers: Record<string, string> = {}) =>
      fetch(`${harmony.url}${path}`, {
        method,
        body,
        headers: {
          "content-type": "application/json",
          ...(authed ? { authorization: `Bearer ${token}` } : {}),
          ...headers
        }
      }).then(async (response) => ({ status: response.status, text: await response.text() }))
    for (const [path, method, authed] of calls) {
      for (const [what, body] of bodies) {
        const reply = await send(path, method, body, authed)
        expect.soft(reply.status, `${method} ${path} with ${what}: ${reply.text}`).toBe(400)
      }
      const huge = await send(path, method, JSON.stringify({ body: "x".repeat(70 * 1024) }), authed)
      expect.soft(huge.status, `${method} ${path} over 64 KiB: ${huge.text}`).toBe(413)
      const text = await send(path, method, "hello", authed, { "content-type": "text/plain" })
      expect.soft(text.status, `${method} ${path} as text/plain: ${text.text}`).toBe(400)
    }
    const queries = ["limit=0", "limit=101", "limit=abc", "after=-1", "before=1.5", "after=1e400"]
    for (const query of queries) {
      const reply = await http.get(`/v1/chats/${chatId}/messages?${query}`, { token })
      expect.soft(reply.status, `history ?${query}: ${reply.text}`).toBe(400)
    }
    const badIds = await http.get(`/v1/chats/${"x".repeat(200)}`, { token })
    expect([400, 404]).toContain(badIds.status)
    expect((await fetch(`${harmony.url}/healthz`)).status).toBe(200)
  }, 120_000)

  it("every kind of malformed frame is answered bad_request (with its ref); a frame over 64 KiB closes with 1009", async () => {
    const client = await session(harmony, owner)
    const frames: Array<[string, string]> = [
      ["not JSON", "{nope"],
      ["a string", '"hello"'],
      ["null", "null"],
      ["no type", JSON.stringify({ ref: "r" })],
      ["unknown type", JSON.stringify({ type: "admin", ref: "r" })],
      ["a body too long", JSON.stringify({ type: "send", chatId, clientMsgId: "c", body: "x".repeat(4001), ref: "r" })],
      ["an empty body", JSON.stringify({ type: "send", chatId, clientMsgId: "c", body: "", ref: "r" })],
      ["a negative seq", JSON.stringify({ type: "read", chatId, seq: -1, ref: "r" })],
      ["a fractional seq", JSON.stringify({ type: "subscribe", chatId, sinceSeq: 0.5, ref: "r" })],
      ["a chat id with control characters", JSON.stringify({ type: "typing", chatId: "a\u0001b", ref: "r" })],
      ["a ref too long", JSON.stringify({ type: "ping", ref: "r".repeat(129) })],
      ["deep nesting", `${"[".repeat(5000)}${"]".repeat(5000)}`]
    ]
    // Four at a time, then a good frame: five malformed in a row would close the connection (4400).
    for (let i = 0; i < frames.length; i += 4) {
      for (const [what, raw] of frames.slice(i, i + 4)) {
        const from = client.mark()
        client.sendRaw(raw)
        const answer = await client.waitFor((frame) => frame.type === "error", { from, what })
        expect.soft(answer.code, what).toBe("bad_request")
      }
      await client.ping()
    }
    const from = client.mark()
    client.sendRaw(Buffer.from([1, 2, 3]), { binary: true })
    expect((await client.waitFor((frame) => frame.type === "error", { from })).code).toBe("bad_request")
    client.sendRaw(JSON.stringify({ type: "ping", ref: "x".repeat(65 * 1024) }))
    expect((await client.waitForClose(30_000)).code).toBe(1009)
    const fresh = await WsClient.open(harmony.url, owner.accessToken)
    await fresh.client.ping()
    await fresh.client.close()
  }, 60_000)
})
