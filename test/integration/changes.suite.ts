/**
 * Edits, deletes and reactions (docs/protocol.md "Edits, deletes and
 * reactions"), black-box against the real `harmony serve`: each change is a
 * log entry with a seq of its own, delivered live and on `sinceSeq` recovery
 * in order among the messages; history shows messages as they are now;
 * a change is stored once per Idempotency-Key; and every new call is
 * authorized — a non-member learns nothing, and every pair of roles is tried
 * for edit and delete.
 */
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Api, api, type Harmony, type Reply, registerUser, startHarmony } from "../support/harmony.ts"
import { type Frame, WsClient } from "../support/wsClient.ts"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const expectStatus = (reply: Reply, status: number) => {
  expect(reply.status, `answered ${reply.status}: ${reply.text}`).toBe(status)
}

type Role = "owner" | "admin" | "member"

/** The seq of a frame of a chat's log (a message or a change), else undefined. */
const seqOf = (frame: Frame, chatId: string): number | undefined => {
  if (frame.type === "message") return frame.message.chatId === chatId ? frame.message.seq : undefined
  if (["message_edited", "message_deleted", "reaction"].includes(frame.type) && frame.chatId === chatId)
    return frame.seq
  return undefined
}

export const changesSuite = (mode: "embedded" | "cluster") => {
  describe(`edits, deletes and reactions (${mode} mode)`, { timeout: 120_000 }, () => {
    let harmony: Harmony | undefined
    let http: Api
    const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}`
    let counter = 0
    const clients = new Set<WsClient>()

    interface Account {
      readonly id: string
      readonly accessToken: string
    }

    const register = (label = "c"): Promise<Account> =>
      registerUser(http, `${label}-${run}-${(counter++).toString(36)}`)

    const createGroup = async (owner: Account, members: ReadonlyArray<Account>) => {
      const reply = await http.post(
        "/v1/chats",
        { name: `changes ${run}`, kind: "group", memberIds: members.map((m) => m.id) },
        { token: owner.accessToken }
      )
      expectStatus(reply, 201)
      return reply.body.id as string
    }

    const session = async (account: Account) => {
      const client = await WsClient.connect(harmony!.url)
      clients.add(client)
      await client.auth(account.accessToken)
      return client
    }

    const subscribed = async (account: Account, chatId: string, sinceSeq?: number) => {
      const client = await session(account)
      const answer = await client.request({
        type: "subscribe",
        chatId,
        ...(sinceSeq === undefined ? {} : { sinceSeq })
      })
      expect(answer).toMatchObject({ type: "subscribed", chatId })
      return client
    }

    /**
     * Sends a message over `client` (subscribed to the chat) and answers its seq once it arrived — and
     * once history holds it: a change to a message the store does not hold yet is waited for only so
     * long (5 s), and a loaded machine must not turn that into a 404 here.
     */
    const send = async (client: WsClient, chatId: string, body: string, caller?: Account) => {
      const ack = await client.request({ type: "send", chatId, clientMsgId: randomUUID(), body })
      expect(ack, JSON.stringify(ack)).toMatchObject({ type: "ack" })
      const frame = await client.waitFor((f) => f.type === "message" && f.message.id === ack.id, {
        what: `message ${body}`
      })
      const seq = frame.message.seq as number
      if (caller !== undefined) {
        const deadline = Date.now() + 30_000
        for (;;) {
          const reply = await http.get(`/v1/chats/${chatId}/messages?after=${seq - 1}&limit=1`, {
            token: caller.accessToken
          })
          if (reply.body.messages?.[0]?.seq === seq || Date.now() > deadline) break
          await sleep(100)
        }
      }
      return seq
    }

    const key = () => ({ "idempotency-key": randomUUID() })
    const edit = (
      caller: Account,
      chatId: string,
      seq: number,
      body: string,
      headers: Record<string, string> = key()
    ) => http.patch(`/v1/chats/${chatId}/messages/${seq}`, { body }, { token: caller.accessToken, headers })
    const remove = (caller: Account, chatId: string, seq: number, headers: Record<string, string> = key()) =>
      http.delete(`/v1/chats/${chatId}/messages/${seq}`, { token: caller.accessToken, headers })
    const reactionPath = (chatId: string, seq: number, emoji: string) =>
      `/v1/chats/${chatId}/messages/${seq}/reactions/${encodeURIComponent(emoji)}`
    const react = (caller: Account, chatId: string, seq: number, emoji: string) =>
      http.put(reactionPath(chatId, seq, emoji), undefined, { token: caller.accessToken, headers: key() })
    const unreact = (caller: Account, chatId: string, seq: number, emoji: string) =>
      http.delete(reactionPath(chatId, seq, emoji), { token: caller.accessToken, headers: key() })
    const history = async (caller: Account, chatId: string, query = "") => {
      const reply = await http.get(`/v1/chats/${chatId}/messages${query}`, { token: caller.accessToken })
      expectStatus(reply, 200)
      return reply.body.messages as Array<any>
    }

    /**
     * History once it has caught up with `ready` (it trails the live stream by the
     * persistence sink's latency: docs/protocol.md); the last answer after 30 s.
     */
    const settledHistory = async (
      caller: Account,
      chatId: string,
      query: string,
      ready: (messages: Array<any>) => boolean
    ) => {
      const deadline = Date.now() + 30_000
      let messages = await history(caller, chatId, query)
      while (!ready(messages) && Date.now() < deadline) {
        await sleep(200)
        messages = await history(caller, chatId, query)
      }
      return messages
    }

    /** Every frame of the chat's log a client got, in arrival order, with its seq. */
    const logFrames = (client: WsClient, chatId: string, from = 0) =>
      client.frames.slice(from).filter((f) => seqOf(f, chatId) !== undefined)
    const waitForSeq = (client: WsClient, chatId: string, seq: number, from = 0) =>
      client.waitFor((f) => seqOf(f, chatId) === seq, { what: `seq ${seq} of ${chatId}`, from })

    beforeAll(async () => {
      harmony = await startHarmony({ mode })
      http = api(harmony.url)
    })

    afterAll(async () => {
      for (const client of clients) client.terminate()
      if (harmony === undefined) return
      expect(await harmony.stop("SIGTERM"), harmony.logs()).toEqual({ code: 0, signal: null })
    })

    describe.concurrent("round trips", () => {
      it("edit, delete, react and unreact: 202 with the change's id, live frames with seqs of their own, history as it is now", async () => {
        const [alice, bob] = await Promise.all([register(), register()])
        const chatId = await createGroup(alice, [bob])
        const [aliceSession, bobSession] = await Promise.all([subscribed(alice, chatId), subscribed(bob, chatId)])
        const first = await send(aliceSession, chatId, "first draft")
        const second = await send(aliceSession, chatId, "regrettable")
        expect([first, second]).toEqual([1, 2])

        const edited = await edit(alice, chatId, first, "final text")
        expectStatus(edited, 202)
        expect(edited.body).toEqual({ id: expect.any(String) })
        expectStatus(await remove(alice, chatId, second), 202)
        expectStatus(await react(bob, chatId, first, "👍"), 202)
        expectStatus(await react(alice, chatId, first, "👍"), 202)
        expectStatus(await react(bob, chatId, first, "🎉"), 202)
        expectStatus(await unreact(bob, chatId, first, "🎉"), 202)

        const last = await waitForSeq(bobSession, chatId, 8)
        expect(last).toMatchObject({ type: "reaction", emoji: "🎉", added: false, targetSeq: first, userId: bob.id })
        const frames = logFrames(bobSession, chatId)
        // Every seq once, in order, messages and changes alike.
        expect(frames.map((f) => seqOf(f, chatId))).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
        expect(frames[2]).toEqual({
          type: "message_edited",
          chatId,
          seq: 3,
          id: edited.body.id,
          targetSeq: first,
          userId: alice.id,
          body: "final text",
          editedAt: expect.any(String)
        })
        expect(frames[3]).toEqual({
          type: "message_deleted",
          chatId,
          seq: 4,
          id: expect.any(String),
          targetSeq: second,
          userId: alice.id,
          deletedAt: expect.any(String)
        })
        expect(frames.slice(4).map((f) => [f.type, f.userId, f.emoji, f.added])).toEqual([
          ["reaction", bob.id, "👍", true],
          ["reaction", alice.id, "👍", true],
          ["reaction", bob.id, "🎉", true],
          ["reaction", bob.id, "🎉", false]
        ])
        // The author's own session gets the same stream.
        await waitForSeq(aliceSession, chatId, 8)
        expect(logFrames(aliceSession, chatId).map((f) => seqOf(f, chatId))).toEqual([1, 2, 3, 4, 5, 6, 7, 8])

        // History: messages only, as they are now (once the store has the last change); reactions counted for the caller.
        const seen = await settledHistory(bob, chatId, "?after=0", (messages) => {
          const reactions: Array<{ emoji: string; count: number; me: boolean }> = messages[0]?.reactions ?? []
          return reactions.length === 1 && reactions[0]!.emoji === "👍" && reactions[0]!.count === 2
        })
        expect(seen.map((m) => m.seq)).toEqual([1, 2])
        expect(seen[0]).toMatchObject({ seq: 1, body: "final text", editedAt: frames[2]!.editedAt })
        expect(seen[0].reactions).toEqual([{ emoji: "👍", count: 2, me: true }])
        expect(seen[1]).toMatchObject({ seq: 2, deletedAt: frames[3]!.deletedAt })
        expect(seen[1]).not.toHaveProperty("body")
        expect(seen[1].reactions ?? []).toEqual([])
        const newestFirst = await history(alice, chatId)
        expect(newestFirst.map((m) => m.seq)).toEqual([2, 1])
        expect(newestFirst[1].reactions).toEqual([{ emoji: "👍", count: 2, me: true }])
        // Paging back from a change's seq lands on the messages before it.
        expect((await history(alice, chatId, "?before=5&limit=1")).map((m) => m.seq)).toEqual([2])
      })

      it("reacting twice, or removing a reaction one does not have, is accepted and changes nothing", async () => {
        const [alice, bob] = await Promise.all([register(), register()])
        const chatId = await createGroup(alice, [bob])
        const aliceSession = await subscribed(alice, chatId)
        const seq = await send(aliceSession, chatId, "react to me")
        expectStatus(await react(bob, chatId, seq, "❤️"), 202)
        expectStatus(await react(bob, chatId, seq, "❤️"), 202)
        expectStatus(await unreact(bob, chatId, seq, "👀"), 202)
        // Each takes its seq: the stream stays contiguous.
        await waitForSeq(aliceSession, chatId, 4)
        const [message] = await settledHistory(alice, chatId, "?after=0", (messages) =>
          (messages[0]?.reactions ?? []).some((r: { emoji: string }) => r.emoji === "❤️")
        )
        expect(message.reactions).toEqual([{ emoji: "❤️", count: 1, me: false }])
      })

      it("sinceSeq recovery replays messages and changes in order, messages as they are now", async () => {
        const [alice, bob] = await Promise.all([register(), register()])
        const chatId = await createGroup(alice, [bob])
        const aliceSession = await subscribed(alice, chatId)
        const first = await send(aliceSession, chatId, "one")
        const second = await send(aliceSession, chatId, "two")
        expectStatus(await edit(alice, chatId, first, "one, edited"), 202)
        expectStatus(await react(bob, chatId, first, "🔥"), 202)
        expectStatus(await remove(alice, chatId, second), 202)
        await waitForSeq(aliceSession, chatId, 5)

        const fromTwo = await subscribed(bob, chatId, 2)
        await waitForSeq(fromTwo, chatId, 5)
        expect(logFrames(fromTwo, chatId).map((f) => [seqOf(f, chatId), f.type])).toEqual([
          [3, "message_edited"],
          [4, "reaction"],
          [5, "message_deleted"]
        ])

        const fromZero = await subscribed(bob, chatId, 0)
        await waitForSeq(fromZero, chatId, 5)
        const replayed = logFrames(fromZero, chatId)
        expect(replayed.map((f) => seqOf(f, chatId))).toEqual([1, 2, 3, 4, 5])
        expect(replayed[0]!.message).toMatchObject({ seq: 1, body: "one, edited" })
        // A message deleted since is replayed as its tombstone: its text never crosses the wire again.
        expect(replayed[1]!.message).toMatchObject({ seq: 2, deletedAt: expect.any(String) })
        expect(replayed[1]!.message).not.toHaveProperty("body")
        expect(JSON.stringify(replayed)).not.toContain('"two"')

        // Live after recovery, contiguous.
        expectStatus(await react(alice, chatId, first, "🔥"), 202)
        await waitForSeq(fromZero, chatId, 6)
        expect(logFrames(fromZero, chatId).map((f) => seqOf(f, chatId))).toEqual([1, 2, 3, 4, 5, 6])
      })

      it("the same Idempotency-Key twice is one change: same id, one seq, one frame", async () => {
        const [alice] = await Promise.all([register()])
        const chatId = await createGroup(alice, [])
        const aliceSession = await subscribed(alice, chatId)
        const seq = await send(aliceSession, chatId, "typo")
        const headers = { "idempotency-key": `edit-${randomUUID()}` }
        const once = await edit(alice, chatId, seq, "fixed", headers)
        const again = await edit(alice, chatId, seq, "fixed", headers)
        expectStatus(once, 202)
        expectStatus(again, 202)
        expect(again.body.id).toBe(once.body.id)
        // A barrier after both: the next change takes seq 3, so the key took one seq.
        expectStatus(await react(alice, chatId, seq, "✅"), 202)
        const barrier = await waitForSeq(aliceSession, chatId, 3)
        expect(barrier).toMatchObject({ type: "reaction", emoji: "✅" })
        expect(aliceSession.matching((f) => f.type === "message_edited" && f.chatId === chatId)).toHaveLength(1)
        // Without a key, a retry is another change.
        expectStatus(await edit(alice, chatId, seq, "fixed", {}), 202)
        expectStatus(await edit(alice, chatId, seq, "fixed", {}), 202)
        await waitForSeq(aliceSession, chatId, 5)
      })
    })

    it("search follows edits and deletes: the new word is found, the old one and a deleted message not", async () => {
      const [alice] = await Promise.all([register()])
      const chatId = await createGroup(alice, [])
      const aliceSession = await subscribed(alice, chatId)
      const word = (name: string) => `${name}${run}`.replace(/[^a-z0-9]/g, "")
      const [before, after, gone] = [word("quokka"), word("wombat"), word("numbat")]
      const edited = await send(aliceSession, chatId, `a ${before} appears`)
      const deleted = await send(aliceSession, chatId, `a ${gone} appears`)
      const hits = async (q: string) => {
        const reply = await http.get(`/v1/search?q=${q}`, { token: alice.accessToken })
        expectStatus(reply, 200)
        return (reply.body.hits as Array<any>).map((hit) => hit.seq)
      }
      const eventually = async (q: string, want: Array<number>) => {
        const deadline = Date.now() + 30_000
        let got = await hits(q)
        while (JSON.stringify(got) !== JSON.stringify(want) && Date.now() < deadline) {
          await sleep(200)
          got = await hits(q)
        }
        expect(got, `search ${q}`).toEqual(want)
      }
      await eventually(before, [edited])
      await eventually(gone, [deleted])
      expectStatus(await edit(alice, chatId, edited, `a ${after} appears`), 202)
      expectStatus(await remove(alice, chatId, deleted), 202)
      await eventually(after, [edited])
      await eventually(before, [])
      await eventually(gone, [])
    })

    it("the OpenAPI document describes the four calls, with the Idempotency-Key header", async () => {
      const reply = await http.get("/openapi.json")
      expectStatus(reply, 200)
      const paths = reply.body.paths
      const methods = (path: string) => Object.keys(paths[path] ?? {}).sort()
      expect(methods("/v1/chats/{chatId}/messages/{seq}")).toEqual(["delete", "patch"])
      expect(methods("/v1/chats/{chatId}/messages/{seq}/reactions/{emoji}")).toEqual(["delete", "put"])
      const edit = paths["/v1/chats/{chatId}/messages/{seq}"].patch
      expect(edit.parameters.map((p: any) => `${p.in}:${p.name}`)).toContain("header:idempotency-key")
      expect(Object.keys(edit.responses)).toEqual(expect.arrayContaining(["202", "400", "403", "404"]))
    })

    describe.concurrent("authorization", () => {
      it("a non-member gets 404 for every new call, the same as for a chat that does not exist", async () => {
        const [alice, stranger] = await Promise.all([register(), register()])
        const chatId = await createGroup(alice, [])
        const aliceSession = await subscribed(alice, chatId)
        const seq = await send(aliceSession, chatId, "private")
        const missing = `no-such-chat-${run}`
        for (const target of [chatId, missing]) {
          for (const reply of [
            await edit(stranger, target, seq, "mine now"),
            await remove(stranger, target, seq),
            await react(stranger, target, seq, "👍"),
            await unreact(stranger, target, seq, "👍")
          ]) {
            expectStatus(reply, 404)
            expect(reply.body.error.code).toBe("not_found")
            expect(reply.text).not.toContain("private")
          }
        }
        // The stranger's answers for a real chat and a missing one say the same.
        const real = await edit(stranger, chatId, seq, "x")
        const fake = await edit(stranger, missing, seq, "x")
        expect(real.body.error.message.replace(chatId, "ID")).toBe(fake.body.error.message.replace(missing, "ID"))
        // Nothing reached the log.
        await aliceSession.ping()
        expect(logFrames(aliceSession, chatId).map((f) => seqOf(f, chatId))).toEqual([1])
        // Nor is it unauthenticated-friendly.
        expectStatus(await http.patch(`/v1/chats/${chatId}/messages/${seq}`, { body: "x" }), 401)
      })

      it("a target that is not a message of the chat is 404: a change's seq, a seq past the end, a deleted message", async () => {
        const [alice] = await Promise.all([register()])
        const chatId = await createGroup(alice, [])
        const aliceSession = await subscribed(alice, chatId)
        const seq = await send(aliceSession, chatId, "soon gone")
        expectStatus(await react(alice, chatId, seq, "👋"), 202)
        await waitForSeq(aliceSession, chatId, 2)
        expectStatus(await edit(alice, chatId, 2, "a reaction is not a message"), 404)
        expectStatus(await edit(alice, chatId, 99, "nothing there"), 404)
        expectStatus(await remove(alice, chatId, seq), 202)
        await waitForSeq(aliceSession, chatId, 3)
        // Admission reads the store, which trails the live stream: once history shows the tombstone.
        const deadline = Date.now() + 30_000
        while ((await history(alice, chatId, "?after=0"))[0]?.deletedAt === undefined && Date.now() < deadline) {
          await sleep(100)
        }
        for (const reply of [
          await edit(alice, chatId, seq, "back?"),
          await remove(alice, chatId, seq),
          await react(alice, chatId, seq, "👍")
        ]) {
          expectStatus(reply, 404)
        }
      })

      it("malformed input is 400: an empty or long body, an emoji with whitespace or too long, a bad key", async () => {
        const [alice] = await Promise.all([register()])
        const chatId = await createGroup(alice, [])
        const aliceSession = await subscribed(alice, chatId)
        const seq = await send(aliceSession, chatId, "hi")
        expectStatus(await edit(alice, chatId, seq, ""), 400)
        expectStatus(await edit(alice, chatId, seq, "x".repeat(4001)), 400)
        expectStatus(await react(alice, chatId, seq, "a b"), 400)
        expectStatus(await react(alice, chatId, seq, "x".repeat(33)), 400)
        expectStatus(await edit(alice, chatId, seq, "ok", { "idempotency-key": "k".repeat(129) }), 400)
        expectStatus(await edit(alice, chatId, "x" as unknown as number, "ok"), 400)
      })

      it("every pair of roles for edit and delete: only the author edits; the author, the owner and admins delete", async () => {
        const [owner, admin, member] = await Promise.all([register(), register(), register()])
        const chatId = await createGroup(owner, [admin, member])
        expectStatus(
          await http.patch(`/v1/chats/${chatId}/members/${admin.id}`, { role: "admin" }, { token: owner.accessToken }),
          200
        )
        const accounts: Record<Role, Account> = { owner, admin, member }
        const sessions = Object.fromEntries(
          await Promise.all(
            (Object.keys(accounts) as Array<Role>).map(async (role) => [role, await subscribed(accounts[role], chatId)])
          )
        ) as Record<Role, WsClient>
        const roles: Array<Role> = ["owner", "admin", "member"]
        for (const actor of roles) {
          for (const author of roles) {
            const own = actor === author
            const pair = `${actor} on ${own ? "their own" : `the ${author}'s`} message`
            const forEdit = await send(sessions[author], chatId, `for ${actor} to edit`, accounts[author])
            const edited = await edit(accounts[actor], chatId, forEdit, `edited by ${actor}`)
            expect(edited.status, `edit: ${pair}: ${edited.text}`).toBe(own ? 202 : 403)
            if (!own) expect(edited.body.error.code).toBe("forbidden")

            const forDelete = await send(sessions[author], chatId, `for ${actor} to delete`, accounts[author])
            const deleted = await remove(accounts[actor], chatId, forDelete)
            const allowed = own || actor === "owner" || actor === "admin"
            expect(deleted.status, `delete: ${pair}: ${deleted.text}`).toBe(allowed ? 202 : 403)
          }
        }
        // History agrees with the answers.
        const deadline = Date.now() + 30_000
        let messages: Array<any> = []
        for (;;) {
          messages = await history(owner, chatId, "?after=0&limit=100")
          const settled =
            messages.filter((m) => m.editedAt !== undefined).length === 3 &&
            messages.filter((m) => m.deletedAt !== undefined).length === 7
          if (settled || Date.now() > deadline) break
          await sleep(200)
        }
        expect(
          messages
            .filter((m) => m.editedAt !== undefined)
            .map((m) => m.body)
            .sort()
        ).toEqual(["edited by admin", "edited by member", "edited by owner"])
        expect(messages.filter((m) => m.deletedAt !== undefined)).toHaveLength(7)
      })
    })
  })
}
