/**
 * `npm run bench -- --scenario connections`: start-up, idle footprint and the
 * memory cost of idle connections, Harmony embedded beside a raw `ws` server.
 *
 * Harmony (embedded, `node bin/harmony.mjs serve` as `npm start` runs it,
 * after timing `npm start`'s prestart, scripts/build-web.mjs, on an
 * unchanged checkout):
 *   1. first start on a fresh data directory (migrations, tables) → /readyz;
 *   2. stopped; the bench seeds the data directory with PGlite directly:
 *      N users and N / members chats of `members` each (registering N users
 *      through the API would hash N passwords; not what is measured);
 *   3. started again `--starts` times on that existing data directory, each
 *      timed from spawn to /readyz answering 200;
 *   4. idle RSS of the last start after `--settle` seconds;
 *   5. N WebSockets authenticated with access tokens the bench signs with the
 *      node's JWT secret (RSS after, settled), then each subscribed to its
 *      chat (RSS after, settled).
 * Raw `ws` (bench/baselines/ws-broadcast.ts) gets steps 4–5 the same way.
 *
 * RSS per connection = (RSS after − RSS before) / N, read from
 * /proc/<pid>/status (VmRSS) after the settle time. RSS includes whatever
 * the garbage collector has not returned yet: compare the two columns of one
 * run, not figures across machines.
 */
import { PGlite } from "@electric-sql/pglite"
import { SignJWT } from "jose"
import { execFileSync } from "node:child_process"
import { randomUUID } from "node:crypto"
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import WebSocket from "ws"
import { type Child, nodeBin, resultsDir, spawnNode, stopChild, tail } from "./children.ts"
import { freePort, sleep } from "./common.ts"
import { mapConcurrent } from "./harmony-http.ts"

export interface ConnectionsOptions {
  readonly connections: number
  readonly members: number
  readonly starts: number
  readonly settleSeconds: number
  readonly concurrency: number
  readonly harmony: boolean
  readonly ws: boolean
  /** The checkout Harmony runs from. */
  readonly serverDir: string
  readonly runStamp: string
  readonly env: Record<string, string>
  readonly out: (line: string) => void
  /** Write a V8 heap snapshot of each server at idle, authenticated and subscribed (bench/results/heap/). */
  readonly heapSnapshots: boolean
}

const heapDir = join(resultsDir, "heap")
/** Node flags that let the bench ask a server for heap snapshots (SIGUSR2) into bench/results/heap. */
const heapArgs = (options: ConnectionsOptions) =>
  options.heapSnapshots ? ["--heapsnapshot-signal=SIGUSR2", `--diagnostic-dir=${heapDir}`] : []

/** Asks the server for a heap snapshot and waits until its file stops growing. */
const heapSnapshot = async (options: ConnectionsOptions, child: Child, phase: string) => {
  if (!options.heapSnapshots) return
  const before = new Set(readdirSync(heapDir))
  process.kill(child.pid, "SIGUSR2")
  for (let i = 0; i < 600; i++) {
    await sleep(1000)
    const file = readdirSync(heapDir).find((name) => !before.has(name) && name.includes(`.${child.pid}.`))
    if (file === undefined) continue
    const size = statSync(join(heapDir, file)).size
    await sleep(2000)
    if (size > 0 && statSync(join(heapDir, file)).size === size) {
      options.out(`[connections] heap snapshot (${phase}): ${join(heapDir, file)}`)
      return
    }
  }
  options.out(`[connections] no heap snapshot (${phase}) after 10 minutes`)
}

export interface FootprintResult {
  readonly label: string
  /** Harmony: seconds `npm start`'s prestart (scripts/build-web.mjs) takes when nothing changed. */
  readonly webBuildSeconds: number | null
  /** Seconds from spawn to /readyz (Harmony: fresh data directory first, then each start on the existing one). */
  readonly firstStartSeconds: number | null
  readonly startSeconds: ReadonlyArray<number>
  readonly idleRssMiB: number
  readonly authenticatedRssMiB: number
  readonly subscribedRssMiB: number
  readonly connections: number
  readonly failedConnections: number
  /** KiB per connection: authenticated over idle, subscribed over idle, and the subscription alone. */
  readonly perAuthenticatedKiB: number
  readonly perSubscribedKiB: number
  readonly perSubscriptionKiB: number
  readonly memoryNotes: ReadonlyArray<string>
}

const kib = (status: Record<string, number>, field: string) => status[field] ?? Number.NaN

/** /proc/<pid>/status memory fields in KiB. */
const procStatus = (pid: number): Record<string, number> => {
  const fields: Record<string, number> = {}
  for (const line of readFileSync(`/proc/${pid}/status`, "utf8").split("\n")) {
    const match = /^(Vm\w+|Rss\w+):\s+(\d+) kB/.exec(line)
    if (match !== null) fields[match[1]!] = Number(match[2])
  }
  return fields
}

/** RSS after `seconds` of quiet, and the anonymous/file split for the notes. */
const settledRss = async (child: Child, seconds: number) => {
  await sleep(seconds * 1000)
  if (child.exited) throw new Error(`the server exited; log tail:\n${tail(child.logFile)}`)
  const status = procStatus(child.pid)
  return {
    rss: kib(status, "VmRSS") / 1024,
    note: `RssAnon ${(kib(status, "RssAnon") / 1024).toFixed(0)} MiB, RssFile ${(kib(status, "RssFile") / 1024).toFixed(0)} MiB, VmHWM ${(kib(status, "VmHWM") / 1024).toFixed(0)} MiB`
  }
}

/** Polls `url` every 50 ms until it answers 200; answers the seconds since `startedAt`. */
const readyAfter = async (child: Child, url: string, startedAt: number, timeoutSeconds = 180) => {
  const deadline = startedAt + timeoutSeconds * 1000
  while (performance.now() < deadline) {
    if (child.exited) throw new Error(`server exited before it was ready; log tail:\n${tail(child.logFile)}`)
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(2_000) })
      await response.arrayBuffer()
      if (response.status === 200) return (performance.now() - startedAt) / 1000
    } catch {
      // not listening yet
    }
    await sleep(50)
  }
  throw new Error(`not ready after ${timeoutSeconds} s; log tail:\n${tail(child.logFile)}`)
}

interface Socket {
  readonly socket: WebSocket
  /** Sends a frame and waits for the first answer of the given type (or fails on error/close). */
  readonly request: (frame: object, answer: string) => Promise<void>
}

const openSocket = (url: string): Promise<Socket> =>
  new Promise((resolve, reject) => {
    const socket = new WebSocket(`${url.replace(/^http/, "ws")}/v1/ws`, { perMessageDeflate: false })
    let waiting: { answer: string; resolve: () => void; reject: (error: Error) => void } | undefined
    socket.on("message", (data) => {
      const frame = JSON.parse(data.toString()) as { type: string; code?: string; message?: string }
      if (waiting === undefined) return
      if (frame.type === waiting.answer) waiting.resolve()
      else if (frame.type === "error") waiting.reject(new Error(`${frame.code}: ${frame.message}`))
      else return
      waiting = undefined
    })
    socket.on("close", (code) => waiting?.reject(new Error(`closed ${code}`)))
    socket.on("error", (error) => {
      waiting?.reject(error)
      reject(error)
    })
    socket.on("open", () =>
      resolve({
        socket,
        request: (frame, answer) =>
          new Promise<void>((resolve, reject) => {
            waiting = { answer, resolve, reject }
            socket.send(JSON.stringify(frame))
          })
      })
    )
  })

/** Opens and authenticates one socket per member, then subscribes each to its chat; RSS after each phase. */
const measureConnections = async (
  options: ConnectionsOptions,
  child: Child,
  url: string,
  members: ReadonlyArray<{ readonly token: string; readonly chatId: string }>
) => {
  const idle = await settledRss(child, options.settleSeconds)
  await heapSnapshot(options, child, "idle")
  options.out(`[connections] idle RSS ${idle.rss.toFixed(1)} MiB (${idle.note}); opening ${members.length} sockets`)
  let failed = 0
  let opened = 0
  const sockets = await mapConcurrent(members, options.concurrency, async (member) => {
    try {
      const socket = await openSocket(url)
      await socket.request({ type: "auth", token: member.token }, "ready")
      if (++opened % 2000 === 0) options.out(`[connections] ${opened} authenticated`)
      return socket
    } catch (error) {
      if (++failed <= 3) options.out(`[connections] a connection failed: ${String(error)}`)
      return undefined
    }
  })
  const authenticated = await settledRss(child, options.settleSeconds)
  await heapSnapshot(options, child, "authenticated")
  options.out(`[connections] authenticated RSS ${authenticated.rss.toFixed(1)} MiB (${authenticated.note})`)
  let subscribed = 0
  await mapConcurrent(members, options.concurrency, async (member, index) => {
    const socket = sockets[index]
    if (socket === undefined) return
    try {
      await socket.request({ type: "subscribe", chatId: member.chatId }, "subscribed")
      if (++subscribed % 2000 === 0) options.out(`[connections] ${subscribed} subscribed`)
    } catch (error) {
      if (++failed <= 3) options.out(`[connections] a subscribe failed: ${String(error)}`)
    }
  })
  const afterSubscribe = await settledRss(child, options.settleSeconds)
  await heapSnapshot(options, child, "subscribed")
  options.out(`[connections] subscribed RSS ${afterSubscribe.rss.toFixed(1)} MiB (${afterSubscribe.note})`)
  for (const socket of sockets) socket?.socket.terminate()
  const n = sockets.filter((socket) => socket !== undefined).length
  const per = (after: number, before: number) => ((after - before) * 1024) / Math.max(1, n)
  return {
    idleRssMiB: idle.rss,
    authenticatedRssMiB: authenticated.rss,
    subscribedRssMiB: afterSubscribe.rss,
    connections: n,
    failedConnections: failed,
    perAuthenticatedKiB: per(authenticated.rss, idle.rss),
    perSubscribedKiB: per(afterSubscribe.rss, idle.rss),
    perSubscriptionKiB: per(afterSubscribe.rss, authenticated.rss),
    memoryNotes: [`idle: ${idle.note}`, `subscribed: ${afterSubscribe.note}`]
  }
}

/**
 * N users and N / members chats straight into the node's PGlite (the node is
 * stopped). Users have no password (nobody logs in; the bench signs their
 * tokens); chats belong to their first member.
 */
const seed = async (pgDir: string, connections: number, members: number) => {
  const users = Array.from({ length: connections }, () => randomUUID())
  const chats = Array.from({ length: Math.ceil(connections / members) }, () => randomUUID())
  const db = new PGlite(pgDir)
  try {
    await db.waitReady
    const stamp = Date.now().toString(36)
    for (let from = 0; from < users.length; from += 5000) {
      const batch = users.slice(from, from + 5000)
      await db.query(
        `INSERT INTO users (id, username, display_name)
         SELECT id, 'conn' || $2 || '_' || (n + $3::int), 'conn ' || (n + $3::int) FROM unnest($1::text[]) WITH ORDINALITY AS u(id, n)`,
        [batch, stamp, from]
      )
    }
    const chatOf = (user: number) => chats[Math.floor(user / members)]!
    await db.query(
      `INSERT INTO chats (id, name, kind, owner_id) SELECT c.id, 'connections ' || c.n, 'group', ($2::text[])[(c.n - 1) * $3::int + 1]
       FROM unnest($1::text[]) WITH ORDINALITY AS c(id, n)`,
      [chats, users, members]
    )
    for (let from = 0; from < users.length; from += 5000) {
      const batch = users.slice(from, from + 5000)
      await db.query(
        `INSERT INTO memberships (chat_id, user_id, role) SELECT c, u, CASE WHEN (n + $3::int - 1) % $4::int = 0 THEN 'owner' ELSE 'member' END
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS m(c, u, n)`,
        [batch.map((_, i) => chatOf(from + i)), batch, from, members]
      )
    }
  } finally {
    await db.close()
  }
  return users.map((id, index) => ({ id, chatId: chats[Math.floor(index / members)]! }))
}

const harmony = async (options: ConnectionsOptions): Promise<FootprintResult> => {
  const dataDir = mkdtempSync(join(tmpdir(), "harmony-bench-connections-"))
  const secret = `harmony-bench-connections-${randomUUID()}`
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const env = {
    ...options.env,
    HARMONY_DATA_DIR: dataDir,
    HARMONY_JWT_SECRET: secret,
    PORT: String(port),
    HOST: "127.0.0.1",
    ACCESS_TOKEN_TTL: "6 hours",
    // Every bench socket comes from 127.0.0.1.
    MAX_SOCKETS_PER_ADDRESS: String(options.connections + 1000)
  }
  // As `npm start` runs it: Node's own type stripping, no tsx.
  const start = (name: string) => {
    const startedAt = performance.now()
    const child = spawnNode(
      [...heapArgs(options), "bin/harmony.mjs", "serve"],
      env,
      options.serverDir,
      join(resultsDir, `${options.runStamp}-${name}.log`)
    )
    return { child, ready: readyAfter(child, `${url}/readyz`, startedAt) }
  }
  try {
    execFileSync(nodeBin, ["scripts/build-web.mjs"], { cwd: options.serverDir, env, stdio: "ignore" })
    const buildStarted = performance.now()
    execFileSync(nodeBin, ["scripts/build-web.mjs"], { cwd: options.serverDir, env, stdio: "ignore" })
    const webBuildSeconds = (performance.now() - buildStarted) / 1000
    options.out(`[harmony-embedded] prestart (build-web.mjs, nothing changed): ${webBuildSeconds.toFixed(2)} s`)
    const first = start("harmony-embedded-first-start")
    const firstStartSeconds = await first.ready
    options.out(`[harmony-embedded] first start (fresh data directory): ready in ${firstStartSeconds.toFixed(2)} s`)
    await stopChild(first.child)
    const seeded = await seed(join(dataDir, "pg"), options.connections, options.members)
    options.out(
      `[harmony-embedded] seeded ${seeded.length} users in ${Math.ceil(seeded.length / options.members)} chats`
    )
    const startSeconds: Array<number> = []
    let child: Child | undefined
    for (let i = 1; i <= options.starts; i++) {
      if (child !== undefined) await stopChild(child)
      const next = start(`harmony-embedded-start-${i}`)
      startSeconds.push(await next.ready)
      child = next.child
      options.out(
        `[harmony-embedded] start ${i} (existing data directory): ready in ${startSeconds.at(-1)!.toFixed(2)} s`
      )
    }
    const key = new TextEncoder().encode(secret)
    const members = await Promise.all(
      seeded.map(async (user) => ({
        chatId: user.chatId,
        token: await new SignJWT({})
          .setProtectedHeader({ alg: "HS256", typ: "JWT" })
          .setSubject(user.id)
          .setIssuedAt()
          .setExpirationTime("6h")
          .sign(key)
      }))
    )
    const measured = await measureConnections(options, child!, url, members)
    await stopChild(child!)
    return { label: "harmony-embedded", webBuildSeconds, firstStartSeconds, startSeconds, ...measured }
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
}

const rawWs = async (options: ConnectionsOptions): Promise<FootprintResult> => {
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const startedAt = performance.now()
  const child = spawnNode(
    [...heapArgs(options), "--import", "tsx", "bench/baselines/ws-broadcast.ts"],
    { ...options.env, PORT: String(port) },
    options.serverDir,
    join(resultsDir, `${options.runStamp}-raw-ws-connections.log`)
  )
  try {
    const ready = await readyAfter(child, `${url}/healthz`, startedAt)
    const members = Array.from({ length: options.connections }, (_, index) => ({
      token: "-",
      chatId: `room-${Math.floor(index / options.members)}`
    }))
    const measured = await measureConnections(options, child, url, members)
    return { label: "raw-ws", webBuildSeconds: null, firstStartSeconds: null, startSeconds: [ready], ...measured }
  } finally {
    await stopChild(child)
  }
}

/** The open-file limit a process needs for `connections` sockets (plus the server's own files). */
export const checkOpenFileLimit = (connections: number): string | undefined => {
  const line = readFileSync("/proc/self/limits", "utf8")
    .split("\n")
    .find((l) => l.startsWith("Max open files"))
  const soft = Number(line?.split(/\s{2,}/)[1])
  return Number.isFinite(soft) && soft < connections + 1000
    ? `the open-file limit is ${soft}; ${connections} sockets need about ${connections + 1000} (raise it with \`ulimit -n\` before the bench: children inherit it)`
    : undefined
}

export const runConnections = async (options: ConnectionsOptions): Promise<Array<FootprintResult>> => {
  if (options.heapSnapshots) mkdirSync(heapDir, { recursive: true })
  const results: Array<FootprintResult> = []
  if (options.harmony) results.push(await harmony(options))
  if (options.ws) results.push(await rawWs(options))
  return results
}

const num = (value: number | null | undefined, digits = 1) =>
  value === null || value === undefined || Number.isNaN(value) ? "–" : value.toFixed(digits)

/** The markdown table of the scenario. */
export const renderConnections = (results: ReadonlyArray<FootprintResult>, header: ReadonlyArray<string>) => {
  const lines = [...header, ""]
  lines.push(`| | ${results.map((r) => r.label).join(" | ")} |`)
  lines.push(`| --- | ${results.map(() => "---").join(" | ")} |`)
  const row = (name: string, cell: (r: FootprintResult) => string) =>
    lines.push(`| ${name} | ${results.map(cell).join(" | ")} |`)
  row("prestart: build-web.mjs, nothing changed (s)", (r) => num(r.webBuildSeconds, 2))
  row("first start, fresh data directory → ready (s)", (r) => num(r.firstStartSeconds, 2))
  row("start on the existing data directory → ready (s)", (r) => r.startSeconds.map((s) => s.toFixed(2)).join(", "))
  row("idle RSS (MiB)", (r) => num(r.idleRssMiB))
  row("connections open (failed)", (r) => `${r.connections} (${r.failedConnections})`)
  row("RSS authenticated / subscribed (MiB)", (r) => `${num(r.authenticatedRssMiB)} / ${num(r.subscribedRssMiB)}`)
  row("**KiB per connection, authenticated**", (r) => num(r.perAuthenticatedKiB))
  row("**KiB per connection, subscribed to one chat**", (r) => num(r.perSubscribedKiB))
  row("of which the subscription (KiB)", (r) => num(r.perSubscriptionKiB))
  lines.push("")
  for (const r of results) for (const note of r.memoryNotes) lines.push(`- ${r.label} ${note}`)
  return lines.join("\n")
}
