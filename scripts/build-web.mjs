#!/usr/bin/env node
/**
 * `npm run build:web`: bundles the web client (web/, Preact on the SDK in
 * src/client) with esbuild into dist/web — index.html plus content-hashed,
 * minified assets with source maps under dist/web/assets. The binary serves
 * that directory at `/` (src/http/WebClient.ts). Built assets are never
 * committed; `npm start` and the test scripts run this first.
 *
 * The new build is written next to dist/web and swapped in at the end, so a
 * running server never serves half a build.
 *
 * Nothing is rebuilt when nothing changed: each build records the content
 * hash of every input esbuild read (from its metafile: web/, the SDK in
 * src/client, preact...), of web/index.html, of this script and of
 * package-lock.json in dist/web/build-inputs.json; the next run compares
 * them first (`--force` rebuilds anyway). That keeps `npm start` quick.
 */
import { createHash } from "node:crypto"
import { existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs"
import { basename, dirname, join, relative } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const source = join(root, "web")
const target = join(root, "dist", "web")
const staging = join(root, "dist", `web.next-${process.pid}`)
const manifestName = "build-inputs.json"
/** Inputs esbuild does not list: the page template, this script, the locked dependency versions. */
const fixedInputs = ["web/index.html", "scripts/build-web.mjs", "package-lock.json"]

const hashOf = (path) => {
  try {
    return createHash("sha256")
      .update(readFileSync(join(root, path)))
      .digest("base64url")
  } catch {
    return null
  }
}
const hashes = (paths) => Object.fromEntries([...new Set(paths)].sort().map((path) => [path, hashOf(path)]))

/** Whether dist/web was built from exactly the inputs there are now. */
const upToDate = () => {
  try {
    const manifest = JSON.parse(readFileSync(join(target, manifestName), "utf8"))
    const recorded = Object.entries(manifest.inputs)
    return (
      recorded.length > 0 &&
      fixedInputs.every((path) => path in manifest.inputs) &&
      manifest.outputs.every((path) => existsSync(join(target, path))) &&
      recorded.every(([path, hash]) => hash !== null && hashOf(path) === hash)
    )
  } catch {
    return false
  }
}

if (!process.argv.includes("--force") && upToDate()) {
  console.log(`web client up to date in ${relative(process.cwd(), target) || "."} (inputs unchanged)`)
  process.exit(0)
}

// Loaded only when building: importing esbuild costs more than the check.
const { build } = await import("esbuild")
rmSync(staging, { recursive: true, force: true })
try {
  const result = await build({
    absWorkingDir: root,
    entryPoints: [join(source, "main.tsx")],
    outdir: join(staging, "assets"),
    entryNames: "[name]-[hash]",
    assetNames: "[name]-[hash]",
    bundle: true,
    minify: true,
    sourcemap: true,
    format: "esm",
    platform: "browser",
    target: ["es2022"],
    jsx: "automatic",
    jsxImportSource: "preact",
    define: { "process.env.NODE_ENV": '"production"' },
    metafile: true,
    logLevel: "warning"
  })

  const outputs = Object.keys(result.metafile.outputs).map((path) => join(root, path))
  const script = outputs.find((path) => path.endsWith(".js"))
  const style = outputs.find((path) => path.endsWith(".css"))
  if (script === undefined || style === undefined) throw new Error("esbuild produced no script or no stylesheet")
  const href = (path) => `/assets/${basename(path)}`

  const html = readFileSync(join(source, "index.html"), "utf8")
    .replace("<!-- stylesheet -->", `<link rel="stylesheet" href="${href(style)}">`)
    .replace("<!-- script -->", `<script type="module" src="${href(script)}"></script>`)
  if (!html.includes(href(script)) || !html.includes(href(style))) {
    throw new Error("web/index.html lacks the <!-- stylesheet --> or <!-- script --> placeholder")
  }
  writeFileSync(join(staging, "index.html"), html)
  const manifest = {
    inputs: hashes([...fixedInputs, ...Object.keys(result.metafile.inputs)]),
    outputs: ["index.html", ...outputs.map((path) => join("assets", basename(path)))]
  }
  writeFileSync(join(staging, manifestName), `${JSON.stringify(manifest, null, 2)}\n`)

  rmSync(target, { recursive: true, force: true })
  renameSync(staging, target)
  const sizes = [script, style]
    .map((path) => `${basename(path)} ${(statSync(join(target, "assets", basename(path))).size / 1024).toFixed(0)} KiB`)
    .join(", ")
  console.log(`web client built into ${relative(process.cwd(), target) || "."}: ${sizes}`)
} catch (error) {
  rmSync(staging, { recursive: true, force: true })
  console.error(`build:web failed: ${error instanceof Error ? error.message : String(error)}`)
  process.exit(1)
}
