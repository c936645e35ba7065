/**
 * A Toxiproxy server of the suite's own (installed by scripts/toxiproxy.sh),
 * driven over its HTTP API with plain fetch: one proxy per service a node
 * talks to (the suite's own services, test/chaos/services.ts), for cut
 * connections, black holes and slow links between the nodes and a service.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { freePort, repoRoot } from "../support/harmony.ts"
import { sleep } from "../integration/cluster.support.ts"

export interface Toxiproxy {
  /** Creates a proxy to `upstream` (host:port), on `listen` or a free port; answers the local port to use instead. */
  proxy(name: string, upstream: string, listen?: number): Promise<number>
  /** Cuts the proxy: open connections close, new ones are refused. */
  down(name: string): Promise<void>
  /** Brings the proxy back and removes its toxics. */
  up(name: string): Promise<void>
  /** Delays everything the upstream answers by `latencyMs`. */
  slow(name: string, latencyMs: number): Promise<void>
  /** A black hole: connections stay open, nothing comes back (until `up`). */
  silence(name: string): Promise<void>
  /** A black hole both ways: connections stay open, nothing gets through to the upstream or back (until `up`). */
  partition(name: string): Promise<void>
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
  const addToxic = async (
    name: string,
    type: string,
    attributes: Record<string, number>,
    stream: "downstream" | "upstream" = "downstream"
  ) => {
    const toxic = `${type}-${stream}-${Date.now()}`
    await call("POST", `/proxies/${name}/toxics`, { name: toxic, type, stream, attributes })
    toxics.set(name, [...(toxics.get(name) ?? []), toxic])
  }
  return {
    proxy: async (name, upstream, port) => {
      const listen = port ?? (await freePort())
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
    slow: (name, latencyMs) => addToxic(name, "latency", { latency: latencyMs, jitter: 0 }),
    // timeout 0: the data is dropped and the connection held open until the toxic goes (then it is closed).
    silence: (name) => addToxic(name, "timeout", { timeout: 0 }),
    partition: async (name) => {
      await addToxic(name, "timeout", { timeout: 0 }, "upstream")
      await addToxic(name, "timeout", { timeout: 0 })
    },
    stop: async () => {
      child.kill("SIGTERM")
    }
  }
}
