/**
 * `npm run bench`: starts each target server in a child process — Harmony in
 * cluster mode (against the local services) and in embedded mode, a raw `ws`
 * broadcast server and a Socket.IO server — drives the same load at each from
 * a load generator in another child process (bench/load.ts), prints progress
 * every second and, at the end, a markdown table with absolute figures and
 * ratios to the baselines. Results also go to bench/results/latest.{json,md}.
 *
 *   npm run bench -- [--mode cluster|embedded|both] [--baselines ws,socketio|none]
 *                    [--scenario latency|throughput|all|connections|search] [--rate 1000] [--chats 100] [--members 10]
 *                    [--duration 60] [--latency-duration 30] [--warmup 5] [--window 1]
 *                    [--body 100] [--quick] [--profile] [--kafka own|shared] [--server-dir DIR] [--nodes 1,2]
 *                    [--otel off|down|up|compare|LIST] [--otel-endpoint URL]
 *
 * --scenario connections [--connections 10000] [--starts 3] [--settle 10]
 * [--connect-concurrency 100] [--heap-snapshots] measures start-up, idle RSS and RSS per idle
 * connection, Harmony embedded beside raw `ws` (bench/connections.ts; its own
 * run, not combined with the other scenarios; cluster mode is not measured).
 *
 * --scenario search [--search-messages 1000000] [--search-seconds 30] [--search-concurrency 4]
 * [--mode cluster|embedded|both] measures full-text search: queries/s and p99 over a seeded history,
 * with the index's size on disk (bench/search.ts; its own run; cluster = Postgres, embedded = PGlite).
 *
 * --nodes LIST (cluster mode; default 1) runs the cluster target once per
 * entry with that many Harmony nodes on this machine, sharing the services
 * (one consumer group: the partitions are split between them); the
 * generator spreads its connections over the nodes, so a chat's members sit
 * on different nodes and its fanout crosses Redis. `--nodes 1,2` reports
 * 1 node beside 2 in the same run.
 *
 * --kafka own (default) starts a private Kafka broker for the cluster run (the
 * shared one's `actors` consumer group is joined by every Harmony node that
 * runs, e.g. test suites', and such a node would sequence and persist part of
 * our chats); --kafka shared uses the services' broker as it is.
 * --server-dir runs Harmony from another checkout (e.g. `git archive REV | tar -x -C DIR`
 * with node_modules linked in), so a tree being edited is not what is measured.
 *
 * --otel down runs Harmony with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a
 * collector that is not there (a closed loopback port unless --otel-endpoint
 * names another, e.g. one that never answers); --otel up exports to a sink
 * in this process that accepts everything (the cost of tracing itself);
 * --otel compare (= off,down) runs each Harmony mode without OTLP and with
 * the collector down and reports the ratios: exporting must not slow the
 * message path when the collector is down. A comma-separated list (e.g.
 * off,down,up) runs each variant in turn.
 */
import { DeleteTableCommand, DynamoDBClient } from "@aws-sdk/client-dynamodb"
import { PgClient } from "@effect/sql-pg"
import { Effect, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { Kafka, logLevel } from "kafkajs"
import { execFileSync, spawn } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer as createHttpServer } from "node:http"
import { createServer as createNetServer } from "node:net"
import { cpus, tmpdir, totalmem } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import {
  freePort,
  type LoadConfig,
  type OtelVariant,
  otelSuffix,
  type LoadEvent,
  type ScenarioName,
  sleep,
  type TargetKind,
  type TargetResult
} from "./common.ts"
import {
  type Child,
  children,
  firstError,
  killChildren,
  nodeBin,
  pendingCleanups,
  repoRoot,
  resultsDir,
  spawnNode,
  stopChild,
  tail,
  waitReady
} from "./children.ts"
import { checkOpenFileLimit, renderConnections, runConnections } from "./connections.ts"
import { summarize } from "./profile.ts"
import { renderSearch, runSearchBench, type SearchBenchResult } from "./search.ts"
import { type RunInfo, render } from "./report.ts"

// --- options ---------------------------------------------------------------------------------------
const { values: flags } = parseArgs({
  options: {
    mode: { type: "string", default: process.env.BENCH_MODE ?? "both" },
    baselines: { type: "string", default: process.env.BENCH_BASELINES ?? "ws,socketio" },
    scenario: { type: "string", default: process.env.BENCH_SCENARIO ?? "all" },
    rate: { type: "string" },
    chats: { type: "string" },
    members: { type: "string" },
    duration: { type: "string" },
    "latency-duration": { type: "string" },
    warmup: { type: "string" },
    window: { type: "string" },
    body: { type: "string" },
    connections: { type: "string" },
    "search-messages": { type: "string" },
    "search-seconds": { type: "string" },
    "search-concurrency": { type: "string" },
    starts: { type: "string" },
    settle: { type: "string" },
    "connect-concurrency": { type: "string" },
    "heap-snapshots": { type: "boolean", default: false },
    quick: { type: "boolean", default: process.env.BENCH_QUICK === "1" },
    profile: { type: "boolean", default: process.env.BENCH_PROFILE === "1" },
    "server-dir": { type: "string", default: process.env.BENCH_SERVER_DIR ?? "" },
    nodes: { type: "string", default: process.env.BENCH_NODES ?? "1" },
    kafka: { type: "string", default: process.env.BENCH_KAFKA ?? "own" },
    otel: { type: "string", default: process.env.BENCH_OTEL ?? "off" },
    "otel-endpoint": { type: "string", default: process.env.BENCH_OTEL_ENDPOINT ?? "" },
    help: { type: "boolean", short: "h", default: false }
  },
  strict: true
})

if (flags.help) {
  const source = readFileSync(fileURLToPath(import.meta.url), "utf8")
  console.log(/\/\*\*([\s\S]*?)\*\//.exec(source)?.[1]?.replace(/^ \* ?/gm, "") ?? "")
  process.exit(0)
}

const quick = flags.quick
const int = (flag: string | undefined, env: string, fallback: number) => {
  const raw = flag ?? process.env[env]
  if (raw === undefined) return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value <= 0)
    throw new Error(`bench: ${env.toLowerCase()} must be a positive number, got ${raw}`)
  return value
}
const options = {
  chats: int(flags.chats, "BENCH_CHATS", quick ? 20 : 100),
  members: int(flags.members, "BENCH_MEMBERS", 10),
  rate: int(flags.rate, "BENCH_RATE", quick ? 500 : 1000),
  throughputSeconds: int(flags.duration, "BENCH_DURATION", quick ? 8 : 60),
  latencySeconds: int(flags["latency-duration"], "BENCH_LATENCY_DURATION", quick ? 5 : 30),
  warmupSeconds: int(flags.warmup, "BENCH_WARMUP", quick ? 2 : 5),
  window: int(flags.window, "BENCH_WINDOW", 1),
  bodyBytes: int(flags.body, "BENCH_BODY", 100)
}
const modes: Array<"cluster" | "embedded"> =
  flags.mode === "both"
    ? ["cluster", "embedded"]
    : flags.mode === "cluster" || flags.mode === "embedded"
      ? [flags.mode]
      : []
if (modes.length === 0 && flags.mode !== "none")
  throw new Error(`bench: --mode must be cluster, embedded, both or none`)
const baselines = flags.baselines === "none" ? [] : flags.baselines.split(",").map((name) => name.trim())
for (const name of baselines) {
  if (name !== "ws" && name !== "socketio") throw new Error(`bench: unknown baseline ${name} (ws, socketio or none)`)
}
const connectionsScenario = flags.scenario === "connections"
const searchScenario = flags.scenario === "search"
const scenarios: Array<ScenarioName> =
  flags.scenario === "all" || connectionsScenario || searchScenario
    ? ["latency", "throughput"]
    : flags.scenario === "latency" || flags.scenario === "throughput"
      ? [flags.scenario]
      : []
if (scenarios.length === 0) throw new Error("bench: --scenario must be latency, throughput, all, connections or search")
if (flags.kafka !== "own" && flags.kafka !== "shared") throw new Error("bench: --kafka must be own or shared")
const nodeCounts = flags.nodes.split(",").map((entry) => {
  const count = Number(entry.trim())
  if (!Number.isInteger(count) || count < 1 || count > 8)
    throw new Error(`bench: --nodes takes counts 1 to 8, got ${entry}`)
  return count
})
const otelVariants: Array<OtelVariant> = (flags.otel === "compare" ? "off,down" : flags.otel)
  .split(",")
  .map((variant) => variant.trim() as OtelVariant)
for (const variant of otelVariants) {
  if (variant !== "off" && variant !== "down" && variant !== "up")
    throw new Error("bench: --otel must be off, down, up, compare or a comma-separated list of off, down and up")
}

// kafkajs' admin client schedules a timer with a negative delay (TimeoutNegativeWarning): harmless noise.
process.removeAllListeners("warning")
process.on("warning", (warning) => {
  if (warning.name !== "TimeoutNegativeWarning") process.stderr.write(`${warning.name}: ${warning.message}\n`)
})

const runStamp = new Date().toISOString().replace(/[-:T]/g, "").slice(0, 14)
const runId = Date.now().toString(36).slice(-6)
const out = (line: string) => process.stdout.write(`${line}\n`)
const warnings: Array<string> = []

// --- child processes ---------------------------------------------------------------------------------
process.on("exit", killChildren)
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    out(`bench: ${signal}, cleaning up and stopping`)
    killChildren()
    const cleanups = [...pendingCleanups].map((cleanup) => cleanup().catch(() => {}))
    void Promise.race([Promise.all(cleanups), sleep(20_000)]).then(() => process.exit(130))
  })
}

const serverDir = flags["server-dir"] === "" ? repoRoot : flags["server-dir"]

const startNode = (
  name: string,
  script: ReadonlyArray<string>,
  env: Record<string, string>,
  nodeArgs: ReadonlyArray<string> = [],
  cwd: string = repoRoot
): Child =>
  spawnNode([...nodeArgs, "--import", "tsx", ...script], env, cwd, join(resultsDir, `${runStamp}-${name}.log`))

const baseEnv = (): Record<string, string> => {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) if (value !== undefined) env[name] = value
  for (const name of serviceVariables) delete env[name]
  delete env.HARMONY_DATA_DIR
  delete env.HARMONY_JWT_SECRET
  env.PATH = `${join(repoRoot, "node_modules", ".bin")}:${env.PATH ?? ""}`
  return env
}

// --- cluster services ----------------------------------------------------------------------------------
const serviceVariables = ["DATABASE_URL", "KAFKA_BROKERS", "REDIS_URL", "DYNAMODB_ENDPOINT"] as const

/** The service URLs from the environment, or from scripts/services.sh after starting what is down. */
let servicesEnv: Record<string, string> | undefined
const clusterServices = (): Record<string, string> => {
  servicesEnv ??= findServices()
  return servicesEnv
}
const findServices = (): Record<string, string> => {
  const given = serviceVariables.filter((name) => (process.env[name] ?? "") !== "")
  const env: Record<string, string> = {}
  if (given.length === serviceVariables.length) {
    for (const name of [...serviceVariables, "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]) {
      const value = process.env[name]
      if (value !== undefined) env[name] = value
    }
    env.AWS_REGION ??= "us-east-1"
    env.AWS_ACCESS_KEY_ID ??= "local"
    env.AWS_SECRET_ACCESS_KEY ??= "local"
    return env
  }
  if (given.length > 0) throw new Error(`bench: cluster mode needs all of ${serviceVariables.join(", ")} or none`)
  out("bench: starting the local services (bash scripts/services.sh up)")
  execFileSync("bash", ["scripts/services.sh", "up"], { cwd: repoRoot, stdio: ["ignore", "inherit", "inherit"] })
  const exports = execFileSync("bash", ["scripts/services.sh", "env"], { cwd: repoRoot, encoding: "utf8" })
  for (const match of exports.matchAll(/(\w+)=(\S+)/g)) env[match[1]!] = match[2]!
  return env
}

/** A Kafka broker of the bench's own (scripts/services.sh with its own services dir and port: the
 * other services answer already, so only Kafka starts). Answers its bootstrap address. */
let ownKafka: { brokers: string; pid: number | undefined; stop: () => Promise<void> } | undefined
const startOwnKafka = async (): Promise<string> => {
  if (ownKafka !== undefined) return ownKafka.brokers
  let port = await freePort()
  for (let i = 0; i < 20 && !(await portFree(port + 1)); i++) port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "harmony-bench-kafka-"))
  out(`bench: starting a private Kafka broker on 127.0.0.1:${port} (data in ${dir})`)
  const env = {
    ...process.env,
    HARMONY_SERVICES_DIR: dir,
    KAFKA_PORT: String(port),
    KAFKA_CONTROLLER_PORT: String(port + 1)
  }
  const cleanup = async () => {
    const pid = ownKafka?.pid ?? readPid(join(dir, "run", "kafka.pid"))
    if (pid !== undefined) {
      try {
        process.kill(pid, "SIGTERM")
        for (let i = 0; i < 300 && isAlive(pid); i++) await sleep(100)
        if (isAlive(pid)) process.kill(pid, "SIGKILL")
      } catch {
        // gone
      }
    }
    rmSync(dir, { recursive: true, force: true })
    pendingCleanups.delete(cleanup)
  }
  pendingCleanups.add(cleanup)
  execFileSync("bash", ["scripts/services.sh", "up"], { cwd: repoRoot, env, stdio: ["ignore", "inherit", "inherit"] })
  ownKafka = { brokers: `127.0.0.1:${port}`, pid: readPid(join(dir, "run", "kafka.pid")), stop: cleanup }
  return ownKafka.brokers
}
const stopOwnKafka = async () => {
  await ownKafka?.stop()
  ownKafka = undefined
}

const portFree = (port: number) =>
  new Promise<boolean>((resolve) => {
    const server = createNetServer()
    server.once("error", () => resolve(false))
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)))
  })
const readPid = (file: string): number | undefined => {
  try {
    const pid = Number(readFileSync(file, "utf8").trim())
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}
const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

const adminSql = (url: string, statement: string) =>
  Effect.runPromise(
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      yield* sql.unsafe(statement)
    }).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(url), maxConnections: 1 })))
  )

/** Members of the `actors` consumer group on chat.messages: another Harmony node would share our partitions. */
const actorsGroupMembers = async (brokers: string): Promise<number | undefined> => {
  const admin = new Kafka({ brokers: brokers.split(","), logLevel: logLevel.NOTHING }).admin()
  try {
    await admin.connect()
    const { groups } = await admin.describeGroups(["actors"])
    return groups[0]?.members.length ?? 0
  } catch {
    return undefined
  } finally {
    await admin.disconnect().catch(() => {})
  }
}

/** The services' processes, for CPU accounting (found by command line; our own broker by its pid). */
const servicePids = (): Record<string, Array<number>> => {
  const found = matchServicePids()
  if (ownKafka?.pid !== undefined) found.kafka = [ownKafka.pid]
  return found
}
const matchServicePids = (): Record<string, Array<number>> => {
  const patterns: Record<string, RegExp> = {
    kafka: /kafka\.Kafka/,
    dynamodb: /DynamoDBLocal|dynamodbv2\.local/,
    redis: /^\S*redis-server/,
    postgres: /^\S*postgres( |:|$)/
  }
  const pids: Record<string, Array<number>> = { kafka: [], dynamodb: [], redis: [], postgres: [] }
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    let cmdline = ""
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").replace(/\0/g, " ")
    } catch {
      continue
    }
    for (const [name, pattern] of Object.entries(patterns)) if (pattern.test(cmdline)) pids[name]!.push(Number(entry))
  }
  return pids
}

/** With --profile, every server writes a V8 CPU profile when it exits. */
const profileArgs = (label: string): Array<string> => {
  if (!flags.profile) return []
  const dir = join(resultsDir, "profiles")
  mkdirSync(dir, { recursive: true })
  return ["--cpu-prof", `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${runStamp}-${label}.cpuprofile`]
}

// --- targets ----------------------------------------------------------------------------------------------
interface Target {
  readonly label: string
  readonly kind: TargetKind
  /** Starts the server; answers its URL, its pid and how to clean up. */
  readonly start: () => Promise<{
    url: string
    /** Every node's URL, when there are several (the first is `url`). */
    urls?: ReadonlyArray<string>
    child: Child
    /** The other nodes. */
    others?: ReadonlyArray<Child>
    cleanup: () => Promise<void>
  }>
  readonly cpuPids: () => Record<string, Array<number>>
}

/** Where `--otel down` points OTLP: the given endpoint, or a loopback port nobody listens on. */
const unreachableOtlpEndpoint = async () =>
  flags["otel-endpoint"] !== "" ? flags["otel-endpoint"] : `http://127.0.0.1:${await freePort()}`

/** `--otel up`: an OTLP/HTTP sink in this process that accepts (and counts) every export. */
let otlpSink: { readonly url: string; readonly bytes: () => number; readonly close: () => Promise<void> } | undefined
const startOtlpSink = async () => {
  if (otlpSink !== undefined) return otlpSink.url
  let bytes = 0
  const server = createHttpServer((request, response) => {
    request.on("data", (chunk: Buffer) => {
      bytes += chunk.length
    })
    request.on("end", () => {
      response.writeHead(200, { "content-type": "application/json" })
      response.end("{}")
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as { port: number }
  otlpSink = {
    url: `http://127.0.0.1:${port}`,
    bytes: () => bytes,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
  return otlpSink.url
}

const harmonyTarget = (mode: "cluster" | "embedded", otel: OtelVariant = "off", nodes = 1): Target => {
  const label = `harmony-${mode}${nodes > 1 ? `-${nodes}nodes` : ""}${otelSuffix(otel)}`
  return {
    label,
    kind: "harmony",
    cpuPids: () => (mode === "cluster" ? servicePids() : {}),
    start: async () => {
      const port = await freePort()
      const env = baseEnv()
      delete env.OTEL_EXPORTER_OTLP_ENDPOINT
      if (otel === "down") env.OTEL_EXPORTER_OTLP_ENDPOINT = await unreachableOtlpEndpoint()
      if (otel === "up") env.OTEL_EXPORTER_OTLP_ENDPOINT = await startOtlpSink()
      env.PORT = String(port)
      env.HOST = "127.0.0.1"
      env.ACCESS_TOKEN_TTL = "6 hours"
      // Setting up registers chats × members users from one address: not what is measured.
      env.RATE_LIMIT_REGISTER ??= "100000/10000"
      // Every connection of the load generator comes from 127.0.0.1.
      env.MAX_SOCKETS_PER_ADDRESS ??= String(options.chats * options.members + 1000)
      const cleanups: Array<() => Promise<void>> = []
      if (mode === "embedded") {
        const dataDir = mkdtempSync(join(tmpdir(), "harmony-bench-"))
        env.HARMONY_DATA_DIR = dataDir
        cleanups.push(async () => rmSync(dataDir, { recursive: true, force: true }))
      } else {
        const services = { ...clusterServices() }
        if (flags.kafka === "own") services.KAFKA_BROKERS = await startOwnKafka()
        Object.assign(env, services)
        // A database and a DynamoDB table of its own, dropped afterwards.
        const database = `harmony_bench_${runStamp}_${runId}`
        await adminSql(services.DATABASE_URL!, `CREATE DATABASE ${database}`)
        const dbUrl = new URL(services.DATABASE_URL!)
        dbUrl.pathname = `/${database}`
        env.DATABASE_URL = dbUrl.toString()
        env.DYNAMODB_TABLE = database
        env.HARMONY_JWT_SECRET = `harmony-bench-secret-${runId}-0123456789abcdef`
        const dropStores = async () => {
          pendingCleanups.delete(dropStores)
          const dynamo = new DynamoDBClient({
            endpoint: services.DYNAMODB_ENDPOINT!,
            region: services.AWS_REGION ?? "us-east-1",
            credentials: {
              accessKeyId: services.AWS_ACCESS_KEY_ID ?? "local",
              secretAccessKey: services.AWS_SECRET_ACCESS_KEY ?? "local"
            }
          })
          await dynamo.send(new DeleteTableCommand({ TableName: database })).catch((error: unknown) => {
            out(`bench: could not delete DynamoDB table ${database}: ${String(error)}`)
          })
          dynamo.destroy()
          await adminSql(services.DATABASE_URL!, `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(
            (error: unknown) => out(`bench: could not drop database ${database}: ${String(error)}`)
          )
        }
        pendingCleanups.add(dropStores)
        cleanups.push(dropStores)
        const members = flags.kafka === "own" ? 0 : await actorsGroupMembers(services.KAFKA_BROKERS!)
        if (members !== undefined && members > 0) {
          const warning = `${members} other member(s) in Kafka consumer group "actors" before the cluster run: another Harmony node (e.g. a test suite) shares chat.messages' partitions, so some of our chats are sequenced and persisted by it (latency and persistence figures are then not ours alone)`
          warnings.push(warning)
          out(`bench: warning: ${warning}`)
        }
      }
      const startOne = async (name: string, nodeEnv: Record<string, string>, url: string): Promise<Child> => {
        for (let attempt = 1; ; attempt++) {
          // As `npm start` runs it: Node's own type stripping (no tsx), with bin/harmony.mjs's flags.
          const candidate = spawnNode(
            [...profileArgs(name), "bin/harmony.mjs", "serve"],
            nodeEnv,
            serverDir,
            join(resultsDir, `${runStamp}-${name}${attempt === 1 ? "" : `-${attempt}`}.log`)
          )
          try {
            await waitReady(candidate, `${url}/readyz`, 120)
            return candidate
          } catch (error) {
            await stopChild(candidate)
            // A node that exits while starting (e.g. racing a fresh broker's topic creation) gets one more try.
            if (attempt === 1 && candidate.exited) {
              const warning = `${name} exited while starting and was started again: ${firstError(candidate.logFile)}`
              warnings.push(warning)
              out(`bench: warning: ${warning}`)
              continue
            }
            throw error
          }
        }
      }
      const started: Array<Child> = []
      const urls: Array<string> = []
      try {
        // One after another: the first creates the topics and runs the migrations.
        for (let node = 0; node < nodes; node++) {
          const nodePort = node === 0 ? port : await freePort()
          const url = `http://127.0.0.1:${nodePort}`
          started.push(
            await startOne(node === 0 ? label : `${label}-${node + 1}`, { ...env, PORT: String(nodePort) }, url)
          )
          urls.push(url)
        }
      } catch (error) {
        for (const child of started) await stopChild(child)
        for (const cleanup of cleanups) await cleanup()
        throw error
      }
      const [child, ...others] = started
      return {
        url: urls[0]!,
        urls,
        child: child!,
        others,
        cleanup: async () => {
          for (const other of others) await stopChild(other)
          for (const cleanup of cleanups) await cleanup()
        }
      }
    }
  }
}

const baselineTarget = (kind: "ws" | "socketio"): Target => ({
  label: kind === "ws" ? "raw-ws" : "socket.io",
  kind,
  cpuPids: () => ({}),
  start: async () => {
    const port = await freePort()
    const env = baseEnv()
    env.PORT = String(port)
    const script = kind === "ws" ? "bench/baselines/ws-broadcast.ts" : "bench/baselines/socketio.ts"
    const child = startNode(
      kind === "ws" ? "raw-ws" : "socketio",
      [script],
      env,
      profileArgs(kind === "ws" ? "raw-ws" : "socket.io")
    )
    const url = `http://127.0.0.1:${port}`
    await waitReady(child, `${url}/healthz`, 30)
    return { url, child, cleanup: async () => {} }
  }
})

/** The membership cache's hit rate over the run, from the server's /metrics. */
const cacheHitRate = async (url: string): Promise<string> => {
  try {
    const text = await (await fetch(`${url}/metrics`)).text()
    const count = (result: string) =>
      Number(new RegExp(`^harmony_cache_lookups_total\\{result="${result}"\\} (\\S+)$`, "m").exec(text)?.[1] ?? 0)
    const [hit, miss, error] = [count("hit"), count("miss"), count("error")]
    const total = hit + miss + error
    return total === 0
      ? "membership cache: no lookups"
      : `membership cache hit rate ${((100 * hit) / total).toFixed(1)}% (${hit} hits, ${miss} misses, ${error} errors)`
  } catch (error) {
    return `membership cache hit rate unknown: ${error instanceof Error ? error.message : String(error)}`
  }
}

/** Runs the load generator against one started target; answers its result. */
const runLoad = (config: LoadConfig, server: Child): Promise<TargetResult> =>
  new Promise((resolve, reject) => {
    const generator = spawn(nodeBin, ["--import", "tsx", "bench/load.ts"], {
      cwd: repoRoot,
      env: baseEnv(),
      stdio: ["ignore", "inherit", "inherit", "ipc"]
    })
    children.add(generator)
    let settled = false
    const settle = (action: () => void) => {
      if (settled) return
      settled = true
      clearInterval(watchdog)
      action()
    }
    // The server dying mid-run fails this target, not the whole bench.
    const watchdog = setInterval(() => {
      if (server.exited) {
        generator.kill("SIGKILL")
        settle(() => reject(new Error(`the server exited during the run; log tail:\n${tail(server.logFile)}`)))
      }
    }, 500)
    generator.on("message", (event: LoadEvent) => {
      switch (event.type) {
        case "log":
          out(`[${config.label}] ${event.text}`)
          return
        case "progress":
          out(
            `[${event.label}] ${event.phase.padEnd(10)} t=${event.elapsed.toFixed(0).padStart(3)}s sent=${event.sent} acked=${event.acked} ` +
              `delivered=${event.delivered}${event.persisted === null ? "" : ` persisted=${event.persisted}`}` +
              `${event.p99 === null ? "" : ` p99(1s)=${event.p99.toFixed(1)}ms`}` +
              `${event.errors > 0 ? ` errors=${event.errors}` : ""}${event.closed > 0 ? ` closed=${event.closed}` : ""}`
          )
          return
        case "result":
          settle(() => resolve(event.result))
          return
        case "failed":
          settle(() => reject(new Error(`load generator failed: ${event.message}`)))
          return
      }
    })
    generator.on("exit", (code) => {
      children.delete(generator)
      settle(() => reject(new Error(`load generator exited (${code}) without a result`)))
    })
    generator.send({ type: "start", config })
  })

/** Where the measured Harmony comes from: the directory, and its git commit when it is a checkout. */
const serverDescription = () => {
  try {
    const rev = execFileSync("git", ["describe", "--always", "--dirty"], {
      cwd: serverDir,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"]
    }).trim()
    return `${serverDir} (git ${rev})`
  } catch {
    return serverDir
  }
}

// --- main --------------------------------------------------------------------------------------------------
const connectionsMain = async () => {
  const connections = int(flags.connections, "BENCH_CONNECTIONS", quick ? 2000 : 10_000)
  const startedAt = new Date().toISOString()
  const command = `npm run bench -- ${process.argv.slice(2).join(" ")}`
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${execFileSync(nodeBin, ["--version"], { encoding: "utf8" }).trim()}, load average at start ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`
  out(`bench: ${command}`)
  out(`bench: ${machine}`)
  const limit = checkOpenFileLimit(connections)
  if (limit !== undefined) throw new Error(`bench: ${limit}`)
  const results = await runConnections({
    connections,
    members: options.members,
    starts: int(flags.starts, "BENCH_STARTS", 3),
    settleSeconds: int(flags.settle, "BENCH_SETTLE", quick ? 3 : 10),
    concurrency: int(flags["connect-concurrency"], "BENCH_CONNECT_CONCURRENCY", 100),
    harmony: modes.includes("embedded"),
    ws: baselines.includes("ws"),
    serverDir,
    runStamp,
    env: baseEnv(),
    out,
    heapSnapshots: flags["heap-snapshots"]
  })
  const report = renderConnections(results, [
    `## connections scenario, ${startedAt}`,
    "",
    `- command: \`${command}\``,
    `- Harmony: ${serverDescription()}`,
    `- machine: ${machine}`,
    `- ${connections} WebSockets, ${options.members} per chat`
  ])
  out(`\n${report}\n`)
  writeFileSync(
    join(resultsDir, `${runStamp}-connections.json`),
    `${JSON.stringify({ startedAt, command, machine, results }, null, 2)}\n`
  )
  writeFileSync(join(resultsDir, "latest-connections.md"), `${report}\n`)
}

const searchMain = async () => {
  const startedAt = new Date().toISOString()
  const command = `npm run bench -- ${process.argv.slice(2).join(" ")}`
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${execFileSync(nodeBin, ["--version"], { encoding: "utf8" }).trim()}, load average at start ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`
  out(`bench: ${command}`)
  out(`bench: ${machine}`)
  const messages = int(flags["search-messages"], "BENCH_SEARCH_MESSAGES", quick ? 100_000 : 1_000_000)
  const results: Array<SearchBenchResult> = []
  for (const mode of modes) {
    results.push(
      await runSearchBench({
        target: mode === "cluster" ? "postgres" : "pglite",
        databaseUrl: process.env.DATABASE_URL,
        messages,
        chats: 2_000,
        users: 2_000,
        memberships: 20,
        batch: 1_000,
        seconds: int(flags["search-seconds"], "BENCH_SEARCH_SECONDS", quick ? 10 : 30),
        concurrency: int(flags["search-concurrency"], "BENCH_SEARCH_CONCURRENCY", 4),
        out
      })
    )
  }
  const report = renderSearch(results, [
    `## search scenario, ${startedAt}`,
    "",
    `- command: \`${command}\``,
    `- machine: ${machine}`,
    `- ${messages.toLocaleString("en")} messages in 2,000 chats; 2,000 users, each a member of 20 chats; queries of one or two Zipf-drawn words, pages of 20`
  ])
  out(`\n${report}\n`)
  writeFileSync(
    join(resultsDir, `${runStamp}-search.json`),
    `${JSON.stringify({ startedAt, command, machine, results }, null, 2)}\n`
  )
  writeFileSync(join(resultsDir, "latest-search.md"), `${report}\n`)
}

const main = async () => {
  mkdirSync(resultsDir, { recursive: true })
  if (connectionsScenario) return connectionsMain()
  if (searchScenario) return searchMain()
  const targets: Array<Target> = [
    ...modes.flatMap((mode) =>
      otelVariants.flatMap((variant) =>
        mode === "cluster"
          ? nodeCounts.map((nodes) => harmonyTarget(mode, variant, nodes))
          : [harmonyTarget(mode, variant)]
      )
    ),
    ...baselines.map((name) => baselineTarget(name as "ws" | "socketio"))
  ]
  const startedAt = new Date().toISOString()
  const command = `npm run bench --${process.argv.slice(2).length === 0 ? "" : ` ${process.argv.slice(2).join(" ")}`}`
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${execFileSync(nodeBin, ["--version"], { encoding: "utf8" }).trim()}, load average at start ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`
  out(`bench: ${command}`)
  out(`bench: ${machine}`)
  if (serverDir !== repoRoot) out(`bench: Harmony runs from ${serverDir}`)
  out(
    `bench: ${targets.map((target) => target.label).join(", ")}; ${scenarios.join(" + ")}; ${options.chats} chats × ${options.members} members; ` +
      `rate ${options.rate}/s for ${options.latencySeconds}+${options.warmupSeconds} s; throughput ${options.throughputSeconds} s, window ${options.window}`
  )

  const results: Array<TargetResult> = []
  for (const target of targets) {
    out(`\nbench: === ${target.label} ===`)
    const t0 = performance.now()
    let started: Awaited<ReturnType<Target["start"]>> | undefined
    try {
      started = await target.start()
      out(
        `bench: ${target.label} ready at ${started.url} in ${((performance.now() - t0) / 1000).toFixed(1)} s (log ${started.child.logFile})`
      )
      const config: LoadConfig = {
        target: target.kind,
        label: target.label,
        url: started.url,
        ...(started.urls === undefined ? {} : { urls: started.urls }),
        chats: options.chats,
        members: options.members,
        scenarios,
        rate: options.rate,
        latencySeconds: options.latencySeconds,
        warmupSeconds: options.warmupSeconds,
        throughputSeconds: options.throughputSeconds,
        window: options.window,
        bodyBytes: options.bodyBytes,
        drainSeconds: 30,
        persistTimeoutSeconds: 180,
        runId: `${runId}${target.label.slice(-1)}`,
        cpuPids: {
          server: [started.child.pid, ...(started.others ?? []).map((other) => other.pid)],
          ...target.cpuPids()
        }
      }
      const result = await runLoad(config, started.child)
      results.push(
        target.kind === "harmony" ? { ...result, notes: [...result.notes, await cacheHitRate(started.url)] } : result
      )
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error)
      out(`bench: ${target.label} FAILED: ${message}`)
      results.push({
        label: target.label,
        target: target.kind,
        setupSeconds: 0,
        connections: 0,
        scenarios: [],
        verify: null,
        notes: [`FAILED: ${message.split("\n")[0]}`]
      })
    } finally {
      if (started !== undefined) {
        await stopChild(started.child)
        await started.cleanup()
        if (flags.profile) {
          const file = join(resultsDir, "profiles", `${runStamp}-${target.label}.cpuprofile`)
          if (existsSync(file)) {
            // One summary per scenario, cut to its sending window (setup is not what we measure).
            const result = results.at(-1)
            const summaries = (result?.label === target.label ? result.scenarios : []).map(
              (scenario) => `== ${target.label} / ${scenario.scenario} ==\n${summarize(file, scenario.monotonicUs)}`
            )
            if (summaries.length === 0) summaries.push(summarize(file))
            const summary = summaries.join("\n\n")
            writeFileSync(file.replace(/\.cpuprofile$/, ".txt"), `${summary}\n`)
            out(summary)
          } else {
            out(`bench: no CPU profile at ${file}`)
          }
        }
      }
    }
    if (target.label.startsWith("harmony-cluster")) await stopOwnKafka()
    if (target.label.startsWith("harmony-cluster") && flags.kafka !== "own") {
      const services = (() => {
        try {
          return clusterServices()
        } catch {
          return undefined
        }
      })()
      const members = services === undefined ? undefined : await actorsGroupMembers(services.KAFKA_BROKERS!)
      if (members !== undefined && members > 0) {
        warnings.push(
          `${members} member(s) still in consumer group "actors" after our cluster node stopped: another Harmony node was running`
        )
      }
    }
  }

  for (const cleanup of [...pendingCleanups]) await cleanup().catch(() => {})
  if (otlpSink !== undefined) {
    out(`bench: the OTLP sink received ${(otlpSink.bytes() / 2 ** 20).toFixed(1)} MiB of telemetry`)
    await otlpSink.close()
  }

  const info: RunInfo = {
    command,
    server: serverDescription(),
    startedAt,
    machine,
    chats: options.chats,
    members: options.members,
    rate: options.rate,
    latencySeconds: options.latencySeconds,
    throughputSeconds: options.throughputSeconds,
    window: options.window,
    warnings
  }
  const report = render(info, results)
  out(`\n${report}\n`)
  writeFileSync(join(resultsDir, "latest.json"), `${JSON.stringify({ info, options, results }, null, 2)}\n`)
  writeFileSync(join(resultsDir, `${runStamp}.json`), `${JSON.stringify({ info, options, results }, null, 2)}\n`)
  writeFileSync(join(resultsDir, "latest.md"), `${report}\n`)
  out(`bench: results in bench/results/latest.json and latest.md`)
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    out(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`)
    process.exit(1)
  }
)
