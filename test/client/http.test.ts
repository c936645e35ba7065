/**
 * The SDK's HTTP calls, derived from the server's HttpApi, over an injected
 * `fetch` that answers what a real network and a misbehaving proxy can:
 * what goes on the wire (routes, bearer only where the contract asks for it,
 * no trace headers, requests left for the server to judge), and how every
 * answer off the happy path becomes a `HarmonyError` with the contract's code.
 */
import { afterEach, describe, expect, it } from "vitest"
import { createClient, type HarmonyClient } from "../../src/client/index.ts"

interface Sent {
  readonly method: string
  readonly url: string
  readonly headers: Headers
  readonly body: string | undefined
}

const user = { id: "u-1", username: "ada", displayName: "Ada" }
const session = (accessToken: string) => ({ user, accessToken, refreshToken: `refresh-${accessToken}`, expiresIn: 900 })
const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } })

/** A fetch that records every request and answers with `answer`. */
const fakeFetch = (answer: (sent: Sent) => Response | Promise<Response>) => {
  const sent: Array<Sent> = []
  const fetch = async (input: RequestInfo | URL, init?: RequestInit) => {
    const request = new Request(input, init)
    const record = {
      method: request.method,
      url: request.url,
      headers: request.headers,
      body: request.body === null ? undefined : await request.text()
    }
    sent.push(record)
    return answer(record)
  }
  return { sent, fetch: fetch as typeof globalThis.fetch }
}

const clients: Array<HarmonyClient> = []
const make = (fetch: typeof globalThis.fetch) => {
  const client = createClient({ baseUrl: "http://harmony.test/", fetch })
  clients.push(client)
  return client
}
const rejection = (promise: Promise<unknown>) =>
  promise.then(
    () => {
      throw new Error("expected a rejection")
    },
    (error: unknown) => error
  )

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()))
})

describe("the SDK's HTTP calls", () => {
  it("send the contract's routes, the bearer only where the contract asks for it, and no trace headers", async () => {
    const { sent, fetch } = fakeFetch((request) =>
      request.url.endsWith("/v1/auth/login") ? json(200, session("a1")) : json(200, { messages: [], nextBefore: null })
    )
    const client = make(fetch)
    await client.login({ username: "ada", password: "correct horse battery" })
    await client.history("chat/1", { limit: 500, after: 3 })

    const [login, history] = sent
    expect(login).toMatchObject({ method: "POST", url: "http://harmony.test/v1/auth/login" })
    expect(JSON.parse(login?.body ?? "")).toEqual({ username: "ada", password: "correct horse battery" })
    expect(login?.headers.get("authorization")).toBeNull()
    expect(history?.method).toBe("GET")
    // The server judges requests (limit is 1 to 100 there): the SDK sends what it was given.
    const url = new URL(history?.url ?? "")
    expect(url.pathname).toBe("/v1/chats/chat%2F1/messages")
    expect(Object.fromEntries(url.searchParams)).toEqual({ limit: "500", after: "3" })
    expect(history?.headers.get("authorization")).toBe("Bearer a1")
    for (const request of sent) {
      expect(request.headers.get("traceparent")).toBeNull()
      expect(request.headers.get("b3")).toBeNull()
    }
  })

  it("refreshes once on a 401 and retries with the new token", async () => {
    const { sent, fetch } = fakeFetch((request) => {
      if (request.url.endsWith("/v1/auth/login")) return json(200, session("old"))
      if (request.url.endsWith("/v1/auth/refresh")) return json(200, session("new"))
      return request.headers.get("authorization") === "Bearer new"
        ? json(200, user)
        : json(401, { error: { code: "unauthorized", message: "token expired" } })
    })
    const client = make(fetch)
    await client.login({ username: "ada", password: "correct horse battery" })
    expect(await client.me()).toMatchObject(user)
    expect(sent.map((request) => new URL(request.url).pathname)).toEqual([
      "/v1/auth/login",
      "/v1/me",
      "/v1/auth/refresh",
      "/v1/me"
    ])
    expect(JSON.parse(sent[2]?.body ?? "")).toEqual({ refreshToken: "refresh-old" })
  })

  it("answer every failure as a HarmonyError with the contract's code and the HTTP status", async () => {
    let next: () => Response | Promise<Response> = () => json(200, session("a1"))
    const client = make(fakeFetch(() => next()).fetch)
    await client.login({ username: "ada", password: "correct horse battery" })

    next = () => json(429, { error: { code: "rate_limited", message: "slow down" } }, { "retry-after": "7" })
    expect(await rejection(client.chats())).toMatchObject({
      _tag: "HarmonyError",
      code: "rate_limited",
      status: 429,
      retryAfterSeconds: 7
    })
    // A proxy's page, not the contract's body.
    next = () => new Response("<html>bad gateway</html>", { status: 502 })
    expect(await rejection(client.chats())).toMatchObject({ code: "internal", status: 502 })
    next = () => new Response("", { status: 503 })
    expect(await rejection(client.chats())).toMatchObject({ code: "unavailable", status: 503 })
    // A code from a newer server.
    next = () => json(418, { error: { code: "teapot", message: "short and stout" } })
    expect(await rejection(client.chats())).toMatchObject({ code: "internal", status: 418 })
    // A 2xx off the contract.
    next = () => json(200, { chats: "none" })
    expect(await rejection(client.chats())).toMatchObject({ code: "internal" })
    // A captive portal's page: an answer, just not the contract's.
    next = () => new Response("<html>sign in</html>", { status: 200, headers: { "content-type": "text/html" } })
    expect(await rejection(client.chats())).toMatchObject({ code: "internal" })
    // A status the contract does not declare for this call (chats answers 200).
    next = () => json(201, { chats: [] })
    expect(await rejection(client.chats())).toMatchObject({ code: "internal" })
    // An answer that breaks off.
    next = () =>
      new Response(
        new ReadableStream({
          start: (controller) => {
            controller.enqueue(new TextEncoder().encode('{"cha'))
            controller.error(new Error("connection reset"))
          }
        }),
        { status: 200, headers: { "content-type": "application/json" } }
      )
    expect(await rejection(client.chats())).toMatchObject({ code: "network" })
    // No answer at all.
    next = () => Promise.reject(new TypeError("fetch failed"))
    const network = await rejection(client.chats())
    expect(network).toMatchObject({ code: "network" })
    expect((network as { transient: boolean }).transient).toBe(true)
  })
})
