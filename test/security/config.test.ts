/**
 * Limits are configuration like any other: a value that cannot work stops
 * the binary at start with one line naming its variable (exit 2) — a send
 * limit with a refill of 0 once started and, through the cache's refusal of
 * the bucket being taken for "the cache is down", let every send through.
 * And `/metrics` can move to a port of its own (METRICS_PORT).
 */
import { ConfigProvider, Duration, Effect, Exit, Layer } from "effect"
import { spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import * as Config from "../../src/Config.ts"
import * as Memory from "../../src/adapters/memory/Memory.ts"
import { defaultRateLimits, RateLimits } from "../../src/state/RateLimits.ts"
import { defaultSearchLimits } from "../../src/state/SearchIndex.ts"
import { freePort, repoRoot, startHarmony } from "../support/harmony.ts"

const loadWith = (env: Record<string, string>) =>
  Effect.runPromiseExit(Config.load.pipe(Effect.provide(ConfigProvider.layer(ConfigProvider.fromEnvRecord(env)))))

const messageOf = async (env: Record<string, string>) => {
  const exit = await loadWith(env)
  if (Exit.isSuccess(exit)) return undefined
  const reason = exit.cause.reasons[0]
  return reason?._tag === "Fail" ? (reason.error as Config.ConfigurationError).message : String(exit.cause)
}

describe("limit settings", () => {
  it.each([
    ["RATE_LIMIT_SEND", "100/0"],
    ["RATE_LIMIT_SEND", "0/5"],
    ["RATE_LIMIT_LOGIN_USER", "10/0"],
    ["RATE_LIMIT_LOGIN_ADDRESS", "abc"],
    ["RATE_LIMIT_REGISTER", "-1/1"],
    ["RATE_LIMIT_REFRESH", "5/0.0"],
    ["RATE_LIMIT_CREATE_CHAT", "0/0"],
    ["RATE_LIMIT_WRITE", "3"],
    ["RATE_LIMIT_TYPING", "0/1"],
    ["RATE_LIMIT_SUBSCRIBE", "10/0"],
    ["RATE_LIMIT_READ", "1.5/1"],
    ["RATE_LIMIT_PING", "10/0"],
    ["MAX_SOCKETS_PER_USER", "0"],
    ["MAX_SOCKETS_PER_ADDRESS", "-3"],
    ["MAX_SUBSCRIPTIONS_PER_SOCKET", "many"],
    ["METRICS_PORT", "99999"],
    ["SEARCH_MAX_MATCHES", "0"],
    ["SEARCH_TIMEOUT", "0 millis"],
    ["SEARCH_TIMEOUT", "soon"]
  ])("%s=%s is refused, naming the variable", async (variable, value) => {
    const message = await messageOf({ [variable]: value })
    expect(message, `${variable}=${value} was accepted`).toBeDefined()
    expect(message).toContain(variable)
    expect(message).not.toContain("\n")
  })

  it("the defaults, and sound values, are accepted", async () => {
    const exit = await loadWith({
      RATE_LIMIT_SEND: "100/0.5",
      MAX_SOCKETS_PER_USER: "5",
      METRICS_PORT: "9464",
      SEARCH_MAX_MATCHES: "500",
      SEARCH_TIMEOUT: "250 millis"
    })
    expect(Exit.isSuccess(exit), String(Exit.isFailure(exit) && exit.cause)).toBe(true)
    if (Exit.isSuccess(exit)) {
      expect(exit.value.rateLimits.send).toEqual({ capacity: 100, refillPerSecond: 0.5 })
      expect(exit.value.gatewayLimits.maxSocketsPerUser).toBe(5)
      expect(exit.value.metricsPort).toBe(9464)
      expect(exit.value.searchLimits.maxMatches).toBe(500)
      expect(Duration.toMillis(exit.value.searchLimits.timeout)).toBe(250)
    }
    const defaults = await loadWith({ PORT: "8123" })
    expect(Exit.isSuccess(defaults) && defaults.value.metricsPort).toBe(8123)
    expect(Exit.isSuccess(defaults) && defaults.value.searchLimits).toEqual(defaultSearchLimits)
  })

  it("the limiter refuses to start with a bucket that cannot refill (never 'the cache is down, let it through')", async () => {
    const exit = await Effect.runPromiseExit(
      Layer.build(
        RateLimits.layer({ ...defaultRateLimits, send: { capacity: 100, refillPerSecond: 0 } }).pipe(
          Layer.provide(Memory.layer)
        )
      ).pipe(Effect.scoped)
    )
    expect(Exit.isFailure(exit)).toBe(true)
    expect(String(Exit.isFailure(exit) && exit.cause)).toContain("RATE_LIMIT_SEND")
  })

  it("harmony serve with RATE_LIMIT_SEND=100/0 exits 2 with one line naming the variable", async () => {
    const port = await freePort()
    const dataDir = mkdtempSync(join(tmpdir(), "harmony-config-"))
    try {
      const localNode = join(repoRoot, "node_modules", ".bin", "node")
      const env: Record<string, string> = {}
      for (const [name, value] of Object.entries(process.env)) if (value !== undefined) env[name] = value
      for (const name of ["DATABASE_URL", "KAFKA_BROKERS", "REDIS_URL", "DYNAMODB_ENDPOINT"]) delete env[name]
      const result = spawnSync(existsSync(localNode) ? localNode : process.execPath, ["src/main.ts", "serve"], {
        cwd: repoRoot,
        env: { ...env, HARMONY_DATA_DIR: dataDir, PORT: String(port), RATE_LIMIT_SEND: "100/0" },
        encoding: "utf8",
        timeout: 60_000
      })
      expect(result.status, result.stderr).toBe(2)
      const lines = result.stderr.split("\n").filter((line) => line.trim() !== "")
      expect(lines, result.stderr).toHaveLength(1)
      expect(lines[0]).toMatch(/^harmony: configuration error: RATE_LIMIT_SEND /)
    } finally {
      rmSync(dataDir, { recursive: true, force: true })
    }
  }, 90_000)
})

describe("METRICS_PORT", () => {
  it("serves /metrics on its own port, and no longer on the main one", async () => {
    const metricsPort = await freePort()
    const harmony = await startHarmony({ mode: "embedded", env: { METRICS_PORT: String(metricsPort) } })
    try {
      const apart = await fetch(`http://127.0.0.1:${metricsPort}/metrics`)
      expect(apart.status).toBe(200)
      expect(await apart.text()).toContain("# TYPE")
      const main = await fetch(`${harmony.url}/metrics`)
      expect(main.status).toBe(404)
      await main.arrayBuffer()
      expect((await fetch(`${harmony.url}/healthz`)).status).toBe(200)
    } finally {
      expect(await harmony.stop("SIGTERM"), harmony.logs()).toEqual({ code: 0, signal: null })
    }
  }, 120_000)
})
