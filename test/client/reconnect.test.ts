/**
 * The client across a server restart: the node stops with SIGTERM (sessions
 * get 1001) and a new one starts on the same port with the same data. The
 * clients reconnect by themselves, resubscribe with `sinceSeq`, and a send
 * made while the server was down goes out once it is back. One client is
 * kept offline a while longer (its WebSocket cannot connect while a gate is
 * shut) so messages sent meanwhile must reach it exactly once on its return.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import type { Message, Status } from "../../src/client/index.ts"
import { freePort, type Harmony, startHarmony } from "../support/harmony.ts"
import { clientPool, collect, gatedWebSocket, registered, waitUntil, waitUntilAsync } from "./support.ts"

describe("client SDK across a server restart", { timeout: 180_000 }, () => {
  const dataDir = mkdtempSync(join(tmpdir(), "harmony-client-"))
  const pool = clientPool()
  let harmony: Harmony | undefined

  afterAll(async () => {
    await pool.closeAll()
    await harmony?.stop()
    rmSync(dataDir, { recursive: true, force: true })
  })

  it("reconnects, resubscribes with sinceSeq, loses and doubles nothing", async () => {
    const port = await freePort()
    harmony = await startHarmony({ mode: "embedded", port, dataDir })
    const options = { baseUrl: harmony.url, reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } }

    const alice = await registered(pool.make, options, "rsa")
    const bobSocket = gatedWebSocket()
    const bob = await registered(pool.make, { ...options, WebSocket: bobSocket.WebSocket }, "rsb")
    const chat = await alice.client.createChat({ kind: "group", name: "restart", memberIds: [bob.user.id] })
    const atBob = collect(bob.client, "message")
    const atAlice = collect(alice.client, "message")
    const bobStatus = collect(bob.client, "status")
    const aliceStatus = collect(alice.client, "status")
    const gaps = [...collect(alice.client, "gap"), ...collect(bob.client, "gap")]
    await bob.client.subscribe(chat.id)
    await alice.client.subscribe(chat.id)

    for (const body of ["before 1", "before 2"]) await alice.client.send(chat.id, body)
    await waitUntil("the first messages at bob", () => atBob.length === 2)

    // The server goes away; both clients notice and start reconnecting.
    const stopped = await harmony.stop()
    expect(stopped.code).toBe(0)
    await waitUntil("both reconnecting", () =>
      [bob.client.status, alice.client.status].every((s: Status) => s === "reconnecting")
    )

    // A send while it is down waits for the server to come back, and is not lost.
    const queued = alice.client.send(chat.id, "while down")
    // Bob stays offline for a while after the restart.
    bobSocket.gate.open = false

    harmony = await startHarmony({ mode: "embedded", port, dataDir })
    const accepted = await queued
    await waitUntil("alice open again", () => alice.client.status === "open")
    for (const body of ["bob away 1", "bob away 2", "bob away 3"]) await alice.client.send(chat.id, body)
    await waitUntil("alice sees her messages", () => atAlice.length === 6)
    expect(bob.client.status).toBe("reconnecting")
    const attempts = bobSocket.gate.attempts

    // Bob comes back: everything after what he saw arrives, exactly once, in order.
    bobSocket.gate.open = true
    await waitUntil("bob caught up", () => atBob.length >= 6)
    await alice.client.send(chat.id, "live again")
    await waitUntil("the live message at bob", () => atBob.length >= 7)

    const expected = ["before 1", "before 2", "while down", "bob away 1", "bob away 2", "bob away 3", "live again"]
    const view = (messages: ReadonlyArray<Message>) => messages.map((m) => [m.seq, m.body])
    const numbered = expected.map((body, i) => [i + 1, body])
    expect(view(atBob)).toEqual(numbered)
    await waitUntil("alice's live message", () => atAlice.length >= 7)
    expect(view(atAlice)).toEqual(numbered)
    expect(atBob[2]!.id).toBe(accepted.id)
    expect(gaps).toEqual([])
    expect(bobSocket.gate.attempts).toBeGreaterThan(attempts)
    expect(bobStatus.filter((s) => s === "open").length).toBeGreaterThanOrEqual(2)
    expect(aliceStatus).toContain("reconnecting")

    // And the store holds each message once.
    let stored: ReadonlyArray<Message> = []
    await waitUntilAsync("everything stored", async () => {
      stored = (await bob.client.history(chat.id, { after: 0, limit: 100 })).messages
      return stored.length >= expected.length
    })
    expect(view(stored)).toEqual(numbered)

    // The tokens issued before the restart still work (the secret lives in the data dir).
    expect((await bob.client.me()).id).toBe(bob.user.id)
  })
})
