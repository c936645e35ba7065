/**
 * The SDK's side of the user's own channel and roles (docs/protocol.md "The
 * user's own channel", "Roles") against the real `harmony serve` (embedded
 * mode): typed `chat_added`, `chat_updated`, `chat_removed`, `chat_deleted`
 * and `unread` events without subscribing, and `setRole` with its typed
 * errors.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "@effect/vitest"
import { HarmonyError } from "../../src/client/index.ts"
import { type Harmony, startHarmony } from "../support/harmony.ts"
import { clientPool, collect, registered, waitUntil } from "./support.ts"

describe("client SDK: the chat list and roles", { timeout: 120_000 }, () => {
  let harmony: Harmony
  const pool = clientPool()
  const account = (label = "cl") => registered(pool.make, { baseUrl: harmony.url }, label)

  beforeAll(async () => {
    harmony = await startHarmony({ mode: "embedded" })
  })
  afterEach(() => pool.closeAll())
  afterAll(() => harmony?.stop())

  it("emits the chat list's events to a connected client that subscribed to nothing", async () => {
    const [alice, bob] = await Promise.all([account("cla"), account("clb")])
    const added = collect(bob.client, "chat_added")
    const updated = collect(bob.client, "chat_updated")
    const unread = collect(bob.client, "unread")
    const removed = collect(bob.client, "chat_removed")
    const deleted = collect(bob.client, "chat_deleted")
    await bob.client.connect()

    const chat = await alice.client.createChat({ kind: "group", name: "list", memberIds: [bob.user.id] })
    await waitUntil("chat_added at bob", () => added.length > 0)
    expect(added[0]).toMatchObject({ lastSeq: 0, lastReadSeq: 0 })
    expect(added[0]?.chat.id).toBe(chat.id)
    expect(added[0]?.chat.members.map((m) => m.userId).sort()).toEqual([alice.user.id, bob.user.id].sort())

    await alice.client.send(chat.id, "one")
    await waitUntil("unread at bob", () => unread.length > 0)
    expect(unread[0]).toEqual({ chatId: chat.id, lastSeq: 1 })

    const answered = await alice.client.setRole(chat.id, bob.user.id, "admin")
    expect(answered.members).toContainEqual(expect.objectContaining({ userId: bob.user.id, role: "admin" }))
    await waitUntil("chat_updated with bob as admin", () =>
      updated.some((u) => u.chat.members.some((m) => m.userId === bob.user.id && m.role === "admin"))
    )

    await alice.client.removeMember(chat.id, bob.user.id)
    await waitUntil("chat_removed at bob", () => removed.length > 0)
    expect(removed[0]).toEqual({ chatId: chat.id })

    const other = await alice.client.createChat({ kind: "group", name: "gone", memberIds: [bob.user.id] })
    await waitUntil("the second chat_added", () => added.some((a) => a.chat.id === other.id))
    await alice.client.deleteChat(other.id)
    await waitUntil("chat_deleted at bob", () => deleted.length > 0)
    expect(deleted[0]).toEqual({ chatId: other.id })
  })

  it("setRole hands a chat over, and answers typed errors", async () => {
    const [alice, bob, carol] = await Promise.all([account("cra"), account("crb"), account("crc")])
    const chat = await alice.client.createChat({ kind: "group", name: "roles", memberIds: [bob.user.id] })
    const rejection = (promise: Promise<unknown>) =>
      promise.then(
        () => undefined,
        (error: unknown) => error
      )
    const forbidden = await rejection(bob.client.setRole(chat.id, alice.user.id, "member"))
    expect(forbidden).toBeInstanceOf(HarmonyError)
    expect((forbidden as HarmonyError).code).toBe("forbidden")
    expect(((await rejection(carol.client.setRole(chat.id, bob.user.id, "admin"))) as HarmonyError).code).toBe(
      "not_found"
    )
    const handedOver = await alice.client.setRole(chat.id, bob.user.id, "owner")
    expect(handedOver.ownerId).toBe(bob.user.id)
    expect(handedOver.members).toContainEqual(expect.objectContaining({ userId: alice.user.id, role: "admin" }))
  })
})
