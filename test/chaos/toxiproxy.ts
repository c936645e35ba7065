/**
 * A Toxiproxy server of the suite's own (installed by scripts/toxiproxy.sh),
 * driven over its HTTP API with plain fetch: one proxy per service a node
 * talks to, so an outage or a slow link hits only the suite's nodes — the
 * shared services themselves are never stopped.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { freePort, repoRoot } from "../support/harmony.ts"
import { sleep } from "../integration/cluster.support.ts"

export interface Toxiproxy {
  /** Creates a proxy to `upstream` (host:port); answers the local port to use instead. */
  proxy(name: string, upstream: string): Promise<number>
  /** Cuts the proxy: open connections close, new ones are refused. */
  down(name: string): Promise<void>
  /** Brings the proxy back and removes its toxics. */
  up(name: string): Promise<void>
  /** Delays everything the upstream answers by `latencyMs`. */
  slow(name: string, latencyMs: number): Promise<void>
  stop(): Promise<void>
}

export const startToxiproxy = async (): Promise<Toxiproxy> => {
  const binary = execFileSync("bash", ["scripts/toxiproxy.sh", "path"], { cwd: repoRoot, encoding: "utf8" }).trim()
  const port = await freePort()
  const child: ChildProcess = spawn(binary, ["-host", "127.0.0.1", "-port", String(port)], {
    stdio: ["ignore", "ignore", "ignore"]
  })
  const base = `http://127.0.0.1:${port}`
  const call = async (method: string, path: string, body?: unknown) => {
    const response = await fetch(`${base}${path}`, {
      method,
      headers: { "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    })
    if (!response.ok && response.status !== 404) {
      throw new Error(`toxiproxy ${method} ${path}: ${response.status} ${await response.text()}`)
    }
    return response
  }
  const deadline = Date.now() + 30_000
  for (;;) {
    try {
      if ((await fetch(`${base}/version`)).ok) break
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error("toxiproxy did not start within 30 s")
    await sleep(100)
  }
  const toxics = new Map<string, Array<string>>()
  return {
    proxy: async (name, upstream) => {
      const listen = await freePort()
      await call("POST", "/proxies", { name, listen: `127.0.0.1:${listen}`, upstream, enabled: true })
      return listen
    },
    down: async (name) => {
      await call("POST", `/proxies/${name}`, { enabled: false })
    },
    up: async (name) => {
      for (const toxic of toxics.get(name) ?? []) await call("DELETE", `/proxies/${name}/toxics/${toxic}`)
      toxics.delete(name)
      await call("POST", `/proxies/${name}`, { enabled: true })
    },
    slow: async (name, latencyMs) => {
      const toxic = `latency-${Date.now()}`
      await call("POST", `/proxies/${name}/toxics`, {
        name: toxic,
        type: "latency",
        stream: "downstream",
        attributes: { latency: latencyMs, jitter: 0 }
      })
      toxics.set(name, [...(toxics.get(name) ?? []), toxic])
    },
    stop: async () => {
      child.kill("SIGTERM")
    }
  }
}
