/**
 * The user's own channel and roles (docs/protocol.md "The user's own
 * channel" and "Roles"), black-box against the real `harmony serve`: frames
 * arrive after `ready` without subscribing, through the event path; `unread`
 * reaches only sessions not subscribed to the chat; the owner sets roles and
 * hands the chat over; and every pair of roles is tried for remove, rename
 * and delete. Nothing of another user's channel ever reaches a session:
 * where a test asserts that, it first waits for a barrier frame that was
 * published after what must not arrive.
 */
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Api, api, type Harmony, type Reply, startHarmony } from "../support/harmony.ts"
import { type Frame, WsClient } from "../support/wsClient.ts"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const expectStatus = (reply: Reply, status: number) => {
  expect(reply.status, `answered ${reply.status}: ${reply.text}`).toBe(status)
}

type Role = "owner" | "admin" | "member"

export const chatListSuite = (mode: "embedded" | "cluster") => {
  describe(`the user's own channel and roles (${mode} mode)`, { timeout: 120_000 }, () => {
    let harmony: Harmony | undefined
    let http: Api
    const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}`
    let counter = 0
    const clients = new Set<WsClient>()

    interface Account {
      readonly id: string
      readonly accessToken: string
    }

    const register = async (label = "l"): Promise<Account> => {
      const username = `${label}-${run}-${(counter++).toString(36)}`
      const deadline = Date.now() + 60_000
      for (;;) {
        const reply = await http.post("/v1/auth/register", { username, password: "correct horse battery" })
        if (reply.status === 429 && Date.now() < deadline) {
          await sleep(1_000 * Number(reply.headers.get("retry-after") ?? "1"))
          continue
        }
        expectStatus(reply, 201)
        return { id: reply.body.user.id, accessToken: reply.body.accessToken }
      }
    }

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

    describe.concurrent("roles", () => {
      /** A chat with an owner, two admins and two members. */
      const team = async () => {
        const [owner, admin, admin2, member, member2] = await Promise.all([
          register("o"),
          register("a"),
          register("a"),
          register("m"),
          register("m")
        ])
        const chatId = await createGroup(owner, [admin, admin2, member, member2])
        expectStatus(await setRole(owner, chatId, admin.id, "admin"), 200)
        expectStatus(await setRole(owner, chatId, admin2.id, "admin"), 200)
        return { chatId, owner, admin, admin2, member, member2 }
      }

      it("the owner makes admins and members; answers the chat", async () => {
        const { chatId, owner, admin, member } = await team()
        const reply = await setRole(owner, chatId, member.id, "admin")
        expectStatus(reply, 200)
        expect(reply.body.members).toContainEqual({ userId: member.id, role: "admin" })
        const back = await setRole(owner, chatId, admin.id, "member")
        expectStatus(back, 200)
        expect(back.body.members).toContainEqual({ userId: admin.id, role: "member" })
        const list = await http.get("/v1/me/chats", { token: admin.accessToken })
        expect(list.body.chats.find((c: any) => c.id === chatId)).toMatchObject({ role: "member" })
      })

      it("the owner hands the chat over: the new owner rules, the old one is an admin", async () => {
        const { chatId, owner, member } = await team()
        const reply = await setRole(owner, chatId, member.id, "owner")
        expectStatus(reply, 200)
        expect(reply.body).toMatchObject({ ownerId: member.id })
        expect(reply.body.members).toContainEqual({ userId: member.id, role: "owner" })
        expect(reply.body.members).toContainEqual({ userId: owner.id, role: "admin" })
        expect(reply.body.members.filter((m: any) => m.role === "owner")).toHaveLength(1)
        // The old owner rules no more; the new one does.
        expectStatus(await setRole(owner, chatId, member.id, "member"), 403)
        expectStatus(await http.delete(`/v1/chats/${chatId}`, { token: owner.accessToken }), 403)
        expectStatus(await setRole(member, chatId, owner.id, "member"), 200)
        expectStatus(await http.delete(`/v1/chats/${chatId}`, { token: member.accessToken }), 204)
      })

      it("the role change is in the OpenAPI document", async () => {
        const reply = await http.get("/openapi.json")
        expectStatus(reply, 200)
        const operation = reply.body.paths["/v1/chats/{chatId}/members/{userId}"]?.patch
        expect(operation, JSON.stringify(Object.keys(reply.body.paths))).toBeDefined()
        expect(JSON.stringify(operation.requestBody)).toContain("role")
      })

      it("only the owner changes roles; strangers learn nothing; bad roles and self-demotion are refused", async () => {
        const { chatId, owner, admin, member, member2 } = await team()
        const stranger = await register("s")
        expectStatus(await setRole(admin, chatId, member.id, "admin"), 403)
        expectStatus(await setRole(member, chatId, member2.id, "admin"), 403)
        expectStatus(await setRole(member, chatId, member.id, "owner"), 403)
        const strangers = await setRole(stranger, chatId, member.id, "admin")
        expectStatus(strangers, 404)
        const unknown = await setRole(stranger, randomUUID(), member.id, "admin")
        expectStatus(unknown, 404)
        expect(strangers.body.error.message.replace(chatId, "X")).toBe(
          unknown.body.error.message.replace(/[0-9a-f-]{36}/, "X")
        )
        expectStatus(await setRole(owner, chatId, stranger.id, "admin"), 404)
        expectStatus(await setRole(owner, chatId, member.id, "king"), 400)
        expectStatus(await setRole(owner, chatId, owner.id, "member"), 409)
        expectStatus(await http.patch(`/v1/chats/${chatId}/members/${member.id}`, { role: "admin" }), 401)
      })

      // Every pair of roles: who may remove whom (docs/protocol.md "Roles").
      const removals: ReadonlyArray<[Role, Role, number]> = [
        ["owner", "owner", 204], // themselves: the chat passes to its oldest admin
        ["owner", "admin", 204],
        ["owner", "member", 204],
        ["admin", "owner", 403],
        ["admin", "admin", 403],
        ["admin", "member", 204],
        ["member", "owner", 403],
        ["member", "admin", 403],
        ["member", "member", 403]
      ]
      for (const [actor, target, status] of removals) {
        it(`remove: ${actor} on ${target} answers ${status}`, async () => {
          const t = await team()
          const as = { owner: t.owner, admin: t.admin, member: t.member }[actor]
          const whom =
            actor === target && actor !== "owner"
              ? { admin: t.admin2, member: t.member2 }[actor]
              : { owner: t.owner, admin: t.admin, member: t.member }[target]
          const reply = await http.delete(`/v1/chats/${t.chatId}/members/${whom.id}`, { token: as.accessToken })
          expectStatus(reply, status)
          const chat = await http.get(`/v1/chats/${t.chatId}`, { token: t.member2.accessToken })
          const still = (chat.body.members as Array<any>).some((m) => m.userId === whom.id)
          expect(still).toBe(status !== 204)
        })
      }
      for (const [actor, rename, remove] of [
        ["owner", 200, 204],
        ["admin", 200, 403],
        ["member", 403, 403]
      ] as const) {
        it(`rename and delete: ${actor} answers ${rename} and ${remove}`, async () => {
          const t = await team()
          const as = { owner: t.owner, admin: t.admin, member: t.member }[actor]
          expectStatus(
            await http.patch(`/v1/chats/${t.chatId}`, { name: `by ${actor}` }, { token: as.accessToken }),
            rename
          )
          expectStatus(await http.delete(`/v1/chats/${t.chatId}`, { token: as.accessToken }), remove)
        })
      }
    })
  })
}
