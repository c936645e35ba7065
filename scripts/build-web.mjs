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
 */
import { build } from "esbuild"
import { readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs"
import { basename, dirname, join, relative } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const source = join(root, "web")
const target = join(root, "dist", "web")
const staging = join(root, "dist", `web.next-${process.pid}`)

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
