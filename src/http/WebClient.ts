/**
 * The web client, served by the binary: `GET /` answers `dist/web/index.html`
 * and `GET /assets/NAME` the bundle `npm run build:web` produced
 * (scripts/build-web.mjs). Asset names carry a content hash, so they are
 * cached for a year; the page itself is revalidated on every load. Only plain
 * file names directly under `assets/` are served (no directory traversal);
 * anything else, like every unknown path, stays the API's 404 in the error
 * shape. Files are read per request, so a rebuild needs no restart; without a
 * build, `/` answers a short page saying how to make one.
 */
import { Effect, Layer } from "effect"
import { HttpRouter, type HttpServerRequest, HttpServerResponse } from "effect/http"
import { readFile } from "node:fs/promises"
import { extname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { errorResponse } from "./Errors.ts"

/** Where the build puts the web client (the repository's dist/web). */
export const defaultDirectory = fileURLToPath(new URL("../../dist/web", import.meta.url))

const contentTypes: Record<string, string> = {
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".html": "text/html; charset=utf-8",
  ".txt": "text/plain; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".woff2": "font/woff2"
}

/** A file name the build can produce: no separators, no leading dot, nothing else. */
const assetName = /^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)+$/

const securityHeaders = {
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer"
}

const pageHeaders = {
  ...securityHeaders,
  "cache-control": "no-cache",
  "x-frame-options": "DENY",
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
}

const notBuilt = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Harmony</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 4rem auto; line-height: 1.5">
<h1>Harmony is running</h1>
<p>The web client has not been built. Run <code>npm run build:web</code> (or start with <code>npm start</code>,
which builds it first) and reload this page.</p>
<p>The API is up: see <a href="/docs">/docs</a>.</p>
</body></html>
`

/** The file's bytes, or undefined when it is not there (or cannot be read). */
const read = (path: string) =>
  Effect.promise(() =>
    readFile(path).then(
      (bytes): Uint8Array | undefined => bytes,
      () => undefined
    )
  )

const decode = (text: string) => {
  try {
    return decodeURIComponent(text)
  } catch {
    return undefined
  }
}

/** The routes of the web client, serving `directory` (default: the repository's dist/web). */
export const layer = (options: { readonly directory?: string } = {}) => {
  const directory = options.directory ?? defaultDirectory

  const index = read(join(directory, "index.html")).pipe(
    Effect.map((bytes) =>
      bytes === undefined
        ? HttpServerResponse.html(notBuilt).pipe(HttpServerResponse.setHeaders({ "cache-control": "no-store" }))
        : HttpServerResponse.uint8Array(bytes, { contentType: contentTypes[".html"], headers: pageHeaders })
    )
  )

  const asset = (request: HttpServerRequest.HttpServerRequest) =>
    Effect.gen(function* () {
      const path = request.url.split("?")[0]!
      const name = decode(path.slice("/assets/".length))
      const notFound = errorResponse(404, "not_found", `no asset ${path}`)
      if (name === undefined || !assetName.test(name)) return notFound
      const bytes = yield* read(join(directory, "assets", name))
      if (bytes === undefined) return notFound
      return HttpServerResponse.uint8Array(bytes, {
        contentType: contentTypes[extname(name)] ?? "application/octet-stream",
        headers: { ...securityHeaders, "cache-control": "public, max-age=31536000, immutable" }
      })
    })

  return Layer.mergeAll(HttpRouter.add("GET", "/", index), HttpRouter.add("GET", "/assets/*", asset))
}
