/**
 * The load generator: a child process of bench/run.ts (so client work does
 * not share the server's event loop). It gets a LoadConfig over IPC, opens
 * one connection per chat member, runs the scenarios, reports progress every
 * second and one TargetResult at the end, then exits.
 *
 * Send → deliver latency: every body starts with the send time
 * (performance.now() of this process); a delivery subtracts it from the
 * receive time on the same clock.
 */
import {
  type CpuUsage,
  Histogram,
  type LoadConfig,
  monotonicUs,
  type LoadEvent,
  type ScenarioName,
  type ScenarioResult,
  sleep,
  type TargetResult,
  type VerifyResult
} from "./common.ts"
import { type CpuSnapshot, snapshot, usageBetween } from "./cpu.ts"
import { type StageHistograms, scrapeStagesOf, stageOrder, stagesBetween } from "./stages.ts"
import { type Account, makeHarmonyHttp, mapConcurrent } from "./harmony-http.ts"
import { type Connection, connector, type Member } from "./transports.ts"

const emit = (event: LoadEvent) => process.send?.(event)
const log = (text: string) => emit({ type: "log", text })

interface Chat {
  readonly index: number
  readonly id: string
  readonly conns: Array<Conn>
  /** Acked clientMsgIds, cumulative over the run (checked against history for Harmony). */
  readonly ackedIds: Set<string>
  acked: number
}

interface Conn {
  readonly index: number
  readonly chat: Chat
  connection: Connection | undefined
  open: boolean
  /** clientMsgId → send time, for acks and the send window. */
  readonly inflight: Map<string, number>
  counter: number
  /** Highest seq delivered, and how many distinct seqs arrived in order. */
  lastSeq: number
  delivered: number
}

/** Per-scenario counters; a new one for each scenario. */
class Meter {
  sent = 0
  acked = 0
  errors = 0
  delivered = 0
  disordered = 0
  /** Counting into the rates only between windowStart and windowEnd (performance.now()). */
  windowStart = Number.POSITIVE_INFINITY
  windowEnd = Number.POSITIVE_INFINITY
  ackedInWindow = 0
  deliveredInWindow = 0
  readonly ackBuckets: Array<number> = []
  readonly latency = new Histogram()
  readonly ackLatency = new Histogram()
  /** The last second's latency, for progress lines. */
  readonly recent = new Histogram()
  readonly closes: Record<string, number> = {}
  schedulerLagMaxMs = 0
  readonly start: number
  constructor(start: number) {
    this.start = start
  }
}

const main = async (config: LoadConfig) => {
  const isHarmony = config.target === "harmony"
  const http = makeHarmonyHttp(config.url)
  const urls = config.urls ?? [config.url]
  const connectors = urls.map((url) => connector(config.target, url))
  const notes: Array<string> = []
  const setupStart = performance.now()

  // --- setup: accounts and chats (Harmony), connections (all) ---------------------------------
  let observer: Account | undefined
  const members: Array<Array<Member>> = []
  const chatIds: Array<string> = []
  if (isHarmony) {
    observer = await http.register(`b${config.runId}o`)
    const names = Array.from({ length: config.chats * config.members }, (_, i) => `b${config.runId}u${i}`)
    let registered = 0
    const accounts = await mapConcurrent(names, 16, async (name) => {
      const account = await http.register(name)
      if (++registered % 200 === 0) log(`registered ${registered}/${names.length} users`)
      return account
    })
    // The observer owns every chat (it never connects): one GET /v1/me/chats reads all last seqs.
    const created = await mapConcurrent(
      Array.from({ length: config.chats }, (_, c) => c),
      8,
      async (c) => {
        const chatMembers = accounts.slice(c * config.members, (c + 1) * config.members)
        const id = await http.createChat(
          observer!,
          `bench ${c}`,
          chatMembers.map((account) => account.id)
        )
        return { id, chatMembers }
      }
    )
    for (const { id, chatMembers } of created) {
      chatIds.push(id)
      members.push(chatMembers.map((account) => ({ chatId: id, token: account.token })))
    }
    log(`registered ${names.length + 1} users, created ${config.chats} chats`)
  } else {
    for (let c = 0; c < config.chats; c++) {
      const id = `room-${c}`
      chatIds.push(id)
      members.push(Array.from({ length: config.members }, () => ({ chatId: id, token: "-" })))
    }
  }

  const chats: Array<Chat> = chatIds.map((id, index) => ({ index, id, conns: [], ackedIds: new Set(), acked: 0 }))
  const conns: Array<Conn> = []
  for (const chat of chats) {
    for (let m = 0; m < config.members; m++) {
      const conn: Conn = {
        index: conns.length,
        chat,
        connection: undefined,
        open: false,
        inflight: new Map(),
        counter: 0,
        lastSeq: 0,
        delivered: 0
      }
      chat.conns.push(conn)
      conns.push(conn)
    }
  }

  let meter = new Meter(performance.now())
  let throughputRunning = false
  let shuttingDown = false

  const bodyPad = "x".repeat(Math.max(0, config.bodyBytes))
  const send = (conn: Conn) => {
    if (!conn.open || conn.connection === undefined) return false
    const clientMsgId = `${conn.index}-${conn.counter++}`
    const now = performance.now()
    const stamp = now.toFixed(3)
    const body = `${stamp}|${bodyPad.slice(0, Math.max(0, config.bodyBytes - stamp.length - 1))}`
    conn.inflight.set(clientMsgId, now)
    meter.sent++
    conn.connection.send(conn.chat.id, clientMsgId, body)
    return true
  }

  const onAck = (conn: Conn, clientMsgId: string) => {
    const sentAt = conn.inflight.get(clientMsgId)
    if (sentAt === undefined) return
    conn.inflight.delete(clientMsgId)
    const now = performance.now()
    const m = meter
    m.acked++
    conn.chat.acked++
    if (isHarmony) conn.chat.ackedIds.add(clientMsgId)
    m.ackLatency.record(now - sentAt)
    if (now >= m.windowStart && now <= m.windowEnd) m.ackedInWindow++
    const second = Math.floor((now - m.start) / 1000)
    m.ackBuckets[second] = (m.ackBuckets[second] ?? 0) + 1
    if (throughputRunning) send(conn)
  }

  const onSendError = (conn: Conn, clientMsgId: string | undefined, code: string) => {
    meter.errors++
    if (meter.errors <= 5) log(`send error on connection ${conn.index}: ${code}`)
    if (clientMsgId !== undefined) conn.inflight.delete(clientMsgId)
    if (throughputRunning) setTimeout(() => send(conn), 10)
  }

  const onMessage = (conn: Conn, seq: number, body: string) => {
    const now = performance.now()
    const m = meter
    if (seq > conn.lastSeq) {
      conn.lastSeq = seq
      conn.delivered++
    } else {
      m.disordered++
    }
    m.delivered++
    if (now >= m.windowStart && now <= m.windowEnd) m.deliveredInWindow++
    const sentAt = Number.parseFloat(body)
    if (sentAt >= m.windowStart) {
      m.latency.record(now - sentAt)
      m.recent.record(now - sentAt)
    }
  }

  const onClose = (conn: Conn, code: string) => {
    conn.open = false
    if (shuttingDown) return
    meter.closes[code] = (meter.closes[code] ?? 0) + 1
    log(`connection ${conn.index} (chat ${conn.chat.index}) closed: ${code}${code === "4008" ? " (too slow)" : ""}`)
  }

  let connected = 0
  await mapConcurrent(conns, 50, async (conn) => {
    conn.connection = await connectors[conn.index % connectors.length]!(
      members[conn.chat.index]![conn.index % config.members]!,
      {
        onAck: (clientMsgId) => onAck(conn, clientMsgId),
        onSendError: (clientMsgId, code) => onSendError(conn, clientMsgId, code),
        onMessage: (seq, body) => onMessage(conn, seq, body),
        onClose: (code) => onClose(conn, code)
      }
    )
    conn.open = true
    if (++connected % 250 === 0) log(`connected ${connected}/${conns.length}`)
  })
  const setupSeconds = (performance.now() - setupStart) / 1000
  log(`${conns.length} connections open and subscribed (setup ${setupSeconds.toFixed(1)} s)`)

  // --- helpers over all connections ------------------------------------------------------------
  const inflight = () => conns.reduce((sum, conn) => sum + conn.inflight.size, 0)
  /** Deliveries still owed to open connections: every acked message of their chat. */
  const owed = () =>
    conns.reduce((sum, conn) => sum + (conn.open ? Math.max(0, conn.chat.acked - conn.delivered) : 0), 0)
  const openCount = () => conns.reduce((sum, conn) => sum + (conn.open ? 1 : 0), 0)

  const waitFor = async (done: () => boolean, seconds: number) => {
    const deadline = performance.now() + seconds * 1000
    while (!done() && performance.now() < deadline) await sleep(20)
    return done()
  }

  let persistedTotal = 0
  const pollPersisted = async () => {
    if (observer === undefined) return null
    try {
      const seqs = await http.lastSeqs(observer)
      persistedTotal = chats.reduce((sum, chat) => sum + (seqs.get(chat.id) ?? 0), 0)
      return seqs
    } catch (error) {
      log(`reading last seqs failed: ${String(error)}`)
      return null
    }
  }
  const allPersisted = (seqs: Map<string, number> | null) =>
    seqs !== null && chats.every((chat) => (seqs.get(chat.id) ?? 0) >= chat.acked)
  /** When every acked message is persisted (polling every 200 ms), or undefined after the timeout. */
  const waitPersisted = async (): Promise<number | undefined> => {
    const deadline = performance.now() + config.persistTimeoutSeconds * 1000
    for (;;) {
      const seqs = await pollPersisted()
      if (inflight() === 0 && allPersisted(seqs)) return performance.now()
      if (performance.now() >= deadline) return undefined
      await sleep(200)
    }
  }

  const cpuGroups = { ...config.cpuPids, generator: [process.pid] }

  /** Progress line every second while `phase` runs. */
  const startProgress = (phase: string, persistedBase: number) => {
    const m = meter
    const timer = setInterval(() => {
      const p99 = m.recent.count > 0 ? m.recent.percentile(99) : null
      m.recent.reset()
      void pollPersisted()
      emit({
        type: "progress",
        label: config.label,
        phase,
        elapsed: (performance.now() - m.start) / 1000,
        sent: m.sent,
        acked: m.acked,
        delivered: m.delivered,
        persisted: isHarmony ? persistedTotal - persistedBase : null,
        p99,
        errors: m.errors,
        closed: Object.values(m.closes).reduce((a, b) => a + b, 0)
      })
    }, 1000)
    return () => clearInterval(timer)
  }

  // --- prime: one message per chat, every member gets it (warms caches, joins the consumer group) --
  {
    meter = new Meter(performance.now())
    const stop = startProgress("prime", 0)
    for (const chat of chats) send(chat.conns[0]!)
    const ok = await waitFor(() => inflight() === 0 && owed() === 0, 120)
    stop()
    if (!ok) {
      notes.push(`prime: after 120 s ${inflight()} sends un-acked, ${owed()} deliveries missing`)
      log(notes.at(-1)!)
    } else {
      log(`primed: one message per chat delivered to all ${conns.length} members`)
    }
  }

  const finish = async (
    scenario: ScenarioName,
    m: Meter,
    cpuStart: CpuSnapshot,
    sendEnd: number,
    persistedBase: number,
    offeredRate: number | null,
    window: readonly [number, number],
    stagesBefore: Promise<StageHistograms | undefined> | undefined
  ): Promise<ScenarioResult> => {
    const acceptedCount = m.acked
    // The drain (acks, deliveries) and the wait for persistence run side by side, each timed on its own.
    const persisted = isHarmony ? waitPersisted() : Promise.resolve(undefined)
    await waitFor(() => inflight() === 0 && owed() === 0, config.drainSeconds)
    const cpu: CpuUsage = usageBetween(cpuStart, snapshot(cpuGroups))
    const persistedAt = await persisted
    // After the drain and persistence: every stage of the window's messages has been observed.
    const stages = isHarmony ? stagesBetween(await stagesBefore, await scrapeStagesOf(urls), stageOrder) : undefined
    let persistedPerSecond: number | null = null
    let persistLagSeconds: number | null = null
    if (persistedAt !== undefined) {
      persistLagSeconds = Math.max(0, (persistedAt - sendEnd) / 1000)
      persistedPerSecond = m.acked / ((persistedAt - m.start) / 1000)
    } else if (isHarmony) {
      notes.push(
        `${scenario}: not everything acked was persisted within ${config.persistTimeoutSeconds} s (${persistedTotal - persistedBase} of ${m.acked})`
      )
      log(notes.at(-1)!)
    }
    const windowSeconds = (m.windowEnd - m.windowStart) / 1000
    const fullSeconds = m.ackBuckets.slice(0, Math.floor((sendEnd - m.start) / 1000))
    const measured = fullSeconds.slice(Math.ceil((m.windowStart - m.start) / 1000))
    const result: ScenarioResult = {
      scenario,
      offeredRate,
      seconds: windowSeconds,
      sent: m.sent,
      acked: m.acked,
      sendErrors: m.errors,
      unacked: inflight(),
      acceptedPerSecond: m.ackedInWindow / windowSeconds,
      minAcceptedPerSecond: measured.length === 0 ? 0 : Math.min(...measured.map((count) => count ?? 0)),
      deliveriesPerSecond: m.deliveredInWindow / windowSeconds,
      delivered: m.delivered,
      missingDeliveries: owed(),
      disorderedDeliveries: m.disordered,
      latency: m.latency.summary(),
      ackLatency: m.ackLatency.summary(),
      persistedPerSecond,
      persistLagSeconds,
      closes: m.closes,
      schedulerLagMaxMs: m.schedulerLagMaxMs,
      cpu,
      monotonicUs: window,
      ...(stages === undefined ? {} : { stages })
    }
    log(
      `${scenario} done: accepted ${result.acceptedPerSecond.toFixed(0)}/s, deliveries ${result.deliveriesPerSecond.toFixed(0)}/s, ` +
        `p50/p99/p999 ${fmt(result.latency.p50)}/${fmt(result.latency.p99)}/${fmt(result.latency.p999)} ms` +
        (persistedPerSecond === null ? "" : `, persisted ${persistedPerSecond.toFixed(0)}/s`) +
        ` (${acceptedCount} acked while sending)`
    )
    return result
  }

  // --- scenarios ---------------------------------------------------------------------------------
  const results: Array<ScenarioResult> = []
  for (const scenario of config.scenarios) {
    for (const conn of conns) conn.inflight.clear()
    await pollPersisted()
    const persistedBase = persistedTotal
    const cpuStart = snapshot(cpuGroups)
    const m = new Meter(performance.now())
    meter = m
    const stop = startProgress(scenario, persistedBase)
    const monotonicStart = monotonicUs()
    let sendEnd: number
    let stagesBefore: Promise<StageHistograms | undefined> | undefined
    if (scenario === "latency") {
      // Fixed rate: send i goes to chat i mod chats, from its members in turn.
      m.windowStart = m.start + config.warmupSeconds * 1000
      const end = m.start + (config.warmupSeconds + config.latencySeconds) * 1000
      m.windowEnd = end
      let index = 0
      for (let now = performance.now(); now < end; now = performance.now()) {
        if (isHarmony && stagesBefore === undefined && now >= m.windowStart) stagesBefore = scrapeStagesOf(urls)
        const due = Math.floor(((now - m.start) / 1000) * config.rate)
        if (index < due)
          m.schedulerLagMaxMs = Math.max(m.schedulerLagMaxMs, now - (m.start + (index * 1000) / config.rate))
        for (; index < due; index++) {
          const chat = chats[index % chats.length]!
          send(chat.conns[Math.floor(index / chats.length) % chat.conns.length]!)
        }
        await sleep(1)
      }
      sendEnd = performance.now()
    } else {
      // As fast as acks come: every connection keeps `window` sends in flight.
      m.windowStart = m.start
      m.windowEnd = m.start + config.throughputSeconds * 1000
      if (isHarmony) stagesBefore = scrapeStagesOf(urls)
      throughputRunning = true
      for (const conn of conns) for (let w = 0; w < config.window; w++) send(conn)
      await sleep(config.throughputSeconds * 1000)
      throughputRunning = false
      sendEnd = performance.now()
    }
    const result = await finish(
      scenario,
      m,
      cpuStart,
      sendEnd,
      persistedBase,
      scenario === "latency" ? config.rate : null,
      [monotonicStart, monotonicUs()],
      stagesBefore
    )
    stop()
    results.push(result)
    if (openCount() === 0) {
      notes.push(`every connection was closed during ${scenario}; later scenarios skipped`)
      break
    }
  }

  // --- Harmony: every acked message persisted exactly once, seqs contiguous -----------------------
  let verify: VerifyResult | null = null
  if (isHarmony && observer !== undefined) {
    log(`checking history of ${chats.length} chats`)
    let persisted = 0
    let missing = 0
    let duplicates = 0
    let gapChats = 0
    await mapConcurrent(chats, 8, async (chat) => {
      const messages = await http.history(observer!, chat.id)
      persisted += messages.length
      const seen = new Set<string>()
      let gap = false
      messages.forEach((message, i) => {
        if (message.seq !== i + 1) gap = true
        if (seen.has(message.clientMsgId)) duplicates++
        seen.add(message.clientMsgId)
      })
      if (gap) gapChats++
      for (const id of chat.ackedIds) if (!seen.has(id)) missing++
    })
    verify = { persisted, missing, duplicates, gapChats, ok: missing === 0 && duplicates === 0 && gapChats === 0 }
    log(
      `history: ${persisted} messages, ${missing} acked but missing, ${duplicates} duplicates, ${gapChats} chats with seq gaps`
    )
  }

  shuttingDown = true
  for (const conn of conns) conn.connection?.close()
  const result: TargetResult = {
    label: config.label,
    target: config.target,
    setupSeconds,
    connections: conns.length,
    scenarios: results,
    verify,
    notes
  }
  emit({ type: "result", result })
}

const fmt = (ms: number) => (Number.isNaN(ms) ? "-" : ms < 10 ? ms.toFixed(2) : ms.toFixed(1))

process.once("message", (message: { type: "start"; config: LoadConfig }) => {
  main(message.config).then(
    () => setTimeout(() => process.exit(0), 200),
    (error: unknown) => {
      emit({ type: "failed", message: error instanceof Error ? (error.stack ?? error.message) : String(error) })
      setTimeout(() => process.exit(1), 200)
    }
  )
})
