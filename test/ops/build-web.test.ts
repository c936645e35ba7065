/**
 * `npm start` runs scripts/build-web.mjs first: it must not rebuild the web
 * client when none of its inputs changed (a rebuild took seconds of every
 * start), and must rebuild when one did or when an output is missing. Runs a
 * copy of the script in a scratch tree, so the checkout's dist/web is left alone.
 */
import { execFileSync } from "node:child_process"
import { appendFileSync, cpSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { repoRoot } from "../support/harmony.ts"

const tree = mkdtempSync(join(tmpdir(), "harmony-build-web-"))
for (const path of ["web", "src", "scripts/build-web.mjs", "package.json", "package-lock.json", "tsconfig.json"]) {
  cpSync(join(repoRoot, path), join(tree, path), { recursive: true })
}
symlinkSync(join(repoRoot, "node_modules"), join(tree, "node_modules"))
afterAll(() => rmSync(tree, { recursive: true, force: true }))

const build = () =>
  execFileSync(process.execPath, [join(tree, "scripts", "build-web.mjs")], { cwd: tree, encoding: "utf8" })
const assets = () => join(tree, "dist", "web", "assets")
const assetTimes = () =>
  readdirSync(assets())
    .map((name) => `${name}@${statSync(join(assets(), name)).mtimeMs}`)
    .sort()

describe("build-web", () => {
  it("builds once, then skips while its inputs are unchanged", () => {
    expect(build()).toContain("web client built")
    const before = assetTimes()
    expect(build()).toContain("up to date")
    expect(assetTimes()).toEqual(before)
  })

  it("rebuilds when a source the bundle reads changes", () => {
    appendFileSync(join(tree, "web", "hooks.ts"), "\n// changed\n")
    expect(build()).toContain("web client built")
    expect(build()).toContain("up to date")
  })

  it("rebuilds when an output is missing", () => {
    const script = readdirSync(assets()).find((name) => name.endsWith(".js"))!
    rmSync(join(assets(), script))
    expect(build()).toContain("web client built")
  })
})
