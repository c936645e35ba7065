/**
 * How the binary serves the web client (src/http/WebClient.ts), without a
 * browser or a server: the routes with the API's error normalisation, as a
 * web handler over a scratch build directory.
 */
import { Layer } from "effect"
import { HttpRouter } from "effect/http"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { normalizeErrors } from "../../src/http/Errors.ts"
import * as WebClient from "../../src/http/WebClient.ts"

const serve = (directory: string) =>
  HttpRouter.toWebHandler(Layer.mergeAll(WebClient.layer({ directory }), normalizeErrors), { disableLogger: true })

describe("serving the web client", () => {
  const root = mkdtempSync(join(tmpdir(), "harmony-web-"))
  const built = join(root, "web")
  let app: ReturnType<typeof serve>
  let bare: ReturnType<typeof serve>
  const get = (path: string, handler = app) => handler.handler(new Request(`http://harmony.test${path}`))

  beforeAll(() => {
    mkdirSync(join(built, "assets"), { recursive: true })
    writeFileSync(join(built, "index.html"), "<!doctype html><title>Harmony</title>")
    writeFileSync(join(built, "assets", "main-ABC123.js"), "console.log(1)")
    writeFileSync(join(built, "assets", "main-ABC123.css"), "body{}")
    writeFileSync(join(built, "assets", ".hidden"), "no")
    writeFileSync(join(built, "secret.txt"), "not an asset")
    writeFileSync(join(root, "outside.txt"), "not an asset either")
    app = serve(built)
    bare = serve(join(root, "missing"))
  })

  afterAll(async () => {
    await app.dispose()
    await bare.dispose()
    rmSync(root, { recursive: true, force: true })
  })

  it("answers the page at / , revalidated on every load, with a content security policy", async () => {
    const response = await get("/")
    expect(response.status).toBe(200)
    expect(response.headers.get("content-type")).toBe("text/html; charset=utf-8")
    expect(response.headers.get("cache-control")).toBe("no-cache")
    expect(response.headers.get("content-security-policy")).toContain("default-src 'self'")
    expect(await response.text()).toBe("<!doctype html><title>Harmony</title>")
  })

  it("answers hashed assets with their content type, cached for good", async () => {
    const script = await get("/assets/main-ABC123.js")
    expect(script.status).toBe(200)
    expect(script.headers.get("content-type")).toBe("text/javascript; charset=utf-8")
    expect(script.headers.get("cache-control")).toBe("public, max-age=31536000, immutable")
    expect(script.headers.get("x-content-type-options")).toBe("nosniff")
    expect(await script.text()).toBe("console.log(1)")
    const style = await get("/assets/main-ABC123.css?v=1")
    expect(style.headers.get("content-type")).toBe("text/css; charset=utf-8")
  })

  it("serves nothing outside assets/: unknown, hidden and traversing names are the API's 404", async () => {
    for (const path of [
      "/assets/missing.js",
      "/assets/.hidden",
      "/assets/..%2Fsecret.txt",
      "/assets/%2e%2e%2fsecret.txt",
      "/assets/..%2F..%2Foutside.txt",
      "/assets/%2Fetc%2Fpasswd",
      "/assets/a%5C..%5Csecret.txt",
      "/assets/%E0%A4%A",
      "/secret.txt",
      "/index.html",
      "/nope"
    ]) {
      const response = await get(path)
      expect(response.status, path).toBe(404)
      expect(response.headers.get("content-type"), path).toMatch(/^application\/json/)
      expect(await response.json(), path).toEqual({ error: { code: "not_found", message: expect.any(String) } })
    }
  })

  it("without a build, / says how to make one", async () => {
    const response = await get("/", bare)
    expect(response.status).toBe(200)
    expect(await response.text()).toContain("npm run build:web")
    expect((await get("/assets/main-ABC123.js", bare)).status).toBe(404)
  })
})
