/**
 * Helpers for the observability suites: a tiny OTLP/HTTP (JSON) receiver
 * that collects what nodes export, a Prometheus text parser for /metrics,
 * and accounts, chats and sessions over the public API.
 */
import { randomUUID } from "node:crypto"
import { createServer, type IncomingMessage, type Server } from "node:http"
import { expect } from "vitest"
import type { Account } from "../integration/cluster.support.ts"
import { WsClient } from "../support/wsClient.ts"

export {
  createGroup,
  expectStatus,
  type Account,
  password,
  register,
  registerMany,
  sleep,
  until
} from "../integration/cluster.support.ts"

// --- the OTLP receiver ---------------------------------------------------------------------------

/** A span as OTLP/JSON carries it, with its resource's service name and its attributes flattened. */
export interface ReceivedSpan {
  /** The exporting node's `service.name` (tests give each node its own). */
  readonly service: string
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId: string | undefined
  readonly name: string
  readonly kind: number
  readonly attributes: Readonly<Record<string, unknown>>
  readonly links: ReadonlyArray<{ readonly traceId: string; readonly spanId: string }>
  readonly startTimeUnixNano: string
  readonly endTimeUnixNano: string
}

export interface OtlpReceiver {
  /** The base URL to give as OTEL_EXPORTER_OTLP_ENDPOINT. */
  readonly url: string
  readonly spans: () => ReadonlyArray<ReceivedSpan>
  /** Raw bodies received per signal path (/v1/traces, /v1/metrics, /v1/logs). */
  readonly bodies: (path: string) => ReadonlyArray<string>
  readonly close: () => Promise<void>
}

type AnyValue = {
  readonly stringValue?: string
  readonly intValue?: string | number
  readonly doubleValue?: number
  readonly boolValue?: boolean
}

const valueOf = (value: AnyValue | undefined): unknown =>
  value === undefined
    ? undefined
    : (value.stringValue ??
      (value.intValue !== undefined ? Number(value.intValue) : undefined) ??
      value.doubleValue ??
      value.boolValue)

const attributesOf = (attributes: ReadonlyArray<{ key: string; value: AnyValue }> | undefined) =>
  Object.fromEntries((attributes ?? []).map(({ key, value }) => [key, valueOf(value)]))

const readBody = (request: IncomingMessage): Promise<string> =>
  new Promise((resolve, reject) => {
    let body = ""
    request.setEncoding("utf8")
    request.on("data", (chunk: string) => {
      body += chunk
    })
    request.on("end", () => resolve(body))
    request.on("error", reject)
  })

/**
 * Listens on a free loopback port and accepts OTLP/HTTP JSON exports of
 * every signal — or, while `refuse()` answers true, answers 503 and keeps
 * nothing.
 */
export const startOtlpReceiver = async (options: { readonly refuse?: () => boolean } = {}): Promise<OtlpReceiver> => {
  const spans: Array<ReceivedSpan> = []
  const bodies = new Map<string, Array<string>>()
  const server: Server = createServer((request, response) => {
    void readBody(request).then(
      (body) => {
        if (options.refuse?.() === true) {
          response.writeHead(503, { "content-type": "text/plain" })
          response.end("unavailable")
          return
        }
        const path = (request.url ?? "").split("?")[0]!
        const list = bodies.get(path) ?? []
        list.push(body)
        bodies.set(path, list)
        if (path === "/v1/traces") {
          const data = JSON.parse(body) as { resourceSpans?: Array<any> }
          for (const resourceSpans of data.resourceSpans ?? []) {
            const service = String(attributesOf(resourceSpans.resource?.attributes)["service.name"] ?? "")
            for (const scopeSpans of resourceSpans.scopeSpans ?? []) {
              for (const span of scopeSpans.spans ?? []) {
                spans.push({
                  service,
                  traceId: span.traceId,
                  spanId: span.spanId,
                  parentSpanId: span.parentSpanId === "" ? undefined : span.parentSpanId,
                  name: span.name,
                  kind: span.kind,
                  attributes: attributesOf(span.attributes),
                  links: (span.links ?? []).map((link: any) => ({ traceId: link.traceId, spanId: link.spanId })),
                  startTimeUnixNano: span.startTimeUnixNano,
                  endTimeUnixNano: span.endTimeUnixNano
                })
              }
            }
          }
        }
        response.writeHead(200, { "content-type": "application/json" })
        response.end("{}")
      },
      () => {
        response.writeHead(400)
        response.end()
      }
    )
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const address = server.address()
  if (address === null || typeof address === "string") throw new Error("the OTLP receiver has no port")
  return {
    url: `http://127.0.0.1:${address.port}`,
    spans: () => spans,
    bodies: (path) => bodies.get(path) ?? [],
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}

/** OTLP span kinds (the JSON encoding's numbers). */
export const SpanKind = { internal: 1, server: 2, client: 3, producer: 4, consumer: 5 } as const

/** Env that makes a node export often, so a test waits seconds, not the default intervals. */
export const fastExportEnv = (receiver: OtlpReceiver, serviceName: string): Record<string, string> => ({
  OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
  OTEL_SERVICE_NAME: serviceName,
  OTEL_BSP_SCHEDULE_DELAY: "200",
  OTEL_METRIC_EXPORT_INTERVAL: "500",
  OTEL_BLRP_SCHEDULE_DELAY: "200"
})

// --- /metrics ------------------------------------------------------------------------------------

/** One Prometheus sample: name, labels, value. */
export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

/** The samples of a Prometheus text exposition. */
export const parsePrometheus = (text: string): Array<Sample> => {
  const samples: Array<Sample> = []
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line)
    if (match === null) continue
    const labels: Record<string, string> = {}
    for (const pair of (match[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]!] = pair[2]!.replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\")
    }
    samples.push({ name: match[1]!, labels, value: Number(match[4]) })
  }
  return samples
}

/** Scrapes `/metrics` of `base`. */
export const scrape = async (base: string): Promise<{ readonly text: string; readonly samples: Array<Sample> }> => {
  const response = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(10_000) })
  expect(response.status).toBe(200)
  const text = await response.text()
  return { text, samples: parsePrometheus(text) }
}

/** The sum of the samples of `name` whose labels include `labels` (0 when there is none). */
export const sum = (samples: ReadonlyArray<Sample>, name: string, labels: Record<string, string> = {}) =>
  samples
    .filter((sample) => sample.name === name && Object.entries(labels).every(([k, v]) => sample.labels[k] === v))
    .reduce((sum, sample) => sum + sample.value, 0)

// --- accounts, chats, sessions -------------------------------------------------------------------

/** An authenticated session of `account` on `base`, subscribed to `chatId` when given. */
export const session = async (base: string, account: Account, chatId?: string): Promise<WsClient> => {
  const { client } = await WsClient.open(base, account.accessToken)
  if (chatId !== undefined) {
    const answer = await client.request({ type: "subscribe", chatId })
    expect(answer, JSON.stringify(answer)).toMatchObject({ type: "subscribed", chatId })
  }
  return client
}

/** Sends a message and waits for its ack; answers its id. */
export const sendMessage = async (client: WsClient, chatId: string, body = "hello"): Promise<string> => {
  const clientMsgId = randomUUID()
  const ack = await client.request({ type: "send", chatId, clientMsgId, body }, { timeoutMs: 30_000 })
  expect(ack, JSON.stringify(ack)).toMatchObject({ type: "ack", clientMsgId })
  return ack.id as string
}
