/**
 * Tracing end to end, black-box: real `harmony serve` nodes export over
 * OTLP/HTTP to a tiny receiver in this process (support.ts), a message goes
 * through the real path, and one trace must hold a span for every hop with
 * the right parents across the process boundaries (Kafka record header,
 * Redis fanout envelope):
 *
 *   Session.frame (root, server)
 *   ├─ Session.decode
 *   └─ Session.send
 *      └─ Ingest.send ─ RateLimits.take, Membership.roleOf (authorization)
 *         └─ Ingest.produce (producer; its context rides in the record's traceparent)
 *            └─ PartitionRunner.consume (consumer, on the node owning the partition)
 *               └─ ChatActor.sequence
 *                  └─ Fanout.publish (producer; its context rides in the fanout envelope)
 *                     └─ ChatFeeds.deliver (consumer, on every delivering node)
 *                        └─ Session.write (one per socket)
 *
 * and the batch spans (Ingest.produceBatch, PersistenceSink.persist) link
 * the message spans they carry. The state path likewise: OutboxRelay.publish
 * → `<consumer group>.<event type>` across chat.events.
 *
 * Embedded mode runs one node; cluster mode two, the receiving user on the
 * other node, so the trace spans both processes. Nothing secret may appear in
 * the logs or in anything exported.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Api, api, clusterJwtSecret, type Harmony, startHarmony } from "../support/harmony.ts"
import type { WsClient } from "../support/wsClient.ts"
import {
  type Account,
  createGroup,
  expectStatus,
  fastExportEnv,
  type OtlpReceiver,
  password,
  type ReceivedSpan,
  register,
  registerMany,
  sendMessage,
  session,
  SpanKind,
  sleep,
  startOtlpReceiver,
  until
} from "./support.ts"

interface NodeUnderTest {
  readonly name: string
  readonly harmony: Harmony
  readonly http: Api
}

const describeSpans = (spans: ReadonlyArray<ReceivedSpan>) =>
  spans
    .map(
      (span) =>
        `  ${span.service} ${span.name} ${span.spanId} parent=${span.parentSpanId ?? "-"} trace=${span.traceId}` +
        (span.links.length > 0 ? ` links=${span.links.map((link) => link.spanId).join(",")}` : "")
    )
    .join("\n")

const tracingSuite = (mode: "embedded" | "cluster") =>
  describe(`tracing (${mode} mode)`, { timeout: 180_000 }, () => {
    let receiver: OtlpReceiver
    const nodes: Array<NodeUnderTest> = []
    const clients: Array<WsClient> = []

    beforeAll(async () => {
      receiver = await startOtlpReceiver()
      const names = mode === "embedded" ? ["node-a"] : ["node-a", "node-b"]
      for (const name of names) {
        const harmony = await startHarmony({
          mode,
          env: { ...fastExportEnv(receiver, name), KAFKA_SESSION_TIMEOUT: "6 seconds" },
          readyTimeoutMs: 120_000
        })
        nodes.push({ name, harmony, http: api(harmony.url) })
      }
    })

    afterAll(async () => {
      for (const client of clients) client.terminate()
      for (const node of nodes) {
        const exit = await node.harmony.stop("SIGTERM")
        expect(exit, node.harmony.logs()).toEqual({ code: 0, signal: null })
      }
      await receiver?.close()
    })

    const spansOf = (traceId: string) => receiver.spans().filter((span) => span.traceId === traceId)

    it("one trace holds every hop of a message, with the right parents across Kafka and fanout", async () => {
      const sender = nodes[0]!
      const receiving = nodes.at(-1)!
      const [a, b] = await registerMany(sender.http, 2, "trace")
      const chatId = await createGroup(sender.http, a, [b])
      const sa = await session(sender.harmony.url, a, chatId)
      const sb = await session(receiving.harmony.url, b, chatId)
      clients.push(sa, sb)

      const messageId = await sendMessage(sa, chatId, "traced hello")
      await sa.waitForMessages(chatId, 1, { timeoutMs: 60_000 })
      await sb.waitForMessages(chatId, 1, { timeoutMs: 60_000 })

      // The send's producer span names the trace.
      const produce = await until(
        "the Ingest.produce span of the message",
        () =>
          receiver.spans().find((s) => s.name === "Ingest.produce" && s.attributes["harmony.message.id"] === messageId),
        { detail: () => describeSpans(receiver.spans().slice(-40)) }
      )
      const traceId = produce.traceId
      // Every hop has been exported: both socket writes and the store write that links the message.
      await until(
        "both socket writes and the linked store write",
        () => {
          const writes = spansOf(traceId).filter((s) => s.name === "Session.write")
          const persisted = receiver
            .spans()
            .some((s) => s.name === "PersistenceSink.persist" && s.links.some((link) => link.traceId === traceId))
          return writes.length >= 2 && persisted ? true : undefined
        },
        { timeoutMs: 30_000, detail: () => describeSpans(spansOf(traceId)) }
      )

      const trace = spansOf(traceId)
      const detail = describeSpans(trace)
      const one = (name: string, parent: ReceivedSpan | undefined, kind?: number) => {
        const found = trace.filter((s) => s.name === name && (parent === undefined || s.parentSpanId === parent.spanId))
        expect(found.length, `exactly one ${name} under ${parent?.name ?? "nothing"} in\n${detail}`).toBe(1)
        if (kind !== undefined) expect(found[0]!.kind, `${name}'s kind`).toBe(kind)
        return found[0]!
      }

      // The gateway: frame → decode, send → authorization → produce.
      const frame = one("Session.frame", undefined, SpanKind.server)
      expect(frame.parentSpanId, "the frame span is the trace's root").toBeUndefined()
      expect(frame.service).toBe(sender.name)
      expect(frame.attributes["harmony.frame.type"]).toBe("send")
      one("Session.decode", frame)
      const send = one("Session.send", frame)
      const ingest = one("Ingest.send", send)
      one("RateLimits.take", ingest)
      one("Membership.roleOf", ingest)
      expect(produce.parentSpanId).toBe(ingest.spanId)
      expect(produce.kind).toBe(SpanKind.producer)
      expect(produce.service).toBe(sender.name)

      // Across Kafka: the partition owner's consume span is the producer span's child.
      const consume = one("PartitionRunner.consume", produce, SpanKind.consumer)
      expect(consume.attributes["messaging.destination.name"]).toBe("chat.messages")
      const sequence = one("ChatActor.sequence", consume)
      expect(sequence.service).toBe(consume.service)
      expect(sequence.attributes["harmony.seq"]).toBe(1)
      const publish = one("Fanout.publish", sequence, SpanKind.producer)

      // Across fanout: each delivering node's delivery span is the publish span's child, a socket write under it.
      const deliveries = trace.filter((s) => s.name === "ChatFeeds.deliver")
      for (const delivery of deliveries) {
        expect(delivery.parentSpanId, detail).toBe(publish.spanId)
        expect(delivery.kind).toBe(SpanKind.consumer)
      }
      const expectedServices = [...new Set([sender.name, receiving.name])].sort()
      expect([...new Set(deliveries.map((s) => s.service))].sort(), detail).toEqual(expectedServices)
      const writes = trace.filter((s) => s.name === "Session.write")
      expect(writes.length, detail).toBe(2)
      for (const write of writes) {
        const parent = deliveries.find((delivery) => delivery.spanId === write.parentSpanId)
        expect(parent, `Session.write ${write.spanId} under a delivery\n${detail}`).toBeDefined()
        expect(write.service).toBe(parent!.service)
      }
      if (mode === "cluster") {
        // Two processes in one trace.
        expect(new Set(trace.map((s) => s.service)).size, detail).toBe(2)
      }

      // The batches link the message spans they carry.
      const batch = receiver
        .spans()
        .find((s) => s.name === "Ingest.produceBatch" && s.links.some((link) => link.spanId === produce.spanId))
      expect(batch, "an Ingest.produceBatch span links the message's producer span").toBeDefined()
      expect(batch!.links.find((link) => link.spanId === produce.spanId)!.traceId).toBe(traceId)
      const persist = receiver
        .spans()
        .find((s) => s.name === "PersistenceSink.persist" && s.links.some((link) => link.spanId === sequence.spanId))
      expect(persist, "a PersistenceSink.persist span links the message's sequencing span").toBeDefined()
      expect(persist!.service).toBe(sequence.service)
      expect(persist!.attributes["harmony.batch.size"]).toBeGreaterThanOrEqual(1)

      // Every span of the trace ended no earlier than it started.
      for (const span of trace) expect(BigInt(span.endTimeUnixNano) >= BigInt(span.startTimeUnixNano)).toBe(true)
      // Probes and scrapes are not traced (the harness polled /readyz until the node was ready).
      const probes = receiver
        .spans()
        .filter((s) => ["/readyz", "/healthz", "/metrics"].includes(String(s.attributes["url.path"])))
      expect(describeSpans(probes)).toBe("")
    })

    it("the state path: each event consumer's span is a child of the relay's publish across chat.events", async () => {
      const node = nodes[0]!
      const [owner, member] = await registerMany(node.http, 2, "trace-state")
      await createGroup(node.http, owner, [member])
      const consumers = ["cache-invalidator", "gateway-signals", "store-cleaner"]
      const relaySpans = () => receiver.spans().filter((s) => s.name === "OutboxRelay.publish")
      await until(
        "a member.added event handled by every consumer under a relay publish span",
        () => {
          const relays = new Map(relaySpans().map((s) => [s.spanId, s]))
          const handled = receiver
            .spans()
            .filter((s) => s.name.endsWith(".member.added") && s.parentSpanId !== undefined)
            .filter((s) => relays.get(s.parentSpanId!)?.traceId === s.traceId)
          const groups = new Set(handled.map((s) => s.name.replace(/\.member\.added$/, "")))
          return consumers.every((group) => groups.has(group)) ? handled : undefined
        },
        {
          timeoutMs: 60_000,
          detail: () => describeSpans(receiver.spans().filter((s) => /Outbox|\.member\./.test(s.name)))
        }
      )
      for (const span of receiver.spans().filter((s) => s.name.endsWith(".member.added"))) {
        expect(span.kind).toBe(SpanKind.consumer)
        expect(span.attributes["messaging.destination.name"]).toBe("chat.events")
      }
    })

    it("metrics and logs are exported too, and nothing secret leaves in logs or telemetry", async () => {
      const node = nodes[0]!
      const user: Account = await register(node.http, "secret")
      // Paths that handle secrets: login, refresh, a bad password, a bad token, a reused refresh token.
      const login = await node.http.post("/v1/auth/login", { username: user.username, password })
      expectStatus(login, 200)
      expectStatus(
        await node.http.post("/v1/auth/login", { username: user.username, password: "wrong password!" }),
        401
      )
      expectStatus(await node.http.get("/v1/me", { token: `${login.body.accessToken}x` }), 401)
      const refreshed = await node.http.post("/v1/auth/refresh", { refreshToken: login.body.refreshToken })
      expectStatus(refreshed, 200)
      const client = await session(node.harmony.url, user)
      clients.push(client)
      client.send({ type: "auth", token: "not-a-token" })
      await client.waitForClose()

      await until("metrics exported", () =>
        receiver.bodies("/v1/metrics").some((body) => body.includes("harmony_messages_accepted_total"))
          ? true
          : undefined
      )
      await until("logs exported", () => (receiver.bodies("/v1/logs").length > 0 ? true : undefined))

      const secrets = [
        password,
        "wrong password!",
        user.accessToken,
        login.body.accessToken,
        login.body.refreshToken,
        refreshed.body.accessToken,
        refreshed.body.refreshToken,
        clusterJwtSecret,
        // The credentials of the services' DATABASE_URL (postgres://harmony:harmony@...).
        "harmony:harmony@"
      ]
      const exported = ["/v1/traces", "/v1/metrics", "/v1/logs"].flatMap((path) => receiver.bodies(path))
      for (const secret of secrets) {
        for (const candidate of nodes) {
          expect(candidate.harmony.logs().includes(secret), `a secret in ${candidate.name}'s log`).toBe(false)
        }
        expect(
          exported.some((body) => body.includes(secret)),
          "a secret in exported telemetry"
        ).toBe(false)
      }
    })
  })

tracingSuite("embedded")
tracingSuite("cluster")

describe("tracing: sampling (embedded mode)", { timeout: 120_000 }, () => {
  it("with a sampling ratio of 0 no message span leaves the node, while metrics and logs still do", async () => {
    const receiver = await startOtlpReceiver()
    const harmony = await startHarmony({
      mode: "embedded",
      env: {
        ...fastExportEnv(receiver, "unsampled"),
        OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG: "0"
      }
    })
    const clients: Array<WsClient> = []
    try {
      const http = api(harmony.url)
      const [a, b] = await registerMany(http, 2, "unsampled")
      const chatId = await createGroup(http, a, [b])
      const sa = await session(harmony.url, a, chatId)
      const sb = await session(harmony.url, b, chatId)
      clients.push(sa, sb)
      for (let i = 0; i < 5; i++) await sendMessage(sa, chatId, `unsampled ${i}`)
      await sb.waitForMessages(chatId, 5)
      await until("metrics exported with the 5 messages", () =>
        receiver.bodies("/v1/metrics").some((body) => body.includes("harmony_messages_persisted_total"))
          ? true
          : undefined
      )
      await sleep(1_000)
      expect(describeSpans(receiver.spans())).toBe("")
    } finally {
      for (const client of clients) client.terminate()
      await harmony.stop()
      await receiver.close()
    }
  })
})
