/**
 * Helpers for the multi-node suite (cluster.test.ts): nodes with names,
 * accounts and chats over HTTP, polling with deadlines, and `ChatClient` —
 * a simulated real client over test/support/wsClient.ts that keeps its
 * subscriptions' positions across connections, retries unacknowledged sends
 * with the same clientMsgId, and reconnects elsewhere with `sinceSeq`.
 */
import { randomUUID } from "node:crypto"
import { expect } from "vitest"
import { type Api, api, type Harmony, type Reply, startHarmony } from "../support/harmony.ts"
import { type Frame, isMessage, type Message, WsClient } from "../support/wsClient.ts"

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export const range = (from: number, to: number) =>
  Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i)

export const expectStatus = (reply: Reply, status: number) => {
  expect(reply.status, `answered ${reply.status}: ${reply.text}`).toBe(status)
}

/** Polls `probe` until it answers something other than undefined; fails with `what` after `timeoutMs`. */
export const until = async <A>(
  what: string,
  probe: () => Promise<A | undefined> | A | undefined,
  options: { readonly timeoutMs?: number; readonly intervalMs?: number; readonly detail?: () => string } = {}
): Promise<A> => {
  const timeoutMs = options.timeoutMs ?? 30_000
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await probe()
      if (value !== undefined) return value
    } catch (error) {
      lastError = error
    }
    if (Date.now() > deadline) {
      const why = lastError instanceof Error ? ` (last error: ${lastError.message})` : ""
      throw new Error(
        `${what}: not within ${timeoutMs} ms${why}${options.detail === undefined ? "" : `\n${options.detail()}`}`
      )
    }
    await sleep(options.intervalMs ?? 200)
  }
}

// --- nodes --------------------------------------------------------------------------------------

/** The log line of the node that holds the outbox relay's advisory lock. */
export const RelayLine = "outbox relay: this node is the active relay"

export interface Node {
  readonly name: string
  readonly harmony: Harmony
  readonly url: string
  readonly http: Api
}

/** Env every node of the suite gets: sends are not what is rate limited here. */
// The broker's shortest group session: a killed node's partitions move after ~6 s.
export const nodeEnv: Record<string, string> = { RATE_LIMIT_SEND: "5000/5000", KAFKA_SESSION_TIMEOUT: "6 seconds" }

export const startNode = async (name: string, env: Record<string, string> = {}): Promise<Node> => {
  const harmony = await startHarmony({ mode: "cluster", env: { ...nodeEnv, ...env }, readyTimeoutMs: 120_000 })
  return { name, harmony, url: harmony.url, http: api(harmony.url) }
}

/** How often `line` occurs in the node's logs so far. */
export const occurrences = (node: Node, line: string) => node.harmony.logs().split(line).length - 1

/** The node's log lines that mention `needle` (the last `limit`), for failure messages. */
export const logLines = (node: Node, needle: string | RegExp, limit = 12) =>
  node.harmony
    .logs()
    .split("\n")
    .filter((line) => (typeof needle === "string" ? line.includes(needle) : needle.test(line)))
    .slice(-limit)
    .map((line) => `  [${node.name}] ${line.length > 400 ? `${line.slice(0, 400)}…` : line}`)
    .join("\n")

// --- accounts and chats -------------------------------------------------------------------------

export interface Account {
  readonly id: string
  readonly username: string
  readonly accessToken: string
}

const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}`
let counter = 0
export const password = "correct horse battery"

/** A fresh account (names unique per run: the services' Postgres is shared across runs and suites). */
export const register = async (http: Api, label: string): Promise<Account> => {
  const username = `${label}-${run}-${(counter++).toString(36)}`
  // Registrations are rate limited per address and other suites share the bucket: wait a 429 out.
  const deadline = Date.now() + 60_000
  for (;;) {
    const reply = await http.post("/v1/auth/register", { username, password })
    if (reply.status === 429 && Date.now() < deadline) {
      await sleep(1_000 * Number(reply.headers.get("retry-after") ?? "1"))
      continue
    }
    expectStatus(reply, 201)
    return { id: reply.body.user.id, username, accessToken: reply.body.accessToken }
  }
}

export const registerMany = (http: Api, count: number, label: string) =>
  Promise.all(Array.from({ length: count }, () => register(http, label)))

export const createGroup = async (http: Api, owner: Account, members: ReadonlyArray<Account>): Promise<string> => {
  const reply = await http.post(
    "/v1/chats",
    { name: `cluster ${run}`, kind: "group", memberIds: members.map((m) => m.id) },
    { token: owner.accessToken }
  )
  expectStatus(reply, 201)
  return reply.body.id as string
}

/** Every stored message of a chat, paging forward (oldest first). */
export const historyAll = async (http: Api, account: Account, chatId: string): Promise<Array<Message>> => {
  const all: Array<Message> = []
  let after = 0
  for (;;) {
    const reply = await http.get(`/v1/chats/${chatId}/messages?after=${after}&limit=100`, {
      token: account.accessToken
    })
    expectStatus(reply, 200)
    all.push(...reply.body.messages)
    if (reply.body.nextAfter === null) return all
    after = reply.body.nextAfter
  }
}

/** Opens an authenticated session on `base`. */
export const session = async (base: string, account: Account, opened: Set<WsClient>): Promise<WsClient> => {
  const { client, ready } = await WsClient.open(base, account.accessToken)
  opened.add(client)
  expect(ready).toMatchObject({ type: "ready", userId: account.id })
  return client
}

export const subscribe = async (client: WsClient, chatId: string, sinceSeq?: number): Promise<Frame> => {
  const answer = await client.request({ type: "subscribe", chatId, ...(sinceSeq === undefined ? {} : { sinceSeq }) })
  expect(answer, JSON.stringify(answer)).toMatchObject({ type: "subscribed", chatId })
  return answer
}

// --- a simulated real client --------------------------------------------------------------------

export interface Attempt {
  readonly chatId: string
  readonly clientMsgId: string
  readonly body: string
  readonly firstSentAt: number
  /** How many times it was sent (more than once: retried with the same clientMsgId). */
  sends: number
  /** The ack's id, once acknowledged. */
  id?: string
  ackedAt?: number
}

/** How one send request was answered: `ack`, an error frame's code, `closed` (the connection closed first) or `no answer` (timed out). */
export interface Answer {
  /** The node the request went to. */
  readonly node: string
  readonly sentAt: number
  readonly answeredAt: number
  readonly outcome: string
}

/**
 * One user's client: one connection at a time, subscribed to `chats`. When its
 * connection is lost it reconnects (to the node the test names) and
 * resubscribes each chat with `sinceSeq` = the last seq it saw there, then
 * retries every unacknowledged send with its clientMsgId.
 */
export class ChatClient {
  readonly connections: Array<{ readonly node: string; readonly ws: WsClient }> = []
  /** Every send, by clientMsgId, in the order they were first made. */
  readonly attempts = new Map<string, Attempt>()
  /** The `subscribed` answers of each (re)connection, in order. */
  readonly subscribeAnswers: Array<Array<Frame>> = []
  /** When each message id was first received (ms since epoch), across connections. */
  readonly receivedAt = new Map<string, number>()
  /** Every send request and its answer, in the order they were answered. */
  readonly answers: Array<Answer> = []
  /** The clientMsgIds of `attempts` not acknowledged yet (so that `pending` stays cheap under load). */
  private readonly unacked = new Set<string>()
  private reconnecting: Promise<void> | undefined

  readonly name: string
  readonly account: Account
  readonly chats: ReadonlyArray<string>
  private readonly opened: Set<WsClient>

  constructor(name: string, account: Account, chats: ReadonlyArray<string>, opened: Set<WsClient>) {
    this.name = name
    this.account = account
    this.chats = chats
    this.opened = opened
  }

  get ws(): WsClient {
    return this.connections.at(-1)!.ws
  }

  get node(): string {
    return this.connections.at(-1)!.node
  }

  /** The seqs of `chatId` delivered to this client, over all its connections, in arrival order. */
  delivered(chatId: string): Array<number> {
    return this.connections.flatMap(({ ws }) => ws.messages(chatId).map((m) => m.seq))
  }

  lastSeq(chatId: string): number {
    return this.delivered(chatId).at(-1) ?? 0
  }

  /** Connects to `node` and subscribes to every chat (with sinceSeq when `resume`). */
  async connect(node: { readonly name: string; readonly url: string }, resume: boolean): Promise<void> {
    const ws = await session(node.url, this.account, this.opened)
    ws.ws.on("message", (data, isBinary) => {
      if (isBinary) return
      const now = Date.now()
      try {
        const frame = JSON.parse(data.toString())
        if (frame?.type === "message" && !this.receivedAt.has(frame.message.id))
          this.receivedAt.set(frame.message.id, now)
      } catch {
        // not ours to judge here
      }
    })
    const since = new Map(this.chats.map((chatId) => [chatId, this.lastSeq(chatId)]))
    this.connections.push({ node: node.name, ws })
    const answers = await ws.requestAll(
      this.chats.map((chatId) => ({
        type: "subscribe",
        chatId,
        ...(resume ? { sinceSeq: since.get(chatId)! } : {})
      })),
      { timeoutMs: 30_000 }
    )
    for (const answer of answers) expect(answer, JSON.stringify(answer)).toMatchObject({ type: "subscribed" })
    this.subscribeAnswers.push(answers)
  }

  /** Reconnects to `node` (concurrent callers share one attempt), then retries the unacknowledged sends. */
  reconnect(node: { readonly name: string; readonly url: string }): Promise<void> {
    this.reconnecting ??= (async () => {
      await this.connect(node, true)
      await this.retryPending()
    })().finally(() => {
      this.reconnecting = undefined
    })
    return this.reconnecting
  }

  pending(): Array<Attempt> {
    return [...this.unacked].map((clientMsgId) => this.attempts.get(clientMsgId)!)
  }

  /** Sends (or resends) a message on the current connection; true when acknowledged. */
  async send(chatId: string, clientMsgId: string = randomUUID(), body?: string): Promise<boolean> {
    let attempt = this.attempts.get(clientMsgId)
    if (attempt === undefined) {
      attempt = { chatId, clientMsgId, body: body ?? `${this.name} ${clientMsgId}`, firstSentAt: Date.now(), sends: 0 }
      this.attempts.set(clientMsgId, attempt)
      this.unacked.add(clientMsgId)
    }
    const ws = this.ws
    if (!ws.isOpen) return false
    attempt.sends++
    const node = this.node
    const sentAt = Date.now()
    const answered = (outcome: string) => this.answers.push({ node, sentAt, answeredAt: Date.now(), outcome })
    try {
      const answer = await ws
        .request(
          { type: "send", chatId, clientMsgId, body: attempt.body },
          { timeoutMs: 30_000, what: `the ack of ${clientMsgId}` }
        )
        .catch((error: unknown) => {
          answered(error instanceof Error && error.message.includes("connection closed") ? "closed" : "no answer")
          throw error
        })
      answered(answer.type === "ack" ? "ack" : String(answer.code ?? answer.type))
      if (answer.type !== "ack") return false
      expect(answer.clientMsgId).toBe(clientMsgId)
      if (attempt.id !== undefined) expect(answer.id, "a retried send keeps its id").toBe(attempt.id)
      attempt.id = answer.id as string
      attempt.ackedAt ??= Date.now()
      this.unacked.delete(clientMsgId)
      return true
    } catch {
      return false
    }
  }

  /** Resends every unacknowledged message on the current connection. */
  async retryPending(): Promise<void> {
    await Promise.all(this.pending().map((attempt) => this.send(attempt.chatId, attempt.clientMsgId)))
  }

  /** Retries until every send is acknowledged (reconnecting to `node` if the connection is gone). */
  async settle(node: { readonly name: string; readonly url: string }, timeoutMs = 60_000): Promise<void> {
    await until(
      `${this.name}: every send acknowledged`,
      async () => {
        if (!this.ws.isOpen) await this.reconnect(node)
        if (this.pending().length === 0) return true
        await this.retryPending()
        return this.pending().length === 0 ? true : undefined
      },
      { timeoutMs, intervalMs: 500, detail: () => `pending: ${this.pending().length}` }
    )
  }

  /** Waits until `count` messages of `chatId` were delivered over all connections. */
  async waitDelivered(chatId: string, count: number, timeoutMs: number): Promise<void> {
    await until(
      `${this.name}: ${count} messages of ${chatId} delivered`,
      () => this.delivered(chatId).length >= count || undefined,
      {
        timeoutMs,
        intervalMs: 100,
        detail: () => `delivered: ${JSON.stringify(this.delivered(chatId))}`
      }
    )
  }
}

/** The messages of `chatId` a connection received (frames in arrival order). */
export const messagesOf = (ws: WsClient, chatId: string, from = 0) => ws.messages(chatId, from)

export { isMessage }
