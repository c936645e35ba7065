/**
 * The fault-injection suite's own Postgres, Redis, Kafka and DynamoDB Local
 * (scripts/services.sh with a services directory and ports of its own), so
 * that stopping and starting a service is a real outage for the suite's
 * nodes and nobody else. DynamoDB Local keeps its tables in files
 * (`DYNAMODB_STORAGE=disk`) so that they outlive a stop and start, as a real
 * store's do — on a tmpfs (/dev/shm) where there is one: on a disk its
 * SQLite syncs every write (~65 items/s on a two-core machine), far below
 * the load the suite drives; a slow store is a fault of its own (Toxiproxy).
 *
 * Kafka gets a second listener for a proxy in front of it (`kafkaProxy`):
 * it advertises the proxy's address, so clients bootstrapped through the
 * proxy stay behind it.
 *
 * Ports are below the kernel's ephemeral range (32768 and up), so a stopped
 * service's port cannot be taken by some process's outgoing connection
 * before the service starts again.
 */
import { execFile } from "node:child_process"
import { existsSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { join } from "node:path"
import { promisify } from "node:util"
import { repoRoot } from "../support/harmony.ts"

export type Service = "postgres" | "redis" | "kafka" | "dynamodb"

export interface Services {
  /** DATABASE_URL, REDIS_URL, KAFKA_BROKERS, DYNAMODB_ENDPOINT and the AWS variables for a node. */
  readonly env: Record<string, string>
  /** Where a proxy in front of Kafka must listen (the address the broker advertises) and forward to. */
  readonly kafkaProxy: { readonly listen: number; readonly upstream: string }
  /** Stops the service (its process ends; its data stays). */
  stop(service: Service): Promise<void>
  /** Starts it again and waits until it answers. */
  start(service: Service): Promise<void>
  /** Stops every service and removes their data. */
  down(): Promise<void>
}

const run = promisify(execFile)

const listenable = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const server = createServer()
    server.once("error", () => resolve(false))
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)))
  })

/** A free port in 20000..31999, with its neighbour free too when `pair` (Kafka's controller). */
const lowPort = async (taken: Set<number>, pair = false): Promise<number> => {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000)
    const ports = pair ? [port, port + 1] : [port]
    if (ports.some((p) => taken.has(p))) continue
    if ((await Promise.all(ports.map(listenable))).every(Boolean)) {
      for (const p of ports) taken.add(p)
      return port
    }
  }
}

export const startServices = async (name: string): Promise<Services> => {
  const dir = join(repoRoot, ".test-results", name)
  rmSync(dir, { recursive: true, force: true })
  const taken = new Set<number>()
  const ports = {
    PG_PORT: await lowPort(taken),
    REDIS_PORT: await lowPort(taken),
    KAFKA_PORT: await lowPort(taken, true),
    KAFKA_PROXIED_PORT: await lowPort(taken),
    DYNAMODB_PORT: await lowPort(taken)
  }
  const kafkaProxy = { listen: await lowPort(taken), upstream: `127.0.0.1:${ports.KAFKA_PROXIED_PORT}` }
  const dynamoDir = existsSync("/dev/shm") ? join("/dev/shm", `harmony-${name}-${process.pid}`) : join(dir, "dynamodb")
  const scriptEnv = {
    ...process.env,
    ...Object.fromEntries(Object.entries(ports).map(([key, value]) => [key, String(value)])),
    KAFKA_CONTROLLER_PORT: String(ports.KAFKA_PORT + 1),
    KAFKA_PROXIED_ADVERTISED: `127.0.0.1:${kafkaProxy.listen}`,
    HARMONY_SERVICES_DIR: dir,
    DYNAMODB_STORAGE: "disk",
    DYNAMODB_DIR: dynamoDir
  }
  const services = (...args: Array<string>) =>
    run("bash", ["scripts/services.sh", ...args], { cwd: repoRoot, env: scriptEnv, maxBuffer: 16 * 1024 * 1024 })
  await services("up")
  const { stdout } = await services("env")
  const env: Record<string, string> = {}
  for (const [, key, value] of stdout.matchAll(/(\w+)=(\S+)/g)) env[key!] = value!
  return {
    env,
    kafkaProxy,
    stop: async (service) => {
      await services("stop", service)
    },
    start: async (service) => {
      await services("start", service)
    },
    down: async () => {
      await services("down")
      rmSync(dir, { recursive: true, force: true })
      rmSync(dynamoDir, { recursive: true, force: true })
    }
  }
}
