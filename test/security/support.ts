/**
 * Helpers for the security suite (test/security): accounts on a running
 * node, requests from another loopback address (per-address limits), raw
 * JWTs signed with the node's own development secret, and a watch that
 * `/healthz` keeps answering while a flood runs.
 */
import { randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import { request } from "node:http"
import { join } from "node:path"
import { SignJWT } from "jose"
import WebSocket from "ws"
import { type Api, api, type Harmony } from "../support/harmony.ts"
import { WsClient, wsUrlOf } from "../support/wsClient.ts"

export const password = "correct horse battery"

export interface Account {
  readonly id: string
  readonly username: string
  readonly accessToken: string
  readonly refreshToken: string
}

/** Registers accounts with unique names on `harmony`. */
export const accounts = (http: Api) => {
  const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}`
  let counter = 0
  const register = async (label: string): Promise<Account> => {
    const username = `${label}-${run}-${(counter++).toString(36)}`
    const reply = await http.post("/v1/auth/register", { username, password })
    if (reply.status !== 201) throw new Error(`register answered ${reply.status}: ${reply.text}`)
    return {
      id: reply.body.user.id,
      username,
      accessToken: reply.body.accessToken,
      refreshToken: reply.body.refreshToken
    }
  }
  const createGroup = async (owner: Account, members: ReadonlyArray<Account>) => {
    const reply = await http.post(
      "/v1/chats",
      { kind: "group", name: "security", memberIds: members.map((m) => m.id) },
      { token: owner.accessToken }
    )
    if (reply.status !== 201) throw new Error(`create chat answered ${reply.status}: ${reply.text}`)
    return reply.body.id as string
  }
  return { register, createGroup }
}

/** A JSON POST from `localAddress` (any 127.x.y.z on Linux), as another client machine would. */
export const postFrom = (localAddress: string, base: string, path: string, body: unknown) =>
  new Promise<{ status: number; body: any; headers: Record<string, unknown> }>((resolve, reject) => {
    const payload = JSON.stringify(body)
    const req = request(
      `${base}${path}`,
      {
        method: "POST",
        localAddress,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) }
      },
      (response) => {
        let text = ""
        response.setEncoding("utf8").on("data", (chunk: string) => {
          text += chunk
        })
        response.on("end", () =>
          resolve({
            status: response.statusCode ?? 0,
            body: text === "" ? "" : JSON.parse(text),
            headers: response.headers
          })
        )
      }
    )
    req.on("error", reject)
    req.setTimeout(30_000, () => req.destroy(new Error("timed out")))
    req.end(payload)
  })

/** A WebSocket connection from `localAddress` (unauthenticated). */
export const connectFrom = async (localAddress: string, base: string): Promise<WebSocket> => {
  const ws = new WebSocket(wsUrlOf(base), { localAddress, handshakeTimeout: 30_000 })
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve())
    ws.once("error", reject)
  })
  return ws
}

/** The embedded node's generated signing secret (kept in its data directory). */
export const devSecret = (harmony: Harmony) => readFileSync(join(harmony.dataDir!, "jwt-secret"), "utf8").trim()

/** A JWT signed with `secret` (HS256 unless `alg` says otherwise). */
export const signJwt = (
  secret: string,
  claims: Record<string, unknown>,
  options: { readonly alg?: string; readonly expiresIn?: string | number } = {}
) => {
  const jwt = new SignJWT(claims).setProtectedHeader({ alg: options.alg ?? "HS256", typ: "JWT" }).setIssuedAt()
  if (options.expiresIn !== undefined) jwt.setExpirationTime(options.expiresIn)
  return jwt.sign(new TextEncoder().encode(secret))
}

const base64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")

/** An unsigned token (`alg: none`). */
export const unsignedJwt = (claims: Record<string, unknown>) =>
  `${base64url({ alg: "none", typ: "JWT" })}.${base64url(claims)}.`

/** A token's payload, decoded (no verification). */
export const claimsOf = (token: string) => JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString())

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Polls `condition` until it holds or `timeoutMs` passes (generous: the machine is busy). */
export const eventually = async (what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 30_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(50)
  }
}

/**
 * Runs `work` while probing `/healthz` every 200 ms; answers the work's
 * result and the probes' outcomes. Each probe must answer 200 within
 * `probeTimeoutMs` (a second by the issue; the default leaves room for a
 * busy shared machine — the point is that a flood never starves it).
 */
export const whileProbing = async <A>(base: string, work: () => Promise<A>, probeTimeoutMs = 5_000) => {
  const failures: Array<string> = []
  let probes = 0
  let slowest = 0
  let done = false
  const probing = (async () => {
    while (!done) {
      const started = Date.now()
      try {
        const response = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(probeTimeoutMs) })
        if (response.status !== 200) failures.push(`healthz answered ${response.status}`)
        await response.arrayBuffer()
      } catch (error) {
        failures.push(`healthz failed: ${error instanceof Error ? error.message : String(error)}`)
      }
      probes++
      slowest = Math.max(slowest, Date.now() - started)
      await sleep(200)
    }
  })()
  try {
    const result = await work()
    return { result, failures, probes, slowest }
  } finally {
    done = true
    await probing
  }
}

/** Opens an authenticated client, or throws. */
export const session = async (harmony: Harmony, account: Account) =>
  (await WsClient.open(harmony.url, account.accessToken)).client

export const uuid = () => randomUUID()
export { api }
