/**
 * One process per data directory: a second `harmony serve` on a directory a
 * running node holds exits with code 2 and one line saying why, and leaves
 * the running node and its data alone; once the holder is gone (even by
 * SIGKILL, which releases the lock with the process), the directory can be
 * used again.
 */
import { spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { delimiter, join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { freePort, type Harmony, repoRoot, startHarmony } from "../support/harmony.ts"

/** Runs `harmony serve` on `dataDir` to its end (it should not get far) and answers how it ended. */
const serveOnce = async (dataDir: string) => {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) if (value !== undefined) env[name] = value
  for (const name of ["DATABASE_URL", "KAFKA_BROKERS", "REDIS_URL", "DYNAMODB_ENDPOINT", "HARMONY_JWT_SECRET"]) {
    delete env[name]
  }
  env.PATH = [join(repoRoot, "node_modules", ".bin"), env.PATH ?? ""].join(delimiter)
  env.HARMONY_DATA_DIR = dataDir
  env.PORT = String(await freePort())
  env.HOST = "127.0.0.1"
  const localNode = join(repoRoot, "node_modules", ".bin", "node")
  return spawnSync(existsSync(localNode) ? localNode : process.execPath, ["src/main.ts", "serve"], {
    cwd: repoRoot,
    env,
    encoding: "utf8",
    timeout: 60_000
  })
}

describe("a data directory in use", { timeout: 180_000 }, () => {
  const dataDir = mkdtempSync(join(tmpdir(), "harmony-datadir-"))
  let first: Harmony | undefined

  afterAll(async () => {
    await first?.stop("SIGKILL")
    rmSync(dataDir, { recursive: true, force: true })
  })

  it("refuses a second process with one line and exit code 2; the first goes on", async () => {
    first = await startHarmony({ mode: "embedded", dataDir })
    const second = await serveOnce(dataDir)
    expect(second.status, `${second.stdout}${second.stderr}`).toBe(2)
    expect(second.stdout).toBe("")
    expect(second.stderr).toBe(
      `harmony: data directory ${dataDir} is in use by another harmony process (one process per HARMONY_DATA_DIR)\n`
    )
    const ready = await fetch(`${first.url}/readyz`)
    expect(ready.status).toBe(200)

    // The lock goes with its holder, however it dies.
    await first.stop("SIGKILL")
    first = await startHarmony({ mode: "embedded", dataDir })
    expect((await fetch(`${first.url}/readyz`)).status).toBe(200)
  })
})
