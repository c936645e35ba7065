/**
 * The message path with its OTLP collector down, black-box: a node exports
 * (often: short intervals) to a collector that refuses connections (a closed
 * port), one that accepts them and never answers (a hung or blackholed
 * collector), and one that answers 503. Messages must still flow — every send
 * acked, every message delivered, no send waiting on an exporter — the log
 * must stay quiet (no error spam), and the node must still stop promptly
 * (exporters flush with a bound).
 *
 * `npm run bench -- --otel compare` measures the same against a run without
 * OTLP (docs/benchmarks.md).
 */
import { randomUUID } from "node:crypto"
import { createServer as createHttpServer } from "node:http"
import { createServer as createNetServer, type Server, type Socket } from "node:net"
import { afterAll, describe, expect, it } from "vitest"
import { api, freePort, startHarmony } from "../support/harmony.ts"
import type { WsClient } from "../support/wsClient.ts"
import {
  createGroup,
  fastExportEnv,
  registerMany,
  sendMessage,
  session,
  sleep,
  startOtlpReceiver,
  until
} from "./support.ts"

/** A collector that accepts connections, reads what comes and never answers a byte. */
const startHungCollector = async () => {
  const sockets = new Set<Socket>()
  let most = 0
  const server: Server = createNetServer((socket) => {
    sockets.add(socket)
    most = Math.max(most, sockets.size)
    socket.on("close", () => sockets.delete(socket))
    socket.on("error", () => {})
    socket.resume()
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as { port: number }).port
  return {
    url: `http://127.0.0.1:${port}`,
    /** The most connections open at once so far. */
    mostConnections: () => most,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      })
  }
}

/** A collector that answers every export with 503. */
const startFailingCollector = async () => {
  let requests = 0
  const server = createHttpServer((request, response) => {
    requests++
    request.resume()
    request.on("end", () => {
      response.writeHead(503, { "content-type": "text/plain" })
      response.end("unavailable")
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as { port: number }).port
  return {
    url: `http://127.0.0.1:${port}`,
    requests: () => requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}

/** The exporters' request timeout here: longer than the harness waits for a stopping node. */
const ExportTimeoutMs = 30_000

/**
 * Runs a node exporting to `endpoint`, sends `rounds` bursts of messages over
 * ~15 s (past the exporters' first failures, retries and back-off), and
 * checks that everything flowed and the log stayed quiet.
 */
const messagesFlow = async (mode: "embedded" | "cluster", endpoint: string) => {
  const harmony = await startHarmony({
    mode,
    env: {
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_SERVICE_NAME: "collector-down",
      OTEL_BSP_SCHEDULE_DELAY: "100",
      OTEL_METRIC_EXPORT_INTERVAL: "200",
      OTEL_BLRP_SCHEDULE_DELAY: "100",
      // A hung collector holds each export this long: a send that waited on an exporter would take as long.
      OTEL_EXPORTER_OTLP_TIMEOUT: String(ExportTimeoutMs),
      RATE_LIMIT_SEND: "5000/5000"
    },
    readyTimeoutMs: 120_000
  })
  const clients: Array<WsClient> = []
  try {
    const http = api(harmony.url)
    const [a, b] = await registerMany(http, 2, "otel-down")
    const chatId = await createGroup(http, a, [b])
    const sender = await session(harmony.url, a, chatId)
    const receiver = await session(harmony.url, b, chatId)
    clients.push(sender, receiver)

    const rounds = 15
    const perRound = 20
    const ackMs: Array<number> = []
    for (let round = 0; round < rounds; round++) {
      const answers = await Promise.all(
        Array.from({ length: perRound }, async (_, i) => {
          const sentAt = performance.now()
          const answer = await sender.request(
            { type: "send", chatId, clientMsgId: randomUUID(), body: `round ${round} #${i}` },
            { timeoutMs: ExportTimeoutMs }
          )
          ackMs.push(performance.now() - sentAt)
          return answer
        })
      )
      for (const answer of answers) expect(answer, JSON.stringify(answer)).toMatchObject({ type: "ack" })
      await sleep(1_000)
    }
    const total = rounds * perRound
    const delivered = await receiver.waitForMessages(chatId, total, { timeoutMs: 30_000 })
    expect(delivered.map((m) => m.seq)).toEqual(Array.from({ length: total }, (_, i) => i + 1))

    // No send waited on an exporter: that would take the export's timeout, far beyond a busy machine's worst.
    expect(Math.max(...ackMs), `ack times ${JSON.stringify(ackMs)}`).toBeLessThan(ExportTimeoutMs / 2)

    // Quiet: the exporters' failures are not the operator's error log.
    const lines = harmony.logs().split("\n")
    const loud = lines.filter(
      // (Embedded mode warns once, at start, that it generated its development JWT secret.)
      (line) => /"level":"(ERROR|FATAL|WARN)"/.test(line) && !line.includes("development JWT secret")
    )
    expect(loud, loud.join("\n")).toEqual([])
    expect(lines.length, "log lines").toBeLessThan(40)
  } finally {
    for (const client of clients) client.terminate()
    // The exporters' final flush is bounded (3 s), whatever the collector does: the node
    // exits by itself, well before the harness's SIGKILL after SHUTDOWN_TIMEOUT (20 s) —
    // an export that waited on the hung collector would take ExportTimeoutMs.
    const exit = await harmony.stop("SIGTERM")
    expect(exit, harmony.logs()).toEqual({ code: 0, signal: null })
  }
}

describe("the message path with the OTLP collector down", { timeout: 180_000 }, () => {
  const closers: Array<() => Promise<void>> = []
  afterAll(async () => {
    for (const close of closers) await close()
  })

  it("embedded: connections refused (nothing listens)", async () => {
    await messagesFlow("embedded", `http://127.0.0.1:${await freePort()}`)
  })

  it("embedded: a collector that accepts and never answers", async () => {
    const collector = await startHungCollector()
    closers.push(collector.close)
    await messagesFlow("embedded", collector.url)
    // The exporters did try it, with a bounded number of connections at a time (abandoned requests close theirs).
    expect(collector.mostConnections()).toBeGreaterThan(0)
    expect(collector.mostConnections()).toBeLessThanOrEqual(6)
  })

  it("embedded: a collector answering 503", async () => {
    const collector = await startFailingCollector()
    closers.push(collector.close)
    await messagesFlow("embedded", collector.url)
    expect(collector.requests()).toBeGreaterThan(0)
  })

  it("embedded: traces resume once the collector is back", { timeout: 240_000 }, async () => {
    let down = true
    const receiver = await startOtlpReceiver({ refuse: () => down })
    closers.push(receiver.close)
    const harmony = await startHarmony({ mode: "embedded", env: { ...fastExportEnv(receiver, "comes-back") } })
    const clients: Array<WsClient> = []
    try {
      const http = api(harmony.url)
      const [a, b] = await registerMany(http, 2, "otel-back")
      const chatId = await createGroup(http, a, [b])
      const sender = await session(harmony.url, a, chatId)
      const listener = await session(harmony.url, b, chatId)
      clients.push(sender, listener)
      // Down long enough for the exporters to exhaust their retries and pause.
      for (let i = 0; i < 8; i++) {
        await sendMessage(sender, chatId, `while down ${i}`)
        await sleep(1_000)
      }
      down = false
      // The exporters pause for a minute after failing; then a probe finds the collector, and every hop is traced again.
      let sent = 8
      await until(
        "a message traced end to end after the collector came back",
        async () => {
          const id = await sendMessage(sender, chatId, `back ${sent++}`)
          await listener.waitForMessages(chatId, sent)
          await sleep(1_000)
          const produce = receiver
            .spans()
            .find((span) => span.name === "Ingest.produce" && span.attributes["harmony.message.id"] === id)
          if (produce === undefined) return undefined
          const names = new Set(
            receiver
              .spans()
              .filter((s) => s.traceId === produce.traceId)
              .map((s) => s.name)
          )
          return names.has("Session.write") ? true : undefined
        },
        { timeoutMs: 150_000, intervalMs: 2_000 }
      )
    } finally {
      for (const client of clients) client.terminate()
      await harmony.stop()
    }
  })

  it("cluster: a collector that accepts and never answers", async () => {
    const collector = await startHungCollector()
    closers.push(collector.close)
    await messagesFlow("cluster", collector.url)
  })
})
