/**
 * The HTTP calls the load generator makes on Harmony (PROTOCOL.md "HTTP"):
 * registering the bench's users, creating its chats, reading each chat's
 * last persisted seq, and paging history to check that nothing acked was lost.
 */
import { sleep } from "./common.ts"

export interface Account {
  readonly id: string
  readonly token: string
}

interface HistoryMessage {
  readonly seq: number
  readonly clientMsgId: string
}

export class HttpError extends Error {}

export const makeHarmonyHttp = (url: string) => {
  const call = async <A>(method: string, path: string, token?: string, body?: unknown): Promise<A> => {
    for (let attempt = 1; ; attempt++) {
      const headers: Record<string, string> = {}
      if (token !== undefined) headers.authorization = `Bearer ${token}`
      if (body !== undefined) headers["content-type"] = "application/json"
      let status = 0
      let text = ""
      let retryAfter = 0
      try {
        const response = await fetch(`${url}${path}`, {
          method,
          headers,
          ...(body === undefined ? {} : { body: JSON.stringify(body) }),
          signal: AbortSignal.timeout(60_000)
        })
        status = response.status
        retryAfter = Number(response.headers.get("retry-after") ?? 1)
        text = await response.text()
        if (status >= 200 && status < 300) return (text === "" ? undefined : JSON.parse(text)) as A
      } catch (error) {
        text = String(error)
      }
      // 429 (the bench's setup outran a rate limit) waits as told.
      if (status === 429 && attempt < 100) {
        await sleep(1000 * (Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : 1))
        continue
      }
      // 503 (a dependency not answering yet) and network failures are retried a few times.
      if ((status === 0 || status === 503) && attempt < 5) {
        await sleep(500 * attempt)
        continue
      }
      throw new HttpError(`${method} ${path} answered ${status}: ${text.slice(0, 300)}`)
    }
  }

  const register = async (username: string): Promise<Account> => {
    const session = await call<{ user: { id: string }; accessToken: string }>("POST", "/v1/auth/register", undefined, {
      username,
      password: "bench-password-123"
    })
    return { id: session.user.id, token: session.accessToken }
  }

  const createChat = async (owner: Account, name: string, memberIds: ReadonlyArray<string>): Promise<string> => {
    const chat = await call<{ id: string }>("POST", "/v1/chats", owner.token, { kind: "group", name, memberIds })
    return chat.id
  }

  /** Each chat's last persisted seq, as the sink records it (GET /v1/me/chats). */
  const lastSeqs = async (account: Account): Promise<Map<string, number>> => {
    const { chats } = await call<{ chats: Array<{ id: string; lastSeq: number }> }>(
      "GET",
      "/v1/me/chats",
      account.token
    )
    return new Map(chats.map((chat) => [chat.id, chat.lastSeq]))
  }

  /** Every message of a chat, oldest first, paging with `after`. */
  const history = async (account: Account, chatId: string): Promise<Array<HistoryMessage>> => {
    const all: Array<HistoryMessage> = []
    let after = 0
    for (;;) {
      const page = await call<{ messages: Array<HistoryMessage>; nextAfter?: number | null }>(
        "GET",
        `/v1/chats/${chatId}/messages?after=${after}&limit=100`,
        account.token
      )
      for (const message of page.messages) all.push({ seq: message.seq, clientMsgId: message.clientMsgId })
      if (page.nextAfter === undefined || page.nextAfter === null) return all
      after = page.nextAfter
    }
  }

  return { register, createChat, lastSeqs, history }
}

/** Runs `task` over `items` with at most `concurrency` at once, in order of items. */
export const mapConcurrent = async <A, B>(
  items: ReadonlyArray<A>,
  concurrency: number,
  task: (item: A, index: number) => Promise<B>
): Promise<Array<B>> => {
  const results = new Array<B>(items.length)
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const index = next++
      results[index] = await task(items[index]!, index)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker))
  return results
}
