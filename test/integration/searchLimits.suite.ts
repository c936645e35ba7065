/**
 * The search match limit through the real `harmony serve` (docs/protocol.md
 * "Search", "Limits"): with SEARCH_MAX_MATCHES=3, a word in four of the
 * caller's messages answers 400 with the documented message, while narrower
 * words, and one chat holding fewer, are searched as usual. (The limit itself,
 * and the statement timeout, on Postgres and PGlite: test/state/searchLimits.test.ts.)
 */
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Api, api, type Harmony, type Reply, startHarmony } from "../support/harmony.ts"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const expectStatus = (reply: Reply, status: number) => {
  expect(reply.status, `answered ${reply.status}: ${reply.text}`).toBe(status)
}

export const searchLimitsSuite = (mode: "embedded" | "cluster") => {
  describe(`search limits (${mode} mode)`, { timeout: 120_000 }, () => {
    let harmony: Harmony | undefined
    let http: Api
    const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}`

    beforeAll(async () => {
      harmony = await startHarmony({ mode, env: { SEARCH_MAX_MATCHES: "3" } })
      http = api(harmony.url)
    })

    afterAll(async () => {
      if (harmony === undefined) return
      expect(await harmony.stop("SIGTERM"), harmony.logs()).toEqual({ code: 0, signal: null })
    })

    it("a word in more than SEARCH_MAX_MATCHES of the caller's messages answers 400; narrower searches are served", async () => {
      const registered = await http.post("/v1/auth/register", {
        username: `lim-${run}`,
        password: "correct horse battery"
      })
      expectStatus(registered, 201)
      const token = registered.body.accessToken as string
      const chat = async () => {
        const reply = await http.post("/v1/chats", { kind: "group", memberIds: [] }, { token })
        expectStatus(reply, 201)
        return reply.body.id as string
      }
      const [busy, quiet] = [await chat(), await chat()]
      const word = `plentiful${run}`
      const bodies: Array<[string, string]> = [
        [busy, `${word} one`],
        [busy, `${word} two`],
        [busy, `${word} three`],
        [quiet, `${word} four`]
      ]
      for (const [chatId, body] of bodies) {
        const sent = await http.post(`/v1/chats/${chatId}/messages`, { clientMsgId: randomUUID(), body }, { token })
        expectStatus(sent, 202)
      }
      const search = (query: string) => http.get(`/v1/search?${query}`, { token })
      // Once all four are indexed the word matches more than three of the caller's messages.
      const deadline = Date.now() + 60_000
      let reply = await search(`q=${word}`)
      while (reply.status === 200 && Date.now() < deadline) {
        await sleep(100)
        reply = await search(`q=${word}`)
      }
      expectStatus(reply, 400)
      expect(reply.body).toEqual({
        error: { code: "bad_request", message: "q matches more than 3 messages: add words, or search one chat" }
      })
      // One chat holds three: served; so are narrower words.
      const inBusy = await search(`q=${word}&chatId=${busy}`)
      expectStatus(inBusy, 200)
      expect(inBusy.body.hits).toHaveLength(3)
      const narrower = await search(`q=${encodeURIComponent(`${word} four`)}`)
      expectStatus(narrower, 200)
      expect(narrower.body.hits.map((hit: { chatId: string }) => hit.chatId)).toEqual([quiet])
      // Operators see the refusals.
      const metrics = await http.get("/metrics")
      expect(metrics.text).toMatch(/^harmony_search_refused_total\{[^}]*reason="too_many_matches"[^}]*\} [1-9]/m)
    })
  })
}
