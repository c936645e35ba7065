/**
 * The crash suite: embedded mode under kill -9. Several clients send into a
 * few chats as fast as the node acknowledges; the real binary is SIGKILLed at
 * a random moment and restarted on the same HARMONY_DATA_DIR, five times.
 * After every restart:
 *   - every acknowledged clientMsgId is in history exactly once, and seqs are
 *     contiguous from 1;
 *   - every message a subscriber saw live before the kill is in history
 *     under the same seq (a seq never names two messages);
 *   - a client resubscribing with the sinceSeq it had gets exactly what it
 *     missed, with recovered:true.
 *
 * The kill points come from a seed printed at the start (and before each
 * kill); `HARMONY_CRASH_SEED=<seed>` replays a run.
 */
import { randomUUID } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { type Api, api, type Harmony, startHarmony } from "../support/harmony.ts"
import { type Message, WsClient } from "../support/wsClient.ts"

const Rounds = 5
const Chats = 4
const Senders = 4
/** Sends each sender keeps in flight: enough to keep the node at its highest rate. */
const Window = 32

/** mulberry32: a small seeded generator, so a run's kill points can be replayed. */
const seeded = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Polls until `check` answers a value; fails with `what` after `timeoutMs`. */
const eventually = async <A>(what: string, check: () => Promise<A | undefined>, timeoutMs = 90_000): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(250)
  }
}

interface Account {
  readonly id: string
  readonly accessToken: string
}

describe("embedded mode survives kill -9", { timeout: 600_000 }, () => {
  const seed = Number(process.env.HARMONY_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31))
  const random = seeded(seed)
  // A kill 0.3–2.5 s into a round's sending: early ones catch the actors mid-replay, late ones a full backlog.
  const killPoints = Array.from({ length: Rounds }, () => Math.round(300 + random() * 2200))
  console.log(`crash suite: seed ${seed}, kill points (ms into each round) ${killPoints.join(", ")}`)

  const dataDir = mkdtempSync(join(tmpdir(), "harmony-crash-"))
  const env = { RATE_LIMIT_SEND: "1000000/1000000", RATE_LIMIT_REGISTER: "1000/1000" }
  let node: Harmony | undefined
  const clients = new Set<WsClient>()

  afterAll(async () => {
    for (const client of clients) client.terminate()
    await node?.stop("SIGKILL")
    rmSync(dataDir, { recursive: true, force: true })
  })

  const open = async (base: string, account: Account) => {
    const { client } = await WsClient.open(base, account.accessToken)
    clients.add(client)
    return client
  }

  const register = async (http: Api, label: string): Promise<Account> => {
    const reply = await http.post("/v1/auth/register", {
      username: `${label}-${randomUUID().slice(0, 8)}`,
      password: "correct horse battery"
    })
    expect(reply.status, reply.text).toBe(201)
    return { id: reply.body.user.id, accessToken: reply.body.accessToken }
  }

  /** Every message of the chat in history, oldest first. */
  const history = async (http: Api, account: Account, chatId: string): Promise<Array<Message>> => {
    const all: Array<Message> = []
    let after = 0
    for (;;) {
      const reply = await http.get(`/v1/chats/${chatId}/messages?after=${after}&limit=100`, {
        token: account.accessToken
      })
      expect(reply.status, reply.text).toBe(200)
      all.push(...reply.body.messages)
      if (reply.body.nextAfter === null) return all
      after = reply.body.nextAfter
    }
  }

  /**
   * Each sender sends into every chat in turn, keeping `Window` sends in
   * flight, until stopped; answers what was acknowledged, by chat.
   */
  const sendUntilKilled = (client: WsClient, chats: ReadonlyArray<string>, acked: Map<string, Set<string>>) => {
    const waiting = new Map<string, string>()
    let stopped = false
    let turn = 0
    const next = () => {
      if (stopped || client.ws.readyState !== client.ws.OPEN) return
      const chatId = chats[turn++ % chats.length]!
      const clientMsgId = randomUUID()
      waiting.set(clientMsgId, chatId)
      client.send({ type: "send", chatId, clientMsgId, body: `crash ${clientMsgId}` })
    }
    client.ws.on("message", (data) => {
      const frame = JSON.parse(data.toString())
      if (frame.type === "ack") {
        const chatId = waiting.get(frame.clientMsgId)
        if (chatId !== undefined) {
          waiting.delete(frame.clientMsgId)
          acked.get(chatId)!.add(frame.clientMsgId)
          next()
        }
      } else if (frame.type === "error") {
        // Not acknowledged, so nothing is promised about it; keep the window full.
        next()
      }
    })
    for (let i = 0; i < Window; i++) next()
    return () => {
      stopped = true
    }
  }

  it(`keeps every acknowledged message, exactly once, in seq order, across ${Rounds} kills`, async () => {
    node = await startHarmony({ mode: "embedded", dataDir, env })
    let http = api(node.url)
    const owner = await register(http, "crash-owner")
    const senders = await Promise.all(Array.from({ length: Senders }, (_, i) => register(http, `crash-s${i}`)))
    const chats: Array<string> = []
    for (let i = 0; i < Chats; i++) {
      const reply = await http.post(
        "/v1/chats",
        { name: `crash ${i}`, kind: "group", memberIds: senders.map((s) => s.id) },
        { token: owner.accessToken }
      )
      expect(reply.status, reply.text).toBe(201)
      chats.push(reply.body.id)
    }
    const acked = new Map(chats.map((chatId) => [chatId, new Set<string>()]))
    /** What subscribers saw live, by chat and seq: the message id that seq named. */
    const seenLive = new Map(chats.map((chatId) => [chatId, new Map<number, string>()]))
    /** The last seq a subscriber saw of each chat before the latest kill. */
    let lastSeen = new Map(chats.map((chatId) => [chatId, 0]))

    for (let round = 0; round < Rounds; round++) {
      const base = node.url
      // A watcher per chat, resubscribing with what it saw so far: it must get exactly what it missed.
      const watcher = await open(base, owner)
      for (const chatId of chats) {
        const since = lastSeen.get(chatId)!
        const from = watcher.mark()
        const answer = await watcher.request({ type: "subscribe", chatId, sinceSeq: since })
        expect(answer, JSON.stringify(answer)).toMatchObject({ type: "subscribed", chatId, recovered: true })
        const missed = answer.lastSeq - since
        const replayed = await watcher.waitForMessages(chatId, missed, { from, timeoutMs: 60_000 })
        expect(replayed.map((m) => m.seq)).toEqual(Array.from({ length: missed }, (_, i) => since + 1 + i))
      }
      const stops = await Promise.all(
        senders.map(async (sender) => sendUntilKilled(await open(base, sender), chats, acked))
      )

      console.log(`crash suite: round ${round + 1}/${Rounds}, SIGKILL in ${killPoints[round]} ms (seed ${seed})`)
      await sleep(killPoints[round]!)
      await node.stop("SIGKILL")
      for (const stop of stops) stop()
      for (const message of watcher.frames.filter((f) => f.type === "message").map((f) => f.message as Message)) {
        const before = seenLive.get(message.chatId)!.get(message.seq)
        expect(before === undefined || before === message.id, `seq ${message.seq} named two messages`).toBe(true)
        seenLive.get(message.chatId)!.set(message.seq, message.id)
      }
      lastSeen = new Map(chats.map((chatId) => [chatId, Math.max(0, ...seenLive.get(chatId)!.keys())]))
      for (const client of clients) client.terminate()
      clients.clear()

      node = await startHarmony({ mode: "embedded", dataDir, env })
      http = api(node.url)
      const sent = [...acked.values()].reduce((n, ids) => n + ids.size, 0)
      console.log(`crash suite: restarted after round ${round + 1}; ${sent} messages acknowledged so far`)

      for (const chatId of chats) {
        const want = acked.get(chatId)!
        // Replay after a restart takes a moment: wait until history holds every acknowledged message,
        // and everything subscribers saw live (sequenced, so in the log, acknowledged or not), and has
        // stopped growing (what was logged but never acknowledged is replayed too).
        let previous = -1
        const messages = await eventually(`every acknowledged message of chat ${chatId} in history`, async () => {
          const messages = await history(http, owner, chatId)
          const settled = messages.length === previous
          previous = messages.length
          const ids = new Set(messages.map((m) => m.clientMsgId))
          for (const id of want) if (!ids.has(id)) return undefined
          return settled && messages.length >= lastSeen.get(chatId)! ? messages : undefined
        })
        expect(messages.map((m) => m.seq)).toEqual(Array.from({ length: messages.length }, (_, i) => i + 1))
        expect(new Set(messages.map((m) => m.clientMsgId)).size, "a clientMsgId twice in history").toBe(messages.length)
        const bySeq = new Map(messages.map((m) => [m.seq, m.id]))
        for (const [seq, id] of seenLive.get(chatId)!) {
          expect(bySeq.get(seq), `seq ${seq} of chat ${chatId} seen live as ${id}`).toBe(id)
        }
      }
    }
    await node.stop("SIGKILL")
  })
})
