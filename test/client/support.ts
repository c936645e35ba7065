/**
 * Helpers for the client SDK suites: unique accounts, waiting on conditions
 * with generous deadlines (two shared cores), and WebSocket classes to inject
 * into the client that misbehave on purpose (drop a frame, refuse to connect)
 * so the recovery paths run deterministically against the real server.
 */
import { randomUUID } from "node:crypto"
import { createClient, type ClientEvents, type ClientOptions, type HarmonyClient } from "../../src/client/index.ts"

export const password = "correct horse battery"

const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}`
let counter = 0
export const uniqueUsername = (label: string) => `${label}-${run}-${(counter++).toString(36)}`

/** Polls `check` until it answers true; fails naming `what` after `timeoutMs`. */
export const waitUntil = async (what: string, check: () => boolean, timeoutMs = 30_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

/** `waitUntil` for an asynchronous check (e.g. polling an HTTP call). */
export const waitUntilAsync = async (what: string, check: () => Promise<boolean>, timeoutMs = 30_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Every payload of `event` the client emits, collected from now on. */
export const collect = <K extends keyof ClientEvents>(client: HarmonyClient, event: K): Array<ClientEvents[K]> => {
  const seen: Array<ClientEvents[K]> = []
  client.on(event, (payload) => seen.push(payload))
  return seen
}

/** Clients made by `clients.make`, all closed by `clients.closeAll()`. */
export const clientPool = () => {
  const made = new Set<HarmonyClient>()
  return {
    make: (options: ClientOptions) => {
      const client = createClient(options)
      made.add(client)
      return client
    },
    closeAll: async () => {
      await Promise.all([...made].map((client) => client.close()))
      made.clear()
    }
  }
}

/** A registered client (its session is live). */
export const registered = async (
  make: (options: ClientOptions) => HarmonyClient,
  options: ClientOptions,
  label = "c"
) => {
  const client = make(options)
  const session = await client.register({ username: uniqueUsername(label), password })
  return { client, session, user: session.user }
}

export const newId = () => randomUUID()

type MessageFilter = (data: string, socket: WebSocket) => boolean

/**
 * A WebSocket class whose incoming text frames pass `keep` first: a frame it
 * answers false for never reaches the client (a lost frame). `keep` may also
 * close the socket (a connection that dies at that moment).
 */
export const filteringWebSocket = (keep: MessageFilter): typeof WebSocket =>
  class FilteringWebSocket extends WebSocket {
    override addEventListener(type: string, listener: any, options?: any): void {
      if (type !== "message") {
        super.addEventListener(type, listener, options)
        return
      }
      super.addEventListener(
        "message",
        (event: MessageEvent) => {
          if (typeof event.data !== "string" || keep(event.data, this)) listener(event)
        },
        options
      )
    }
  } as typeof WebSocket

/**
 * A WebSocket class that cannot connect while the gate is shut (it dials a
 * port nobody listens on): one client stays offline while others go on.
 */
export const gatedWebSocket = () => {
  const gate = { open: true, attempts: 0 }
  const Gated = class GatedWebSocket extends WebSocket {
    constructor(url: string | URL, protocols?: string | Array<string>) {
      gate.attempts++
      super(gate.open ? url : "ws://127.0.0.1:9/v1/ws", protocols)
    }
  } as typeof WebSocket
  return { gate, WebSocket: Gated }
}

/** A WebSocket class that records the close code of every connection it made. */
export const recordingWebSocket = () => {
  const closeCodes: Array<number> = []
  const Recording = class RecordingWebSocket extends WebSocket {
    constructor(url: string | URL, protocols?: string | Array<string>) {
      super(url, protocols)
      super.addEventListener("close", (event) => closeCodes.push(event.code))
    }
  } as typeof WebSocket
  return { closeCodes, WebSocket: Recording }
}
