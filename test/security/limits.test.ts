/**
 * Limits on every kind of work, against the real `harmony serve` (embedded):
 * floods of each frame type end in `rate_limited` answers, then close 4029
 * (or 4400 for malformed input) — and the socket is gone soon after the close
 * frame, though the flood paused reading (it used to linger for ws's 30 s
 * close timeout) — while `/healthz` keeps answering; caps on sockets per user
 * and per address and on subscriptions per socket; chat creation and other
 * writes limited per user; read positions clamped to the chat's lastSeq; a
 * slow reader cut off with 4008; 2,000 idle sockets cut off at the
 * authentication deadline.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type WebSocket from "ws"
import { type Api, api, type Harmony, startHarmony } from "../support/harmony.ts"
import { type ClientFrame, type Frame, WsClient } from "../support/wsClient.ts"
import { type Account, accounts, connectFrom, eventually, session, uuid, whileProbing } from "./support.ts"

let harmony: Harmony
let http: Api
let register: (label: string) => Promise<Account>
let createGroup: (owner: Account, members: ReadonlyArray<Account>) => Promise<string>
const opened: Array<WsClient> = []

/** Well within what a socket's ws close handshake needs here, far below ws's 30 s close timeout. */
const GoneWithinMs = 10_000

beforeAll(async () => {
  harmony = await startHarmony({
    mode: "embedded",
    env: {
      RATE_LIMIT_SEND: "20/1",
      RATE_LIMIT_SUBSCRIBE: "50/5",
      RATE_LIMIT_READ: "50/5",
      RATE_LIMIT_CREATE_CHAT: "5/0.01",
      RATE_LIMIT_WRITE: "20/0.01",
      MAX_SOCKETS_PER_USER: "4",
      MAX_SOCKETS_PER_ADDRESS: "250",
      MAX_SUBSCRIPTIONS_PER_SOCKET: "3"
    }
  })
  http = api(harmony.url)
  ;({ register, createGroup } = accounts(http))
}, 120_000)

afterAll(async () => {
  await Promise.all(opened.map((client) => client.close()))
  if (harmony === undefined) return
  expect(await harmony.stop("SIGTERM"), harmony.logs()).toEqual({ code: 0, signal: null })
})

const open = async (account: Account) => {
  const client = await session(harmony, account)
  opened.push(client)
  return client
}

/** Sends every frame in one burst (one corked write): the server reads far faster than it handles them. */
const burst = (client: WsClient, frames: ReadonlyArray<ClientFrame | string>) => {
  client.socket.cork()
  for (const frame of frames) typeof frame === "string" ? client.sendRaw(frame) : client.send(frame)
  client.socket.uncork()
}

const isRateLimited = (frame: Frame) => frame.type === "error" && frame.code === "rate_limited"

describe("floods of each frame type", () => {
  const floods: Array<[string, (chatId: string, account: Account) => ClientFrame | string, number]> = [
    ["typing with random chat ids", () => ({ type: "typing", chatId: uuid() }), 4029],
    ["subscribe with random chat ids", () => ({ type: "subscribe", chatId: uuid() }), 4029],
    ["unsubscribe", () => ({ type: "unsubscribe", chatId: uuid() }), 4029],
    ["read with random chat ids", () => ({ type: "read", chatId: uuid(), seq: 1 }), 4029],
    ["ping", () => ({ type: "ping" }), 4029],
    ["auth (re-authentication)", (_, account) => ({ type: "auth", token: account.accessToken }), 4029],
    ["send", (chatId) => ({ type: "send", chatId, clientMsgId: uuid(), body: "flood" }), 4029],
    ["malformed JSON", () => "{not json", 4400],
    ["unknown frame types", () => ({ type: "launch_missiles" }), 4400]
  ]

  for (const [what, frame, code] of floods) {
    it(`${what}: answered, then closed with ${code}; the socket is gone soon after; /healthz answers throughout`, async () => {
      const [flooder, peer] = [await register("flood"), await register("flood")]
      const chatId = await createGroup(flooder, [peer])
      const client = await open(flooder)
      const probed = await whileProbing(harmony.url, async () => {
        const started = Date.now()
        burst(
          client,
          Array.from({ length: 600 }, () => frame(chatId, flooder))
        )
        const closed = await client.waitForClose(60_000)
        return { closed, elapsed: Date.now() - started }
      })
      expect(probed.result.closed.code, JSON.stringify(client.frames.slice(-3))).toBe(code)
      // The close handshake completed (the TCP connection is gone), well before ws's 30 s timeout.
      expect(probed.result.elapsed).toBeLessThan(GoneWithinMs)
      expect(client.socket.destroyed).toBe(true)
      if (code === 4029) expect(client.matching(isRateLimited).length).toBeGreaterThanOrEqual(1)
      expect(probed.failures, `slowest /healthz: ${probed.slowest} ms`).toEqual([])
      expect(probed.probes).toBeGreaterThanOrEqual(1)
      // The user can still connect and work (the limits are per connection, or refill).
      const again = await open(flooder)
      await again.ping()
      await again.close()
    }, 90_000)
  }
})

describe("caps", () => {
  it("subscriptions per socket: rate_limited past the cap, then 4029 if it keeps happening", async () => {
    const user = await register("subs")
    const chats = await Promise.all(Array.from({ length: 4 }, () => createGroup(user, [])))
    const client = await open(user)
    for (const chatId of chats.slice(0, 3))
      expect((await client.request({ type: "subscribe", chatId })).type).toBe("subscribed")
    expect(await client.request({ type: "subscribe", chatId: chats[3], ref: "over" })).toEqual({
      type: "error",
      code: "rate_limited",
      message: expect.stringContaining("3 subscriptions"),
      ref: "over"
    })
    // Resubscribing to one it has is fine; unsubscribing makes room.
    expect((await client.request({ type: "subscribe", chatId: chats[0], sinceSeq: 0 })).type).toBe("subscribed")
    expect((await client.request({ type: "unsubscribe", chatId: chats[0] })).type).toBe("unsubscribed")
    expect((await client.request({ type: "subscribe", chatId: chats[3] })).type).toBe("subscribed")
    // Insisting past the cap closes the connection.
    burst(
      client,
      Array.from({ length: 12 }, () => ({ type: "subscribe", chatId: chats[0] }))
    )
    expect((await client.waitForClose(30_000)).code).toBe(4029)
  }, 60_000)

  it("sockets per user: one past the cap is answered rate_limited and closed with 4029; closing one makes room", async () => {
    const user = await register("sockets")
    const clients = await Promise.all(Array.from({ length: 4 }, () => open(user)))
    const extra = await WsClient.connect(harmony.url)
    extra.send({ type: "auth", token: user.accessToken, ref: "a" })
    expect((await extra.waitForClose(30_000)).code).toBe(4029)
    expect(extra.matching(isRateLimited)).toEqual([
      { type: "error", code: "rate_limited", message: "too many connections for this user", ref: "a" }
    ])
    for (const client of clients) await client.ping()
    await clients[0]!.close()
    await eventually("room for another socket", async () => {
      const next = await WsClient.connect(harmony.url)
      next.send({ type: "auth", token: user.accessToken, ref: "a" })
      const answer = await next.waitFor((frame) => frame.ref === "a").catch(() => undefined)
      await next.close()
      return answer?.type === "ready"
    })
  }, 60_000)

  it("sockets per address: past the cap, a new socket is closed with 4029; other addresses are unaffected", async () => {
    const address = "127.0.0.5"
    const sockets: Array<WebSocket> = []
    try {
      for (let i = 0; i < 250; i++) sockets.push(await connectFrom(address, harmony.url))
      const extra = await connectFrom(address, harmony.url)
      const code = await new Promise<number>((resolve) => extra.once("close", (closeCode) => resolve(closeCode)))
      expect(code).toBe(4029)
      const elsewhere = await open(await register("address"))
      await elsewhere.ping()
    } finally {
      for (const socket of sockets) socket.terminate()
    }
  }, 120_000)

  it("2,000 idle sockets are cut off at the authentication deadline (4001) while the server keeps serving", async () => {
    const user = await register("idle")
    const probed = await whileProbing(harmony.url, async () => {
      const sockets: Array<WebSocket> = []
      const closes: Array<Promise<number>> = []
      // Ten client addresses, 200 sockets each (under the per-address cap).
      for (let a = 0; a < 10; a++) {
        const batch = await Promise.all(
          Array.from({ length: 200 }, () => connectFrom(`127.0.0.${10 + a}`, harmony.url))
        )
        for (const socket of batch) {
          sockets.push(socket)
          closes.push(new Promise((resolve) => socket.once("close", (code) => resolve(code))))
        }
      }
      // Meanwhile a real client works.
      const client = await open(user)
      await client.ping()
      const codes = await Promise.all(closes)
      await client.ping()
      return codes
    })
    expect(probed.result.length).toBe(2000)
    expect(new Set(probed.result)).toEqual(new Set([4001]))
    expect(probed.failures, `slowest /healthz: ${probed.slowest} ms`).toEqual([])
  }, 180_000)
})

describe("write limits", () => {
  it("chat creation is limited per user (429 with Retry-After); another user is not affected", async () => {
    const [user, other] = [await register("creator"), await register("creator")]
    const statuses = []
    for (let i = 0; i < 6; i++) {
      const reply = await http.post(
        "/v1/chats",
        { kind: "group", name: `c${i}`, memberIds: [] },
        { token: user.accessToken }
      )
      statuses.push(reply.status)
      if (reply.status === 429) {
        expect(reply.body).toEqual({ error: { code: "rate_limited", message: expect.any(String) } })
        expect(Number(reply.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
      }
    }
    expect(statuses).toEqual([201, 201, 201, 201, 201, 429])
    expect(
      (await http.post("/v1/chats", { kind: "group", name: "x", memberIds: [] }, { token: other.accessToken })).status
    ).toBe(201)
  }, 60_000)

  it("other writes (rename) are limited per user", async () => {
    const user = await register("writer")
    const chatId = await createGroup(user, [])
    const statuses = new Set<number>()
    for (let i = 0; i < 21; i++) {
      statuses.add((await http.patch(`/v1/chats/${chatId}`, { name: `n${i}` }, { token: user.accessToken })).status)
    }
    expect([...statuses].sort()).toEqual([200, 429])
  }, 60_000)
})

describe("read positions", () => {
  it("a read past the chat's lastSeq is clamped to it, over HTTP and WebSocket, and positions still move forward", async () => {
    const [reader, writer] = [await register("reader"), await register("reader")]
    const chatId = await createGroup(writer, [reader])
    const [readerClient, writerClient] = [await open(reader), await open(writer)]
    for (const client of [readerClient, writerClient]) await client.request({ type: "subscribe", chatId })
    expect((await writerClient.request({ type: "send", chatId, clientMsgId: uuid(), body: "one" })).type).toBe("ack")
    await readerClient.waitForSeq(chatId, 1)
    const lastReadSeq = async () => {
      const chats = await http.get("/v1/me/chats", { token: reader.accessToken })
      return chats.body.chats.find((chat: { id: string }) => chat.id === chatId)?.lastReadSeq as number
    }

    const from = writerClient.mark()
    expect(
      (await http.post(`/v1/chats/${chatId}/read`, { seq: Number.MAX_SAFE_INTEGER }, { token: reader.accessToken }))
        .status
    ).toBe(204)
    expect(await writerClient.waitFor((frame) => frame.type === "read", { from })).toEqual({
      type: "read",
      chatId,
      userId: reader.id,
      seq: 1
    })
    expect(await lastReadSeq()).toBe(1)
    readerClient.send({ type: "read", chatId, seq: 2 ** 40 })
    await readerClient.ping()
    expect(await lastReadSeq()).toBe(1)

    // The next message can still be marked read.
    expect((await writerClient.request({ type: "send", chatId, clientMsgId: uuid(), body: "two" })).type).toBe("ack")
    await readerClient.waitForSeq(chatId, 2)
    readerClient.send({ type: "read", chatId, seq: 2 })
    await writerClient.waitFor((frame) => frame.type === "read" && frame.seq === 2)
    await eventually("lastReadSeq 2", async () => (await lastReadSeq()) === 2)
  }, 60_000)
})

describe("a slow reader", () => {
  it("that stops reading while replays pile up is closed with 4008; the server stays healthy", async () => {
    const senders = await Promise.all(Array.from({ length: 6 }, () => register("slow")))
    const reader = await register("slow")
    const chatId = await createGroup(senders[0]!, [...senders.slice(1), reader])
    const clients = await Promise.all(senders.map(open))
    // 120 messages of ~12 KB: each replay from seq 0 is ~1.4 MB.
    const body = "€".repeat(4_000)
    await Promise.all(
      clients.map(async (client) => {
        for (let i = 0; i < 20; i++) {
          const answer = await client.request({ type: "send", chatId, clientMsgId: uuid(), body })
          if (answer.type !== "ack") throw new Error(`send answered ${JSON.stringify(answer)}`)
        }
      })
    )
    const slow = await open(reader)
    slow.pauseReading()
    const probed = await whileProbing(harmony.url, async () => {
      // Each subscribe from seq 0 replays everything: far more than the socket buffers and the 1 MiB allowed.
      burst(
        slow,
        Array.from({ length: 12 }, () => ({ type: "subscribe", chatId, sinceSeq: 0 }))
      )
      await eventually(
        "the server gave up on the slow reader",
        async () => {
          const reply = await http.get("/metrics")
          return /harmony_slow_consumer_disconnects_total\S* [1-9]/.test(reply.text)
        },
        120_000
      )
    })
    slow.resumeReading()
    expect((await slow.waitForClose(60_000)).code).toBe(4008)
    expect(probed.failures, `slowest /healthz: ${probed.slowest} ms`).toEqual([])
    await clients[0]!.ping()
  }, 180_000)
})
