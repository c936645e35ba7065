/**
 * The API reference at `/docs`: Scalar's page over the OpenAPI document
 * (the same page as effect's `HttpApiScalar.layer`). Scalar's browser bundle
 * (3.1 MB, shipped inside effect) is read from effect's package when a
 * browser asks for `/docs/scalar.js` and not kept: `HttpApiScalar.layer`
 * loads it at start and holds it as long as the node runs (two UTF-16
 * copies, ~12 MiB of an idle embedded node) for a page few open.
 */
import { Effect, Layer } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import { OpenApi } from "effect/http-api"
import { readFile } from "node:fs/promises"
import { fileURLToPath } from "node:url"
import { Api } from "./Api.ts"
import { errorResponse } from "./Errors.ts"

export const DocsPath = "/docs"
const ScriptPath = "/docs/scalar.js"

/** effect's module holding the bundle as one string literal: `export const javascript="…";`. */
const bundleModule = fileURLToPath(new URL("./internal/httpApiScalar.js", import.meta.resolve("effect/http-api")))
const bundlePrefix = "export const javascript="

/** The bundle's source, or undefined when effect's module is not where (or what) it should be. */
const readBundle = Effect.promise(() =>
  readFile(bundleModule, "utf8").then(
    (module) => {
      const start = module.indexOf(bundlePrefix)
      const end = module.lastIndexOf('";')
      if (start < 0 || end < start) return undefined
      return JSON.parse(module.slice(start + bundlePrefix.length, end + 1)) as string
    },
    () => undefined
  )
)

/** JSON inside a `<script>`: nothing in it may end the element or a line. */
const scriptJson = (value: unknown) =>
  JSON.stringify(value)
    .replace(/</g, "\\u003c")
    .replace(/[\u2028\u2029]/g, (c) => (c === "\u2028" ? "\\u2028" : "\\u2029"))

const escapeHtml = (text: string) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

const page = (): string => {
  const spec = OpenApi.fromApi(Api)
  return `<!doctype html>
<html>
  <head>
    <meta charset="utf-8" />
    <title>${escapeHtml(spec.info.title)}</title>
    <meta name="viewport" content="width=device-width, initial-scale=1" />
  </head>
  <body>
    <div id="api-reference-container"></div>
    <script src="${ScriptPath}"></script>
    <script>
      window.Scalar.createApiReference(document.getElementById('api-reference-container'), {
        _integration: "html",
        content: ${scriptJson(spec)}
      })
    </script>
  </body>
</html>`
}

export const layer = Layer.mergeAll(
  HttpRouter.add(
    "GET",
    DocsPath,
    Effect.sync(() => HttpServerResponse.html(page()))
  ),
  HttpRouter.add(
    "GET",
    ScriptPath,
    readBundle.pipe(
      Effect.map((source) =>
        source === undefined
          ? errorResponse(404, "not_found", "the API reference's script is not installed")
          : HttpServerResponse.text(source, {
              contentType: "text/javascript; charset=utf-8",
              headers: { "cache-control": "public, max-age=86400" }
            })
      )
    )
  )
)
