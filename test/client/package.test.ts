/**
 * The SDK as an app would install it: `npm run build:client` emits ES modules
 * and declarations into dist/client, and `import "harmony/client"` (the
 * package's `exports`) loads in a plain Node process — no tsx, no TypeScript
 * sources — with its public API there.
 */
import { execFile } from "node:child_process"
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { promisify } from "node:util"
import { describe, expect, it } from "vitest"
import { repoRoot } from "../support/harmony.ts"

const run = promisify(execFile)
const node = existsSync(join(repoRoot, "node_modules", ".bin", "node"))
  ? join(repoRoot, "node_modules", ".bin", "node")
  : process.execPath

describe("the SDK package", () => {
  it("builds, and loads through the package's exports in plain Node", { timeout: 180_000 }, async () => {
    await run(node, [join(repoRoot, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.client.json"], {
      cwd: repoRoot
    })
    const manifest = JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8"))
    const entry = manifest.exports["./client"]
    expect(existsSync(join(repoRoot, entry.types)), entry.types).toBe(true)
    expect(existsSync(join(repoRoot, entry.import)), entry.import).toBe(true)

    const script = `
      const sdk = await import("${manifest.name}/client")
      const client = sdk.createClient({ baseUrl: "http://127.0.0.1:9" })
      console.log(JSON.stringify({
        exports: Object.keys(sdk).sort(),
        status: client.status,
        error: new sdk.HarmonyError({ code: "not_found", message: "x", status: 404 })._tag
      }))
      await client.close()
    `
    const { stdout } = await run(node, ["--input-type=module", "-e", script], { cwd: repoRoot })
    const loaded = JSON.parse(stdout.trim().split("\n").pop()!)
    expect(loaded.exports).toEqual(expect.arrayContaining(["createClient", "makeClient", "HarmonyError", "Message"]))
    expect(loaded.status).toBe("idle")
    expect(loaded.error).toBe("HarmonyError")
  })
})
