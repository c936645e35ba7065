/**
 * A stopping node delivers 1001 to every session before it exits, however
 * busy it is when SIGTERM comes. The node is made busy by a preload
 * (test/support/stall.mjs) that blocks its event loop for a few seconds on
 * request; SIGTERM arrives in the middle of it. A launcher that gives the
 * node only milliseconds to react before killing it (tsx's CLI relays a
 * signal and sends SIGKILL when the child does not acknowledge it within
 * ~60 ms) loses every close frame: the clients see 1006.
 */
import { existsSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { afterAll, describe, expect, it } from "vitest"
import { api, type Exit, type Harmony, repoRoot, startHarmony } from "../support/harmony.ts"
import type { WsClient } from "../support/wsClient.ts"
import { registerMany, session, until } from "./cluster.support.ts"

describe("shutdown of a busy node", () => {
  let harmony: Harmony | undefined
  const opened = new Set<WsClient>()
  afterAll(async () => {
    for (const client of opened) client.terminate()
    await harmony?.stop("SIGKILL")
  })

  it("SIGTERM while its event loop is blocked: every session gets 1001, the process exits 0", async () => {
    const marker = join(tmpdir(), `harmony-stall-${process.pid}-${Date.now()}`)
    const preload = pathToFileURL(join(repoRoot, "test", "support", "stall.mjs")).href
    harmony = await startHarmony({
      mode: "embedded",
      env: { NODE_OPTIONS: `--import ${preload}`, HARMONY_TEST_STALL: marker },
      readyTimeoutMs: 120_000
    })
    const http = api(harmony.url)
    const accounts = await registerMany(http, 2, "busy")
    const sessions = await Promise.all(accounts.map((account) => session(harmony!.url, account, opened)))
    await Promise.all(sessions.map((client) => client.ping()))

    writeFileSync(marker, "")
    await until("the node is stalled", async () => (existsSync(marker) ? undefined : true), { timeoutMs: 30_000 })
    const exited: Promise<Exit> = harmony.stop("SIGTERM")
    const closes = await Promise.all(sessions.map((client) => client.waitForClose(60_000)))
    const exit = await exited

    expect(
      closes.map((c) => c.code),
      `closes: ${JSON.stringify(closes)}; exit ${JSON.stringify(exit)}; logs:\n${harmony.logs().slice(-3_000)}`
    ).toEqual([1001, 1001])
    expect(exit, harmony.logs().slice(-3_000)).toEqual({ code: 0, signal: null })
  }, 180_000)
})
