/**
 * The fault-injection suite (issue 11): several real nodes (`harmony serve`,
 * cluster mode) on services of the suite's own (test/chaos/services.ts:
 * Postgres, Redis, Kafka, DynamoDB Local with its tables on a tmpfs), clients that do what
 * docs/protocol.md asks — reconnect to any live node, resubscribe with
 * `sinceSeq`, send unacknowledged messages again with the same clientMsgId —
 * under steady load, and one probe client pinned to each node. Faults come
 * one after the other, injected with real tools: SIGKILL and SIGTERM of
 * nodes (restarted afterwards), each service stopped and started (the Kafka
 * broker included), and cut connections, black holes and slow links between
 * the nodes and each service through Toxiproxy (the broker advertises the
 * proxy's address on the listener the nodes use, so they stay behind it).
 *
 * After each fault every node must send again (its probe acknowledged) —
 * within 60 s, a bound for a busy machine; the time it took is reported.
 * Afterwards, per chat: every acknowledged message stored exactly once,
 * stored seqs exactly 1..n, every member received every seq (live or on
 * resubscribing) with the stored message for it. While the broker is down or
 * out of reach, sends are answered (`unavailable`) rather than left waiting; a SIGTERM
 * ends in exit 0 by the node's own drain. The report (per fault: the
 * answers, the longest waits, when each node sent again) is printed and
 * written to .test-results/chaos-report.md; docs/operations.md carries one.
 *
 * CHAOS=full (`npm run chaos`) runs three nodes, the issue's load (150
 * users in 30 chats, each sending about twice a second) and every fault at
 * length; the default is the short form that runs in `npm test`: two nodes,
 * light load, short faults, one fault of each kind.
 */
import { randomUUID } from "node:crypto"
import { mkdirSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { type Exit, repoRoot } from "../support/harmony.ts"
import type { WsClient } from "../support/wsClient.ts"
import {
  type Account,
  ChatClient,
  createGroup,
  historyAll,
  type Node,
  registerMany,
  sleep,
  startNode,
  until
} from "../integration/cluster.support.ts"
import { type Service, type Services, startServices } from "./services.ts"
import { startToxiproxy, type Toxiproxy } from "./toxiproxy.ts"

const full = process.env.CHAOS === "full"
// slowMs: how late DynamoDB answers in the slow-store fault (beyond half of
// SHUTDOWN_TIMEOUT, when a revoked or draining partition gives up on its
// backlog); kafkaSlowMs: how late the broker answers in the slow-broker fault.
const profile = full
  ? {
      nodes: 3,
      chats: 30,
      membersPerChat: 5,
      sendEveryMs: 500,
      outageMs: 12_000,
      slowMs: 10_000,
      kafkaSlowMs: 3_000,
      calmMs: 8_000
    }
  : {
      nodes: 2,
      chats: 3,
      membersPerChat: 2,
      sendEveryMs: 400,
      outageMs: 5_000,
      slowMs: 6_000,
      kafkaSlowMs: 2_000,
      calmMs: 4_000
    }
const shutdownTimeoutMs = 10_000
/** How long after a fault's end every node must be sending again (the target, 15 s, is reported). */
const sendAgainWithinMs = 60_000
/** A send request left without any answer this long counts as unanswered. */
const unansweredMs = 30_000

const hostPort = (url: string) => new URL(url).host
const withPort = (url: string, port: number) => {
  const parsed = new URL(url)
  parsed.host = `127.0.0.1:${port}`
  return parsed.toString().replace(/\/$/, "")
}

interface Fault {
  readonly name: string
  /** What the suite does, in a phrase, for the report. */
  readonly how: string
  /** Only in the full run. */
  readonly fullOnly?: boolean
  /** The broker is out of reach: every send must be answered (`unavailable`), none left waiting. */
  readonly brokerUnreachable?: boolean
  readonly run: () => Promise<void>
  start?: number
  end?: number
}

describe("chaos", { timeout: full ? 2_400_000 : 600_000 }, () => {
  const opened = new Set<WsClient>()
  const nodes: Array<Node> = []
  /** Every node process started, restarts included: their logs go to .test-results/chaos-logs. */
  const started: Array<Node> = []
  let proxy: Toxiproxy | undefined
  let services: Services | undefined
  afterAll(async () => {
    for (const ws of opened) ws.close()
    await Promise.all(nodes.map((node) => node.harmony.stop("SIGKILL")))
    const logs = join(repoRoot, ".test-results", "chaos-logs")
    rmSync(logs, { recursive: true, force: true })
    mkdirSync(logs, { recursive: true })
    for (const [i, node] of started.entries()) writeFileSync(join(logs, `${i}-${node.name}.log`), node.harmony.logs())
    await proxy?.stop()
    await services?.down()
  })

  it("loses, doubles and skips nothing through node kills, restarts and service outages", async () => {
    services = await startServices("chaos-services")
    proxy = await startToxiproxy()
    const own = services.env
    const viaProxy = async (name: string, variable: string) =>
      withPort(own[variable]!, await proxy!.proxy(name, hostPort(own[variable]!)))
    const env = {
      ...own,
      KAFKA_BROKERS: `127.0.0.1:${await proxy.proxy("kafka", services.kafkaProxy.upstream, services.kafkaProxy.listen)}`,
      DATABASE_URL: await viaProxy("postgres", "DATABASE_URL"),
      REDIS_URL: await viaProxy("redis", "REDIS_URL"),
      DYNAMODB_ENDPOINT: await viaProxy("dynamodb", "DYNAMODB_ENDPOINT"),
      SHUTDOWN_TIMEOUT: `${shutdownTimeoutMs / 1000} seconds`,
      SEND_TIMEOUT: "4 seconds"
    }
    const names = Array.from({ length: profile.nodes }, (_, i) => `n${i}`)
    const launch = async (name: string) => {
      const node = await startNode(name, env)
      started.push(node)
      return node
    }
    for (const node of await Promise.all(names.map(launch))) nodes.push(node)
    const live = () => nodes.filter((node) => !node.harmony.exited())
    const notes: Array<string> = []
    const terms: Array<{ node: string; exit: Exit; ms: number }> = []
    const stop = async (index: number, signal: NodeJS.Signals) => {
      const node = nodes[index]!
      const began = Date.now()
      const exit = await node.harmony.stop(signal)
      const ms = Date.now() - began
      if (signal === "SIGTERM") terms.push({ node: node.name, exit, ms })
      notes.push(`${node.name} ${signal}: exited (code ${exit.code}, signal ${exit.signal}) after ${ms} ms`)
    }
    const start = async (index: number) => {
      nodes[index] = await launch(nodes[index]!.name)
    }
    const restart = async (index: number, signal: NodeJS.Signals) => {
      await stop(index, signal)
      await start(index)
    }
    const outage = async (service: Service) => {
      const began = Date.now()
      await services!.stop(service)
      const stopped = Date.now()
      await sleep(profile.outageMs)
      const starting = Date.now()
      await services!.start(service)
      notes.push(
        `${service}: stopped in ${stopped - began} ms, down ${starting - stopped} ms, answering again ${Date.now() - starting} ms after its start`
      )
    }
    const cut = async (name: string) => {
      await proxy!.down(name)
      await sleep(profile.outageMs)
      await proxy!.up(name)
    }
    const toxic = async (add: () => Promise<void>, name: string, ms: number) => {
      await add()
      await sleep(ms)
      await proxy!.up(name)
    }

    // Accounts and chats: each chat has `membersPerChat` members; every member sends.
    const http = nodes[0]!.http
    const accounts: Array<Account> = await registerMany(http, profile.chats * profile.membersPerChat, "chaos")
    const chats: Array<{ id: string; members: Array<Account> }> = []
    for (let c = 0; c < profile.chats; c++) {
      const members = accounts.slice(c * profile.membersPerChat, (c + 1) * profile.membersPerChat)
      chats.push({ id: await createGroup(http, members[0]!, members.slice(1)), members })
    }
    // One probe per node, alone in a chat of its own, always connected to that node.
    const probeAccounts = await registerMany(http, profile.nodes, "probe")
    for (const account of probeAccounts) chats.push({ id: await createGroup(http, account, []), members: [account] })
    const clients: Array<ChatClient> = []
    for (const chat of chats.slice(0, profile.chats)) {
      for (const [m, account] of chat.members.entries()) {
        const client = new ChatClient(`${account.username}`, account, [chat.id], opened)
        await client.connect(nodes[(clients.length + m) % nodes.length]!, false)
        clients.push(client)
      }
    }
    const probes = probeAccounts.map(
      (account, i) => new ChatClient(`probe of n${i}`, account, [chats[profile.chats + i]!.id], opened)
    )
    for (const [i, probe] of probes.entries()) await probe.connect(nodes[i]!, false)
    const everyone = [...clients, ...probes]

    // Load: every client sends on its own clock; a lost connection is reconnected to
    // any live node (a probe: to its own node, once it is back).
    let running = true
    const reconnect = async (client: ChatClient, pinned?: number) => {
      for (;;) {
        const candidates = pinned === undefined ? live() : live().filter((node) => node === nodes[pinned])
        const node = candidates[Math.floor(Math.random() * candidates.length)]
        if (node !== undefined) {
          try {
            await client.reconnect(node)
            return
          } catch {
            // the node went away meanwhile: try again
          }
        }
        await sleep(500)
      }
    }
    // Each send has at most one request in flight: an unacknowledged one is
    // sent again (same clientMsgId) once its answer came back without an ack,
    // after a backoff of its own, as the SDK does (jittered, 250 ms doubling
    // up to 10 s; a reconnect retries every pending send at once).
    const drive = async (client: ChatClient, pinned?: number) => {
      const inFlight = new Set<string>()
      const notBefore = new Map<string, { at: number; delay: number }>()
      const send = (clientMsgId: string) => {
        if (inFlight.has(clientMsgId)) return
        inFlight.add(clientMsgId)
        void client.send(client.chats[0]!, clientMsgId).then(
          (acked) => {
            inFlight.delete(clientMsgId)
            if (acked) return notBefore.delete(clientMsgId)
            const delay = Math.min(10_000, 2 * (notBefore.get(clientMsgId)?.delay ?? 125))
            notBefore.set(clientMsgId, { at: Date.now() + delay * Math.random(), delay })
          },
          () => inFlight.delete(clientMsgId)
        )
      }
      while (running) {
        if (!client.ws.isOpen) {
          await reconnect(client, pinned)
          notBefore.clear()
        }
        const now = Date.now()
        for (const attempt of client.pending()) {
          if ((notBefore.get(attempt.clientMsgId)?.at ?? 0) <= now) send(attempt.clientMsgId)
        }
        send(randomUUID())
        await sleep(profile.sendEveryMs * (0.5 + Math.random()))
      }
    }
    const drivers = [...clients.map((client) => drive(client)), ...probes.map((probe, i) => drive(probe, i))]

    const answers = () => everyone.flatMap((client) => client.answers)
    /** When `node` first acknowledged a send after `since` (each client's answers are in answer order: read from the end). */
    const firstAck = (node: string, since: number) => {
      let first: number | undefined
      for (const client of everyone) {
        for (let i = client.answers.length - 1; i >= 0; i--) {
          const a = client.answers[i]!
          if (a.answeredAt < since) break
          if (a.node === node && a.outcome === "ack") first = Math.min(first ?? a.answeredAt, a.answeredAt)
        }
      }
      return first
    }

    const last = profile.nodes - 1
    const faults: Array<Fault> = [
      { name: "node SIGKILL", how: "a node killed with SIGKILL, restarted at once", run: () => restart(0, "SIGKILL") },
      {
        name: "node SIGTERM",
        how: "a node stopped with SIGTERM (drains), restarted",
        run: () => restart(1, "SIGTERM")
      },
      {
        name: "Kafka broker stopped",
        how: `the broker process stopped (SIGTERM), started again ${profile.outageMs / 1000} s later`,
        brokerUnreachable: true,
        run: () => outage("kafka")
      },
      {
        name: "Kafka cut",
        how: `the nodes' connections to Kafka cut and refused for ${profile.outageMs / 1000} s (Toxiproxy)`,
        brokerUnreachable: true,
        run: () => cut("kafka")
      },
      {
        name: "Kafka silent",
        how: `nothing gets through between the nodes and Kafka for ${profile.outageMs / 1000} s, connections stay open (Toxiproxy timeout, both ways)`,
        fullOnly: true,
        brokerUnreachable: true,
        run: () => toxic(() => proxy!.partition("kafka"), "kafka", profile.outageMs)
      },
      {
        name: "Kafka slow",
        how: `Kafka answers the nodes ${profile.kafkaSlowMs / 1000} s late for ${(2 * profile.outageMs) / 1000} s (Toxiproxy latency)`,
        fullOnly: true,
        run: () => toxic(() => proxy!.slow("kafka", profile.kafkaSlowMs), "kafka", 2 * profile.outageMs)
      },
      {
        name: "Redis cut",
        how: `the nodes' connections to Redis cut and refused for ${profile.outageMs / 1000} s (Toxiproxy)`,
        fullOnly: true,
        run: () => cut("redis")
      },
      {
        name: "Redis silent",
        how: `Redis answers nothing for ${profile.outageMs / 1000} s, connections stay open (Toxiproxy timeout)`,
        fullOnly: true,
        run: () => toxic(() => proxy!.silence("redis"), "redis", profile.outageMs)
      },
      {
        name: "Redis stopped",
        how: `the Redis process stopped, started again ${profile.outageMs / 1000} s later (empty)`,
        run: () => outage("redis")
      },
      {
        name: "DynamoDB cut",
        how: `the nodes' connections to DynamoDB cut and refused for ${profile.outageMs / 1000} s (Toxiproxy)`,
        run: () => cut("dynamodb")
      },
      {
        name: "DynamoDB stopped",
        how: `the DynamoDB Local process stopped, started again ${profile.outageMs / 1000} s later (its tables kept in files)`,
        fullOnly: true,
        run: () => outage("dynamodb")
      },
      {
        name: "Postgres cut",
        how: `the nodes' connections to Postgres cut and refused for ${profile.outageMs / 1000} s (Toxiproxy)`,
        fullOnly: true,
        run: () => cut("postgres")
      },
      {
        name: "Postgres stopped",
        how: `Postgres stopped (fast shutdown), started again ${profile.outageMs / 1000} s later`,
        fullOnly: true,
        run: () => outage("postgres")
      },
      {
        name: "DynamoDB slow while partitions move",
        how: full
          ? `DynamoDB answers ${profile.slowMs / 1000} s late (Toxiproxy latency) while one node is SIGKILLed and another SIGTERMed (SHUTDOWN_TIMEOUT ${shutdownTimeoutMs / 1000} s); both restarted once it is fast again`
          : `DynamoDB answers ${profile.slowMs / 1000} s late (Toxiproxy latency) while a node is SIGTERMed (SHUTDOWN_TIMEOUT ${shutdownTimeoutMs / 1000} s), restarted once it is fast again`,
        run: async () => {
          await proxy!.slow("dynamodb", profile.slowMs)
          // Stalled writes pile up first, then partitions move (twice in the full run).
          await sleep(3_000)
          if (full) await stop(last, "SIGKILL")
          await stop(0, "SIGTERM")
          // The survivors take the partitions over (after the session timeout for the killed one) while writes stall.
          await sleep(full ? 10_000 : 3_000)
          await proxy!.up("dynamodb")
          // (A node is ready only once DynamoDB answers.)
          await Promise.all([start(0), ...(full ? [start(last)] : [])])
        }
      }
    ].filter((fault) => full || fault.fullOnly !== true)

    const problems: Array<string> = []
    const loadStart = Date.now()
    await sleep(profile.calmMs)
    const calmEnd = Date.now()
    for (const fault of faults) {
      fault.start = Date.now()
      await fault.run()
      fault.end = Date.now()
      notes.push(`${fault.name}: injected for ${((fault.end - fault.start) / 1000).toFixed(1)} s`)
      // Not sending again is recorded, and the run goes on, so that the report covers every fault.
      await until(
        `every node sending again after "${fault.name}"`,
        () => names.every((name) => firstAck(name, fault.end!) !== undefined) || undefined,
        {
          timeoutMs: sendAgainWithinMs,
          intervalMs: 250,
          detail: () => names.map((name) => `${name}: ${firstAck(name, fault.end!) ?? "no ack yet"}`).join(", ")
        }
      ).catch((error: unknown) => problems.push(error instanceof Error ? error.message : String(error)))
      await sleep(profile.calmMs)
    }
    running = false
    await Promise.all(drivers)
    const loadEnd = Date.now()

    // Settle: every send acknowledged, then each client resubscribes once more with sinceSeq.
    for (const client of everyone) {
      if (!client.ws.isOpen) await reconnect(client)
      await client.settle(live()[0]!, 120_000)
    }
    const stored = new Map<string, Map<number, string>>()
    for (const chat of chats) {
      const acked = everyone
        .filter((client) => client.chats[0] === chat.id)
        .flatMap((client) => [...client.attempts.values()])
        .filter((attempt) => attempt.id !== undefined)
      const messages = await until(
        `chat ${chat.id}: every acknowledged message stored`,
        async () => {
          const all = await historyAll(live()[0]!.http, chat.members[0]!, chat.id)
          const ids = new Set(all.map((m) => m.id))
          return acked.every((attempt) => ids.has(attempt.id!)) ? all : undefined
        },
        { timeoutMs: 120_000, intervalMs: 1_000 }
      )
      const seqs = messages.map((m) => m.seq).sort((a, b) => a - b)
      if (seqs.some((seq, i) => seq !== i + 1)) problems.push(`chat ${chat.id}: stored seqs are not 1..${seqs.length}`)
      const ids = messages.map((m) => m.id)
      if (new Set(ids).size !== ids.length) problems.push(`chat ${chat.id}: a message is stored twice`)
      stored.set(chat.id, new Map(messages.map((m) => [m.seq, m.id])))
    }
    for (const client of everyone) {
      client.ws.close()
      await reconnect(client)
    }
    for (const client of everyone) {
      const chatId = client.chats[0]!
      const bySeq = stored.get(chatId)!
      await until(`${client.name}: every seq of ${chatId}`, () => {
        const got = new Set(client.delivered(chatId))
        return [...bySeq.keys()].every((seq) => got.has(seq)) || undefined
      }).catch(() => undefined)
      const got = new Set(client.delivered(chatId))
      const missing = [...bySeq.keys()].filter((seq) => !got.has(seq))
      if (missing.length > 0) problems.push(`${client.name}: never received seqs ${missing.slice(0, 10).join(",")}`)
      const reused = client.connections
        .flatMap(({ ws }) => ws.messages(chatId))
        .filter((m) => bySeq.get(m.seq) !== m.id)
      if (reused.length > 0) {
        problems.push(`${client.name}: seqs delivered with another message than the stored one: ${reused[0]!.seq}`)
      }
    }

    // Per fault: the answers to sends made while it lasted, the longest wait for an answer and
    // for an ack (sends made during it and the calm after), and when each node sent again.
    const attempts = everyone.flatMap((client) => [...client.attempts.values()])
    const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`
    const measured = faults.map((fault, i) => {
      const next = faults[i + 1]?.start ?? Number.POSITIVE_INFINITY
      const during = answers().filter((a) => a.sentAt >= fault.start! && a.sentAt <= fault.end!)
      const count = (outcome: string) => during.filter((a) => a.outcome === outcome).length
      const unanswered = during.filter((a) => a.outcome === "no answer" && a.answeredAt - a.sentAt >= unansweredMs)
      const sends = attempts.filter((a) => a.firstSentAt >= fault.start! && a.firstSentAt < next)
      const ackWaits = sends.filter((a) => a.ackedAt !== undefined).map((a) => a.ackedAt! - a.firstSentAt)
      const sendingAgain = names.map((name) => (firstAck(name, fault.end!) ?? Number.NaN) - fault.end!)
      return {
        fault,
        unavailable: count("unavailable"),
        unanswered: unanswered.length,
        row: [
          fault.name,
          fault.how,
          seconds(fault.end! - fault.start!),
          `${count("ack")} / ${count("unavailable")} / ${count("closed")} / ${unanswered.length}`,
          seconds(Math.max(0, ...during.map((a) => a.answeredAt - a.sentAt))),
          seconds(Math.max(0, ...ackWaits)),
          names.map((name, n) => `${name} ${seconds(sendingAgain[n]!)}`).join(", ")
        ]
      }
    })
    // The load reached: sends acknowledged per second, in the calm before the first fault and over the whole run.
    const rate = (from: number, to: number) =>
      (attempts.filter((a) => a.ackedAt! >= from && a.ackedAt! < to).length / ((to - from) / 1000)).toFixed(0)
    const unreachable = measured.filter((m) => m.fault.brokerUnreachable === true)
    const report = [
      `Chaos run (${full ? "full" : "short"}, ${new Date(loadStart).toISOString().slice(0, 10)}): ${profile.nodes} nodes, ${profile.chats} chats of ${profile.membersPerChat} members and ${profile.nodes} probes, ${attempts.length} sends, all acknowledged; ${rate(loadStart, calmEnd)} messages/s before the first fault, ${rate(loadStart, loadEnd)} messages/s over ${seconds(loadEnd - loadStart)} of load (offered: ${((profile.chats * profile.membersPerChat * 1000) / profile.sendEveryMs).toFixed(0)} messages/s).`,
      "",
      "| fault | injected | lasted | answers while it lasted: ack / unavailable / connection closed / none in 30 s | longest wait for an answer | longest wait for an ack | each node's first ack after its end |",
      "| --- | --- | --- | --- | --- | --- | --- |",
      ...measured.map((m) => `| ${m.row.join(" | ")} |`),
      "",
      `SIGTERM: ${terms.map((t) => `${t.node} exited (code ${t.exit.code}) after ${seconds(t.ms)}`).join("; ")} (SHUTDOWN_TIMEOUT ${seconds(shutdownTimeoutMs)}).`,
      "",
      problems.length === 0
        ? "Per chat: every acknowledged message stored exactly once, stored seqs exactly 1..n, every member received every seq with the stored message."
        : `PROBLEMS:\n${problems.join("\n")}`
    ].join("\n")
    console.log(report)
    mkdirSync(join(repoRoot, ".test-results"), { recursive: true })
    writeFileSync(join(repoRoot, ".test-results", "chaos-report.md"), `${report}\n\n${notes.join("\n")}\n`)
    expect(problems).toEqual([])
    // While the broker was down or out of reach, sends were answered `unavailable`, none left waiting.
    for (const m of unreachable) {
      expect(m.unavailable, `${m.fault.name}: sends answered unavailable`).toBeGreaterThan(0)
      expect(m.unanswered, `${m.fault.name}: sends left without an answer`).toBe(0)
    }
    // A SIGTERM ends by the node's own drain (the harness SIGKILLs after 20 s, twice SHUTDOWN_TIMEOUT).
    for (const term of terms) expect(term.exit, `${term.node} after SIGTERM`).toEqual({ code: 0, signal: null })
  })
})
