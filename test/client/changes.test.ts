/**
 * The SDK's edits, deletes and reactions (docs/protocol.md "Edits, deletes
 * and reactions") against the real `harmony serve` (embedded mode):
 * `editMessage`, `deleteMessage`, `react`, `unreact`, their typed events in
 * seq order among the messages (gap detection counts change seqs: no `gap`,
 * no resubscribe), a lost answer retried with the same Idempotency-Key (one
 * change), and the contract's errors.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "@effect/vitest"
import { HarmonyError } from "../../src/client/index.ts"
import { type Harmony, startHarmony } from "../support/harmony.ts"
import { clientPool, collect, registered, waitUntil } from "./support.ts"

describe("client SDK: edits, deletes and reactions", { timeout: 120_000 }, () => {
  let harmony: Harmony
  const pool = clientPool()

  beforeAll(async () => {
    harmony = await startHarmony({ mode: "embedded" })
  })
  afterEach(() => pool.closeAll())
  afterAll(() => harmony?.stop())

  it("makes each change once, and every subscriber gets its event in seq order among the messages", async () => {
    const [alice, bob] = await Promise.all([
      registered(pool.make, { baseUrl: harmony.url }, "cha"),
      registered(pool.make, { baseUrl: harmony.url }, "chb")
    ])
    const chat = await alice.client.createChat({ kind: "group", name: "changes", memberIds: [bob.user.id] })
    const order: Array<string> = []
    for (const event of ["message", "message_edited", "message_deleted", "reaction"] as const) {
      bob.client.on(event, (payload) => order.push(`${payload.seq}:${event}`))
    }
    const edits = collect(bob.client, "message_edited")
    const reactions = collect(bob.client, "reaction")
    const gaps = collect(bob.client, "gap")
    await Promise.all([alice.client.subscribe(chat.id), bob.client.subscribe(chat.id)])

    await alice.client.send(chat.id, "helo")
    await alice.client.send(chat.id, "oops")
    await waitUntil("both messages at bob", () => order.length === 2)
    const edited = await alice.client.editMessage(chat.id, 1, "hello")
    expect(edited.id).toEqual(expect.any(String))
    await alice.client.deleteMessage(chat.id, 2)
    await bob.client.react(chat.id, 1, "👋")
    await bob.client.unreact(chat.id, 1, "👋")
    await alice.client.send(chat.id, "after the changes")
    await waitUntil("seven seqs at bob", () => order.length === 7)

    expect(order).toEqual([
      "1:message",
      "2:message",
      "3:message_edited",
      "4:message_deleted",
      "5:reaction",
      "6:reaction",
      "7:message"
    ])
    expect(edits[0]).toMatchObject({ id: edited.id, targetSeq: 1, userId: alice.user.id, body: "hello" })
    expect(reactions.map((r) => [r.emoji, r.added])).toEqual([
      ["👋", true],
      ["👋", false]
    ])
    expect(gaps).toEqual([])

    const page = await bob.client.history(chat.id, { after: 0 })
    expect(page.messages.map((m) => [m.seq, m.body, m.deletedAt === undefined])).toEqual([
      [1, "hello", true],
      [2, undefined, false],
      [7, "after the changes", true]
    ])
  })

  it("retries a change whose answer was lost with the same Idempotency-Key: it is made once", async () => {
    let lost = 0
    // The first PATCH reaches the server, but its answer never reaches the client.
    const lossyFetch: typeof fetch = async (input, init) => {
      const response = await globalThis.fetch(input, init)
      if (init?.method === "PATCH" && lost === 0) {
        lost++
        throw new TypeError("fetch failed: the connection broke")
      }
      return response
    }
    const alice = await registered(pool.make, { baseUrl: harmony.url, fetch: lossyFetch }, "chr")
    const chat = await alice.client.createChat({ kind: "group", name: "retry", memberIds: [] })
    const edits = collect(alice.client, "message_edited")
    const order: Array<number> = []
    alice.client.on("reaction", (r) => order.push(r.seq))
    await alice.client.subscribe(chat.id)
    await alice.client.send(chat.id, "first")
    const edited = await alice.client.editMessage(chat.id, 1, "first, edited")
    expect(lost).toBe(1)
    // A change after it: its seq shows the retried edit took one seq.
    await alice.client.react(chat.id, 1, "✅")
    await waitUntil("the reaction", () => order.length === 1)
    expect(order).toEqual([3])
    expect(edits.map((e) => e.id)).toEqual([edited.id])
  })

  it("answers the contract's errors: forbidden, not_found, bad_request", async () => {
    const [alice, bob, stranger] = await Promise.all([
      registered(pool.make, { baseUrl: harmony.url }, "che"),
      registered(pool.make, { baseUrl: harmony.url }, "chf"),
      registered(pool.make, { baseUrl: harmony.url }, "chg")
    ])
    const chat = await alice.client.createChat({ kind: "group", name: "errors", memberIds: [bob.user.id] })
    await alice.client.send(chat.id, "alice's")
    const code = (promise: Promise<unknown>) =>
      promise.then(
        () => "ok",
        (error: unknown) => (error instanceof HarmonyError ? error.code : String(error))
      )
    // The message may still be on its way to the store: the server waits for it.
    expect(await code(bob.client.editMessage(chat.id, 1, "bob's now"))).toBe("forbidden")
    expect(await code(bob.client.deleteMessage(chat.id, 1))).toBe("forbidden")
    expect(await code(stranger.client.react(chat.id, 1, "👀"))).toBe("not_found")
    expect(await code(alice.client.react(chat.id, 1, "two words"))).toBe("bad_request")
    expect(await code(alice.client.editMessage(chat.id, 99, "nothing there"))).toBe("not_found")
  })
})
