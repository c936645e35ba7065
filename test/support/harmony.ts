/**
 * Runs the real `harmony serve` binary as a child process for black-box
 * tests: a free port, a clean environment for the chosen mode, readiness
 * polling, graceful stop. General enough for several nodes at once (each
 * call is one process; cluster-mode nodes share the services and the JWT
 * secret, so a token from one node works on another).
 */
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { delimiter, join } from "node:path"
import { fileURLToPath } from "node:url"
import { serviceUrl } from "./services.ts"

/** The repository root (this file is test/support/harmony.ts). */
export const repoRoot = fileURLToPath(new URL("../../", import.meta.url))

/** The signing secret every cluster-mode node started here shares (40 characters). */
export const clusterJwtSecret = "harmony-test-secret-0123456789abcdefghij"

const serviceVariables = ["DATABASE_URL", "KAFKA_BROKERS", "REDIS_URL", "DYNAMODB_ENDPOINT"] as const
const awsVariables = ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] as const

export interface HarmonyOptions {
  readonly mode: "embedded" | "cluster"
  /** Extra variables (win over everything else); a value of "" is passed as the empty string. */
  readonly env?: Record<string, string>
  /** Embedded mode: the data directory (default: a fresh temporary one, removed on stop). */
  readonly dataDir?: string
  /** The port to listen on (default: a free one). */
  readonly port?: number
  /** How long to wait for GET /readyz to answer 200 (default 60 s). */
  readonly readyTimeoutMs?: number
}

export interface Exit {
  readonly code: number | null
  readonly signal: string | null
}

export interface Harmony {
  readonly url: string
  readonly port: number
  readonly pid: number
  /** Embedded mode: the data directory in use. */
  readonly dataDir: string | undefined
  /** Sends `signal` (default SIGTERM), waits for the exit (SIGKILL after 20 s), answers how it exited. Idempotent. */
  stop(signal?: NodeJS.Signals): Promise<Exit>
  /** Everything the process wrote to stdout and stderr so far. */
  logs(): string
  /** Whether the process has exited. */
  exited(): boolean
}

/** A port nobody listens on right now (listen on 0, close, reuse). */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      if (address === null || typeof address === "string") {
        server.close()
        reject(new Error("could not determine a free port"))
        return
      }
      server.close(() => resolve(address.port))
    })
  })

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

// Children run in their own process group (so a kill reaches anything they
// started too); make sure none outlives the test process.
const live = new Set<ChildProcess>()
let exitHookInstalled = false
const installExitHook = () => {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.on("exit", () => {
    for (const child of live) {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL")
      } catch {
        // already gone
      }
    }
  })
}

const environmentFor = (options: HarmonyOptions, port: number, dataDir: string | undefined) => {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) if (value !== undefined) env[name] = value
  for (const name of serviceVariables) delete env[name]
  delete env.HARMONY_JWT_SECRET
  delete env.HARMONY_DATA_DIR
  // The project's node (v24) first, whatever node runs the tests.
  env.PATH = [join(repoRoot, "node_modules", ".bin"), env.PATH ?? ""].join(delimiter)
  env.PORT = String(port)
  env.HOST = "127.0.0.1"
  if (options.mode === "embedded") {
    env.HARMONY_DATA_DIR = dataDir!
  } else {
    // A suite with services of its own (test/chaos) names them all; the others use the exported ones.
    for (const name of serviceVariables) env[name] = options.env?.[name] ?? serviceUrl(name)
    for (const name of awsVariables) {
      const value = process.env[name]
      if (value !== undefined) env[name] = value
    }
    env.HARMONY_JWT_SECRET = clusterJwtSecret
  }
  return { ...env, ...options.env }
}

/** Starts one Harmony node and waits until it is ready. */
export const startHarmony = async (options: HarmonyOptions): Promise<Harmony> => {
  installExitHook()
  const port = options.port ?? (await freePort())
  const ownDataDir = options.mode === "embedded" && options.dataDir === undefined
  const dataDir =
    options.mode === "embedded" ? (options.dataDir ?? mkdtempSync(join(tmpdir(), "harmony-test-"))) : undefined
  const env = environmentFor(options, port, dataDir)

  const localNode = join(repoRoot, "node_modules", ".bin", "node")
  const node = existsSync(localNode) ? localNode : process.execPath
  // As in production: Node runs the TypeScript itself (bin/harmony.mjs).
  const child = spawn(node, ["src/main.ts", "serve"], {
    cwd: repoRoot,
    env,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"]
  })
  live.add(child)

  let output = ""
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    output += chunk
  })
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    output += chunk
  })

  let exit: Exit | undefined
  const exited = new Promise<Exit>((resolve) => {
    child.on("exit", (code, signal) => {
      exit = { code, signal }
      live.delete(child)
      resolve(exit)
    })
    child.on("error", (error) => {
      output += `\n[harness] spawn failed: ${error.message}\n`
      exit = { code: null, signal: null }
      live.delete(child)
      resolve(exit)
    })
  })

  const killGroup = (signal: NodeJS.Signals) => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, signal)
    } catch {
      // already gone
    }
  }

  let stopping: Promise<Exit> | undefined
  const stop = (signal: NodeJS.Signals = "SIGTERM"): Promise<Exit> => {
    stopping ??= (async () => {
      if (exit === undefined) {
        // SIGKILL goes to the whole group (a crash); other signals to the node.
        if (signal === "SIGKILL") killGroup(signal)
        else child.kill(signal)
        const timer = setTimeout(() => killGroup("SIGKILL"), 20_000)
        await exited
        clearTimeout(timer)
      }
      // Whatever the node left behind in the group.
      killGroup("SIGKILL")
      if (ownDataDir && dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true })
      return exit!
    })()
    return stopping
  }

  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + (options.readyTimeoutMs ?? 60_000)
  let lastProblem = "no answer yet"
  for (;;) {
    if (exit !== undefined) {
      await stop()
      throw new Error(
        `harmony (${options.mode}) exited before it was ready (code ${exit.code}, signal ${exit.signal}); logs:\n${output}`
      )
    }
    try {
      const response = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(5_000) })
      const body = await response.text()
      if (response.status === 200) break
      lastProblem = `readyz answered ${response.status}: ${body}`
    } catch (error) {
      lastProblem = `readyz failed: ${error instanceof Error ? error.message : String(error)}`
    }
    if (Date.now() > deadline) {
      await stop("SIGKILL")
      throw new Error(`harmony (${options.mode}) was not ready on ${url} in time (${lastProblem}); logs:\n${output}`)
    }
    await sleep(200)
  }

  return {
    url,
    port,
    pid: child.pid!,
    dataDir,
    stop,
    logs: () => output,
    exited: () => exit !== undefined
  }
}

// --- fetch helpers ---------------------------------------------------------------------------

export interface Reply {
  readonly status: number
  readonly headers: Headers
  /** Parsed JSON when the body is JSON, else the text ("" when empty). */
  readonly body: any
  /** The raw body text. */
  readonly text: string
}

export interface RequestOptions {
  /** Sent as `Authorization: Bearer <token>`. */
  readonly token?: string
  readonly headers?: Record<string, string>
  /** Sent as-is instead of JSON-encoding `body` (content-type stays application/json unless overridden). */
  readonly raw?: string
}

const send = async (base: string, method: string, path: string, body: unknown, options: RequestOptions = {}) => {
  const headers: Record<string, string> = {}
  const payload = options.raw ?? (body === undefined ? undefined : JSON.stringify(body))
  if (payload !== undefined) headers["content-type"] = "application/json"
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`
  Object.assign(headers, options.headers)
  const response = await fetch(`${base}${path}`, {
    method,
    headers,
    ...(payload === undefined ? {} : { body: payload }),
    signal: AbortSignal.timeout(30_000)
  })
  const text = await response.text()
  let parsed: unknown = text
  if (text !== "") {
    try {
      parsed = JSON.parse(text)
    } catch {
      parsed = text
    }
  }
  return { status: response.status, headers: response.headers, body: parsed as any, text } satisfies Reply
}

/** JSON over fetch against `base` (e.g. `harmony.url`). */
export const api = (base: string) => ({
  get: (path: string, options?: RequestOptions) => send(base, "GET", path, undefined, options),
  delete: (path: string, options?: RequestOptions) => send(base, "DELETE", path, undefined, options),
  post: (path: string, body?: unknown, options?: RequestOptions) => send(base, "POST", path, body, options),
  patch: (path: string, body?: unknown, options?: RequestOptions) => send(base, "PATCH", path, body, options),
  put: (path: string, body?: unknown, options?: RequestOptions) => send(base, "PUT", path, body, options)
})

export type Api = ReturnType<typeof api>

/** Registers `username`, waiting out the register rate limit (429) for up to a minute; answers its id and access token. */
export const registerUser = async (http: Api, username: string): Promise<{ id: string; accessToken: string }> => {
  const deadline = Date.now() + 60_000
  for (;;) {
    const reply = await http.post("/v1/auth/register", { username, password: "correct horse battery" })
    if (reply.status === 429 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 1_000 * Number(reply.headers.get("retry-after") ?? "1")))
      continue
    }
    if (reply.status !== 201) throw new Error(`registering ${username} answered ${reply.status}: ${reply.text}`)
    return { id: reply.body.user.id, accessToken: reply.body.accessToken }
  }
}
