/**
 * /metrics, black-box: a real `harmony serve` node is scraped before and
 * after exactly N messages, and the message path's counters must move by
 * exactly what was sent (deliveries: N × receiving sessions); the gauges
 * follow sessions opening and closing, errors answered over HTTP and
 * WebSocket count by contract code, rate-limit refusals by limit. Every
 * series follows Prometheus conventions and no label carries a chat or user
 * id. Embedded and cluster mode (one node, so it owns every partition).
 */
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Api, api, type Harmony, startHarmony } from "../support/harmony.ts"
import type { WsClient } from "../support/wsClient.ts"
import {
  createGroup,
  expectStatus,
  register,
  registerMany,
  type Sample,
  scrape,
  sendMessage,
  session,
  sleep,
  sum,
  until
} from "./support.ts"

/** The message path's counters, summed over their series. */
const counters = (samples: ReadonlyArray<Sample>) => ({
  accepted: sum(samples, "harmony_messages_accepted_total"),
  sequenced: sum(samples, "harmony_messages_sequenced_total"),
  persisted: sum(samples, "harmony_messages_persisted_total"),
  delivered: sum(samples, "harmony_messages_delivered_total"),
  latencies: sum(samples, "harmony_send_to_deliver_seconds_count"),
  batchedMessages: sum(samples, "harmony_sink_batch_size_sum")
})

/**
 * Waits until the node is quiet: nothing sequenced but unpersisted, no
 * consumer lag, the counters unchanged over a second (a cluster node may
 * replay records an earlier run left uncommitted). Answers the last scrape.
 */
const quiescent = async (base: string) => {
  let previous: string | undefined
  return until(
    "a quiet node",
    async () => {
      const { samples } = await scrape(base)
      const now = JSON.stringify(counters(samples))
      const idle =
        sum(samples, "harmony_sink_backlog_messages") === 0 &&
        sum(samples, "harmony_actor_mailbox_depth") === 0 &&
        sum(samples, "harmony_consumer_lag_records", { topic: "chat.messages" }) === 0
      const stable = idle && now === previous
      previous = now
      return stable ? samples : undefined
    },
    { timeoutMs: 60_000, intervalMs: 1_000 }
  )
}

const metricsSuite = (mode: "embedded" | "cluster") =>
  describe(`/metrics (${mode} mode)`, { timeout: 180_000 }, () => {
    let harmony: Harmony
    let http: Api
    const clients: Array<WsClient> = []

    beforeAll(async () => {
      harmony = await startHarmony({
        mode,
        // One user's sends: 30 at once pass, then 1 a second (the rate-limit test exceeds it on purpose).
        env: { RATE_LIMIT_SEND: "30/1" },
        readyTimeoutMs: 120_000
      })
      http = api(harmony.url)
    })

    afterAll(async () => {
      for (const client of clients) client.terminate()
      await harmony?.stop("SIGTERM")
    })

    it("the message path's counters move by exactly what was sent; sessions and latency follow", async () => {
      const N = 20
      const [a, b] = await registerMany(http, 2, "metrics")
      const chatId = await createGroup(http, a, [b])
      // Three receiving sessions: the sender's, and two of b's.
      const sa = await session(harmony.url, a, chatId)
      const sb1 = await session(harmony.url, b, chatId)
      const sb2 = await session(harmony.url, b, chatId)
      clients.push(sa, sb1, sb2)

      const before = await quiescent(harmony.url)
      const sessionsBefore = sum(before, "harmony_sessions_open")
      expect(sessionsBefore).toBeGreaterThanOrEqual(3)

      await Promise.all(Array.from({ length: N }, (_, i) => sendMessage(sa, chatId, `metric ${i}`)))
      for (const client of [sa, sb1, sb2]) await client.waitForMessages(chatId, N, { timeoutMs: 60_000 })
      const start = counters(before)
      await until(
        "N messages persisted",
        async () => (counters((await scrape(harmony.url)).samples).persisted >= start.persisted + N ? true : undefined),
        { timeoutMs: 60_000 }
      )
      // Nothing more may trickle in: the counters are exact, not "at least".
      const after = counters(await quiescent(harmony.url))
      expect(after.accepted - start.accepted).toBe(N)
      expect(after.sequenced - start.sequenced).toBe(N)
      expect(after.persisted - start.persisted).toBe(N)
      expect(after.batchedMessages - start.batchedMessages).toBe(N)
      expect(after.delivered - start.delivered).toBe(3 * N)
      // One send→deliver observation per socket write.
      expect(after.latencies - start.latencies).toBe(3 * N)

      const { samples } = await scrape(harmony.url)
      expect(sum(samples, "harmony_actors_active")).toBeGreaterThanOrEqual(1)
      expect(sum(samples, "harmony_consumer_lag_records", { group: "actors", topic: "chat.messages" })).toBe(0)
      // A session closing leaves the gauge.
      sb2.terminate()
      await until("the sessions gauge down by one", async () =>
        sum((await scrape(harmony.url)).samples, "harmony_sessions_open") === sessionsBefore - 1 ? true : undefined
      )
    })

    it("errors answered over HTTP and WebSocket count by contract code", async () => {
      const a = await register(http, "metrics-err")
      const client = await session(harmony.url, a)
      clients.push(client)
      const errors = (samples: ReadonlyArray<Sample>, code: string, transport: string) =>
        sum(samples, "harmony_errors_total", { code, transport })
      const before = (await scrape(harmony.url)).samples

      // WebSocket: a malformed frame (bad_request) and a chat that is not theirs (not_found).
      const malformed = await client.request({ type: "send", chatId: 42 })
      expect(malformed).toMatchObject({ type: "error", code: "bad_request" })
      const unknown = await client.request({ type: "subscribe", chatId: randomUUID() })
      expect(unknown).toMatchObject({ type: "error", code: "not_found" })
      // HTTP: no token (unauthorized), an unknown chat (not_found), twice.
      expectStatus(await http.get("/v1/me"), 401)
      expectStatus(await http.get(`/v1/chats/${randomUUID()}`, { token: a.accessToken }), 404)
      expectStatus(await http.get(`/v1/chats/${randomUUID()}`, { token: a.accessToken }), 404)

      const after = (await scrape(harmony.url)).samples
      expect(errors(after, "bad_request", "ws") - errors(before, "bad_request", "ws")).toBe(1)
      expect(errors(after, "not_found", "ws") - errors(before, "not_found", "ws")).toBe(1)
      expect(errors(after, "unauthorized", "http") - errors(before, "unauthorized", "http")).toBe(1)
      expect(errors(after, "not_found", "http") - errors(before, "not_found", "http")).toBe(2)
    })

    it("rate-limit refusals count by limit, exactly as the client saw them", async () => {
      const [a, b] = await registerMany(http, 2, "metrics-rl")
      const chatId = await createGroup(http, a, [b])
      const client = await session(harmony.url, a, chatId)
      clients.push(client)
      const before = (await scrape(harmony.url)).samples
      // 36 at once against a bucket of 30 refilling at 1/s: a few refused, fewer than the 10 in a row that close the session.
      const answers = await client.requestAll(
        Array.from({ length: 36 }, (_, i) => ({ type: "send", chatId, clientMsgId: randomUUID(), body: `burst ${i}` })),
        { timeoutMs: 60_000 }
      )
      const refused = answers.filter((frame) => frame.type === "error" && frame.code === "rate_limited").length
      expect(refused).toBeGreaterThan(0)
      await sleep(200)
      const after = (await scrape(harmony.url)).samples
      expect(
        sum(after, "harmony_rate_limited_total", { limit: "send" }) -
          sum(before, "harmony_rate_limited_total", { limit: "send" })
      ).toBe(refused)
      expect(
        sum(after, "harmony_errors_total", { code: "rate_limited", transport: "ws" }) -
          sum(before, "harmony_errors_total", { code: "rate_limited", transport: "ws" })
      ).toBe(refused)
    })

    it("every series follows Prometheus conventions; no label carries an id; the gauges of every stage are there", async () => {
      const [a, b] = await registerMany(http, 2, "metrics-names")
      const chatId = await createGroup(http, a, [b])
      const sa = await session(harmony.url, a, chatId)
      clients.push(sa)
      await sendMessage(sa, chatId)
      const { text, samples } = await scrape(harmony.url)
      const ours = samples.filter((sample) => sample.name.startsWith("harmony_"))
      for (const name of [
        "harmony_messages_accepted_total",
        "harmony_messages_sequenced_total",
        "harmony_messages_persisted_total",
        "harmony_messages_delivered_total",
        "harmony_send_to_deliver_seconds_bucket",
        "harmony_send_to_deliver_seconds_sum",
        "harmony_send_to_deliver_seconds_count",
        "harmony_consumer_lag_records",
        "harmony_actors_active",
        "harmony_actor_mailbox_depth",
        "harmony_sink_batch_size_bucket",
        "harmony_sink_retries_total",
        "harmony_sink_backlog_messages",
        "harmony_sessions_open",
        "harmony_slow_consumer_disconnects_total",
        "harmony_outbox_backlog_rows",
        "harmony_outbox_relay_lag_seconds",
        "harmony_outbox_published_total",
        "harmony_cache_lookups_total",
        "harmony_rate_limited_total"
      ]) {
        expect(
          ours.some((sample) => sample.name === name),
          `${name} in /metrics`
        ).toBe(true)
      }
      // Counters end in _total; histograms in their unit; every metric has HELP and TYPE.
      for (const match of text.matchAll(/^# TYPE (harmony_\S+) (\S+)$/gm)) {
        const [, name, type] = match
        if (type === "counter") expect(name, `${name} is a counter`).toMatch(/_total$/)
        if (type === "histogram") expect(name, `${name} is a histogram`).toMatch(/_(seconds|size)$/)
        expect(text.includes(`# HELP ${name} `), `HELP for ${name}`).toBe(true)
      }
      // Bounded labels: none is an id of any kind.
      const allowed = new Set(["code", "transport", "result", "limit", "group", "topic", "partition", "stage", "le"])
      for (const sample of ours) {
        for (const [label, value] of Object.entries(sample.labels)) {
          expect(allowed.has(label), `label ${label} of ${sample.name}`).toBe(true)
          expect([a.id, b.id, chatId].includes(value), `${sample.name}{${label}} carries an id`).toBe(false)
        }
      }
    })
  })

metricsSuite("embedded")
metricsSuite("cluster")
