/**
 * The user's own channel (docs/protocol.md "The user's own channel"),
 * black-box against the real `harmony serve`: frames arrive after `ready`
 * without subscribing, through the event path; `unread` reaches only
 * sessions not subscribed to the chat (roles: roles.suite.ts). Nothing of
 * another user's channel ever reaches a session: where a test asserts that,
 * it first waits for a barrier frame that was published after what must not
 * arrive.
 */
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Api, api, type Harmony, type Reply, registerUser, startHarmony } from "../support/harmony.ts"
import { type Frame, WsClient } from "../support/wsClient.ts"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const expectStatus = (reply: Reply, status: number) => {
  expect(reply.status, `answered ${reply.status}: ${reply.text}`).toBe(status)
}

export const chatListSuite = (mode: "embedded" | "cluster") => {
  describe(`the user's own channel (${mode} mode)`, { timeout: 120_000 }, () => {
    let harmony: Harmony | undefined
    let http: Api
    const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}`
    let counter = 0
    const clients = new Set<WsClient>()

    interface Account {
      readonly id: string
      readonly accessToken: string
    }

    const register = (label = "l"): Promise<Account> =>
      registerUser(http, `${label}-${run}-${(counter++).toString(36)}`)

    const createGroup = async (owner: Account, members: ReadonlyArray<Account>, name = `list ${run}`) => {
      const reply = await http.post(
        "/v1/chats",
        { name, kind: "group", memberIds: members.map((m) => m.id) },
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

    const setRole = (caller: Account, chatId: string, userId: string, role: string) =>
      http.patch(`/v1/chats/${chatId}/members/${userId}`, { role }, { token: caller.accessToken })

    const send = async (client: WsClient, chatId: string, body = "hello") => {
      const ack = await client.request({ type: "send", chatId, clientMsgId: randomUUID(), body })
      expect(ack, JSON.stringify(ack)).toMatchObject({ type: "ack" })
    }

    const of = (type: string, chatId: string) => (frame: Frame) =>
      frame.type === type && (frame.chatId === chatId || frame.chat?.id === chatId)

    beforeAll(async () => {
      harmony = await startHarmony({ mode })
      http = api(harmony.url)
    })

    afterAll(async () => {
      for (const client of clients) client.terminate()
      if (harmony === undefined) return
      expect(await harmony.stop("SIGTERM"), harmony.logs()).toEqual({ code: 0, signal: null })
    })

    describe.concurrent("the chat list", () => {
      it("chat_added reaches every session of an added member, and the creator's other sessions", async () => {
        const [owner, member, later] = await Promise.all([register(), register(), register()])
        const [ownerElsewhere, memberA, memberB, laterSession] = await Promise.all([
          session(owner),
          session(member),
          session(member),
          session(later)
        ])
        const chatId = await createGroup(owner, [member])
        for (const client of [ownerElsewhere, memberA, memberB]) {
          const added = await client.waitFor(of("chat_added", chatId), { what: "chat_added" })
          expect(added).toEqual({
            type: "chat_added",
            chat: expect.objectContaining({ id: chatId, kind: "group", ownerId: owner.id }),
            lastSeq: 0,
            lastReadSeq: 0
          })
          expect(added.chat.members).toHaveLength(2)
        }
        // Added later, after messages: the chat's lastSeq and their own read position.
        await send(ownerElsewhere, chatId, "one")
        await send(ownerElsewhere, chatId, "two")
        const deadline = Date.now() + 30_000
        // The chat's lastSeq is recorded when the messages are stored.
        for (;;) {
          const list = await http.get("/v1/me/chats", { token: owner.accessToken })
          if (list.body.chats.find((c: any) => c.id === chatId)?.lastSeq === 2 || Date.now() > deadline) break
          await sleep(100)
        }
        expectStatus(
          await http.post(`/v1/chats/${chatId}/members`, { userIds: [later.id] }, { token: owner.accessToken }),
          200
        )
        const added = await laterSession.waitFor(of("chat_added", chatId))
        expect(added).toMatchObject({ lastSeq: 2, lastReadSeq: 0 })
      })

      it("a direct chat started with someone is chat_added on their sessions", async () => {
        const [starter, peer] = await Promise.all([register(), register()])
        const peerSession = await session(peer)
        const reply = await http.post(
          "/v1/chats",
          { kind: "direct", memberIds: [peer.id] },
          { token: starter.accessToken }
        )
        expectStatus(reply, 201)
        const added = await peerSession.waitFor(of("chat_added", reply.body.id))
        expect(added.chat).toMatchObject({ id: reply.body.id, kind: "direct" })
      })

      it("chat_updated on rename and role changes, chat_removed on removal, chat_deleted on deletion", async () => {
        const [owner, member, removed] = await Promise.all([register(), register(), register()])
        const chatId = await createGroup(owner, [member, removed])
        const [memberSession, removedSession] = await Promise.all([session(member), session(removed)])

        expectStatus(await http.patch(`/v1/chats/${chatId}`, { name: "renamed" }, { token: owner.accessToken }), 200)
        const renamed = await memberSession.waitFor((f) => of("chat_updated", chatId)(f) && f.chat.name === "renamed")
        expect(renamed.chat.members).toHaveLength(3)

        expectStatus(await setRole(owner, chatId, member.id, "admin"), 200)
        await memberSession.waitFor(
          (f) =>
            of("chat_updated", chatId)(f) &&
            f.chat.members.some((m: any) => m.userId === member.id && m.role === "admin")
        )

        expectStatus(await http.delete(`/v1/chats/${chatId}/members/${removed.id}`, { token: owner.accessToken }), 204)
        await removedSession.waitFor(of("chat_removed", chatId))

        expectStatus(await http.delete(`/v1/chats/${chatId}`, { token: owner.accessToken }), 204)
        await memberSession.waitFor(of("chat_deleted", chatId))
        // Gone from the list, the removed member heard nothing after their removal.
        const barrier = await createGroup(owner, [removed])
        await removedSession.waitFor(of("chat_added", barrier))
        const after = removedSession.frames.slice(removedSession.frames.findIndex(of("chat_removed", chatId)) + 1)
        expect(after.filter((f) => f.chatId === chatId || f.chat?.id === chatId)).toEqual([])
      })

      it("unread reaches members' sessions not subscribed to the chat, and only theirs", async () => {
        const [author, reader, stranger] = await Promise.all([register(), register(), register()])
        const chatId = await createGroup(author, [reader])
        const [authorSession, unsubscribed, subscribed, strangerSession] = await Promise.all([
          session(author),
          session(reader),
          session(reader),
          session(stranger)
        ])
        const answer = await subscribed.request({ type: "subscribe", chatId })
        expect(answer).toMatchObject({ type: "subscribed", chatId })
        await authorSession.request({ type: "subscribe", chatId })

        await send(authorSession, chatId, "one")
        await send(authorSession, chatId, "two")
        const unread = await unsubscribed.waitFor((f) => f.type === "unread" && f.lastSeq === 2)
        expect(unread).toEqual({ type: "unread", chatId, lastSeq: 2 })
        await subscribed.waitFor((f) => f.type === "message" && f.message.seq === 2)
        // The subscribed session got the messages, no unread; the stranger nothing of the chat.
        const barrier = await createGroup(author, [stranger])
        await strangerSession.waitFor(of("chat_added", barrier))
        await subscribed.request({ type: "ping" })
        expect(subscribed.frames.filter((f) => f.type === "unread")).toEqual([])
        expect(strangerSession.frames.filter((f) => f.chatId === chatId || f.chat?.id === chatId)).toEqual([])

        // Unsubscribed, the session gets unread again; removed, nothing more.
        await subscribed.request({ type: "unsubscribe", chatId })
        await send(authorSession, chatId, "three")
        await subscribed.waitFor((f) => f.type === "unread" && f.lastSeq === 3)
        expectStatus(await http.delete(`/v1/chats/${chatId}/members/${reader.id}`, { token: author.accessToken }), 204)
        await unsubscribed.waitFor(of("chat_removed", chatId))
        const from = unsubscribed.mark()
        await send(authorSession, chatId, "four")
        const later = await createGroup(author, [reader])
        await unsubscribed.waitFor(of("chat_added", later))
        await unsubscribed.request({ type: "ping" })
        expect(unsubscribed.frames.slice(from).filter((f) => f.type === "unread")).toEqual([])
      })

      it("a chat joined while connected gets unread at once", async () => {
        const [owner, joiner] = await Promise.all([register(), register()])
        const joinerSession = await session(joiner)
        const ownerSession = await session(owner)
        const chatId = await createGroup(owner, [joiner])
        await joinerSession.waitFor(of("chat_added", chatId))
        await send(ownerSession, chatId)
        expect(await joinerSession.waitFor((f) => f.type === "unread")).toEqual({ type: "unread", chatId, lastSeq: 1 })
      })
    })
  })
}
