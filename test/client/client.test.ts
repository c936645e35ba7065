/**
 * The client SDK against the real `harmony serve` (embedded mode, one server
 * for the file): accounts and sessions, live delivery between two clients,
 * acks, typed errors, and the recovery paths that can be forced from the
 * client side (a lost ack, a lost message) with a misbehaving WebSocket.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Schedule } from "effect"
import { HarmonyError, type Message, type Session } from "../../src/client/index.ts"
import { type Harmony, startHarmony } from "../support/harmony.ts"
import {
  clientPool,
  collect,
  filteringWebSocket,
  gatedWebSocket,
  newId,
  password,
  registered,
  uniqueUsername,
  waitUntil,
  waitUntilAsync
} from "./support.ts"

describe("client SDK", { timeout: 120_000 }, () => {
  let harmony: Harmony
  const pool = clientPool()
  const options = () => ({ baseUrl: harmony.url })
  const account = (label = "c") => registered(pool.make, options(), label)

  beforeAll(async () => {
    harmony = await startHarmony({ mode: "embedded" })
  })
  afterEach(() => pool.closeAll())
  afterAll(() => harmony?.stop())

  const groupOf = async (owner: Awaited<ReturnType<typeof account>>, ...members: Array<{ user: { id: string } }>) =>
    owner.client.createChat({ kind: "group", name: "sdk", memberIds: members.map((m) => m.user.id) })

  const rejection = async (promise: Promise<unknown>): Promise<HarmonyError> => {
    const error = await promise.then(
      () => undefined,
      (error: unknown) => error
    )
    expect(error).toBeInstanceOf(HarmonyError)
    return error as HarmonyError
  }

  describe("accounts", () => {
    it("registers, logs in, and tells the app about its tokens", async () => {
      const sessions: Array<Session | null> = []
      const client = pool.make({ ...options(), onSession: (session) => sessions.push(session) })
      expect(client.user).toBeUndefined()
      const username = uniqueUsername("reg")
      const session = await client.register({ username, password, displayName: "Reg" })
      expect(session.user).toMatchObject({ username, displayName: "Reg" })
      expect(client.user?.id).toBe(session.user.id)
      expect(await client.me()).toMatchObject({ id: session.user.id, username })

      const other = pool.make(options())
      const again = await other.login({ username, password })
      expect(again.user.id).toBe(session.user.id)
      expect(again.refreshToken).not.toBe(session.refreshToken)

      await client.logout()
      expect(client.user).toBeUndefined()
      expect(sessions.at(0)?.accessToken).toBe(session.accessToken)
      expect(sessions.at(-1)).toBeNull()
      expect((await rejection(client.me())).code).toBe("unauthorized")
    })

    it("resumes from stored tokens, refreshing a token that expired", async () => {
      const { session } = await account("res")
      const stored = JSON.parse(JSON.stringify(session))

      // As stored: the access token still works.
      const resumed = pool.make(options())
      expect((await resumed.resume(stored)).id).toBe(session.user.id)

      // An expired access token (a JWT whose exp passed): refreshed first, once for all callers at once.
      let refreshes = 0
      const saved: Array<Session | null> = []
      const client = pool.make({
        ...options(),
        fetch: (input, init) => {
          if (String(input).endsWith("/v1/auth/refresh")) refreshes++
          return fetch(input, init)
        },
        onSession: (s) => saved.push(s)
      })
      const expired = { ...stored, accessToken: `${b64({ alg: "HS256" })}.${b64({ sub: session.user.id, exp: 1 })}.x` }
      const [user, me, chats] = await Promise.all([client.resume(expired), client.me(), client.chats()])
      expect(user.id).toBe(session.user.id)
      expect(me.id).toBe(session.user.id)
      expect(chats).toEqual([])
      expect(refreshes).toBe(1)
      expect(saved.at(-1)?.accessToken).not.toBe(expired.accessToken)
    })

    it("rejects resume with unauthorized when the refresh token is dead", async () => {
      const { client, session } = await account("dead")
      const stored = JSON.parse(JSON.stringify(session))
      await client.logout() // revokes the refresh token's family

      const sessions: Array<Session | null> = []
      const later = pool.make({ ...options(), onSession: (s) => sessions.push(s) })
      const error = await rejection(later.resume({ ...stored, accessToken: "not-a-token" }))
      expect(error.code).toBe("unauthorized")
      expect(later.user).toBeUndefined()
      expect(sessions.at(-1)).toBeNull()
    })

    it("answers typed errors for HTTP calls", async () => {
      const { client, session } = await account("err")
      const wrong = await rejection(
        pool.make(options()).login({ username: session.user.username, password: "nope-nope" })
      )
      expect(wrong).toMatchObject({ _tag: "HarmonyError", code: "unauthorized", status: 401 })
      const taken = await rejection(pool.make(options()).register({ username: session.user.username, password }))
      expect(taken).toMatchObject({ code: "conflict", status: 409 })
      expect(await rejection(client.chat("no-such-chat"))).toMatchObject({ code: "not_found", status: 404 })
      expect(await rejection(client.history("no-such-chat", { limit: 500 }))).toMatchObject({
        code: "bad_request",
        status: 400
      })
      expect(wrong.transient).toBe(false)
    })
  })

  describe("chats", () => {
    it("creates, renames, finds and removes members, deletes", async () => {
      const owner = await account("own")
      const friend = await account("fri")
      const late = await account("lat")
      const chat = await groupOf(owner, friend)
      expect(chat.members.map((m) => m.userId).sort()).toEqual([owner.user.id, friend.user.id].sort())
      expect((await owner.client.renameChat(chat.id, "renamed")).name).toBe("renamed")
      expect((await owner.client.chat(chat.id)).name).toBe("renamed")
      expect((await owner.client.searchUsers(late.user.username)).map((u) => u.id)).toEqual([late.user.id])
      expect(await owner.client.getUser(late.user.id)).toEqual(late.user)
      expect(await rejection(owner.client.getUser(`${late.user.id}-gone`))).toMatchObject({ code: "not_found" })
      expect((await owner.client.addMembers(chat.id, [late.user.id])).members).toHaveLength(3)
      await owner.client.removeMember(chat.id, late.user.id)
      expect((await friend.client.chats()).map((c) => c.id)).toEqual([chat.id])

      const deleted = collect(friend.client, "chat_deleted")
      await friend.client.subscribe(chat.id)
      await owner.client.deleteChat(chat.id)
      await waitUntil("chat_deleted", () => deleted.length === 1)
      expect(deleted[0]).toEqual({ chatId: chat.id })
      expect(await rejection(friend.client.chat(chat.id))).toMatchObject({ code: "not_found" })
    })
  })

  describe("search", () => {
    it("finds a message of the caller's chats by a word, pages, and scopes to a chat; outsiders find nothing", async () => {
      const owner = await account("srch")
      const friend = await account("srch")
      const outsider = await account("srch")
      const chat = await groupOf(owner, friend)
      const word = `kiwi${newId()
        .replace(/[^a-z0-9]/gi, "")
        .toLowerCase()}`
      const first = await owner.client.send(chat.id, `a ${word} here`)
      await owner.client.send(chat.id, `${word} and ${word} again`)
      await waitUntilAsync("both indexed", async () => (await friend.client.search({ q: word })).hits.length === 2)
      const page = await friend.client.search({ q: word, limit: 1 })
      expect(page.hits).toHaveLength(1)
      expect(page.next).not.toBeNull()
      const rest = await friend.client.search({ q: word, limit: 1, before: page.next ?? "" })
      expect(rest.next).toBeNull()
      const [hit] = rest.hits
      expect(hit).toMatchObject({ chatId: chat.id, id: first.id, authorId: owner.user.id, snippet: `a ${word} here` })
      expect(hit?.highlights).toEqual([[2, 2 + word.length]])
      expect((await friend.client.search({ q: word, chatId: chat.id })).hits).toHaveLength(2)
      expect((await outsider.client.search({ q: word })).hits).toEqual([])
      expect(await rejection(outsider.client.search({ q: word, chatId: chat.id }))).toMatchObject({
        code: "not_found"
      })
    })
  })

  describe("live", () => {
    it("delivers messages between two clients exactly once, in order, with acks", async () => {
      const alice = await account("ali")
      const bob = await account("bob")
      const chat = await groupOf(alice, bob)
      const statuses = collect(bob.client, "status")
      const atBob = collect(bob.client, "message")
      const atAlice = collect(alice.client, "message")
      const presence = collect(bob.client, "presence")

      expect(bob.client.status).toBe("idle")
      expect(await bob.client.subscribe(chat.id)).toEqual({ lastSeq: 0, recovered: true, epoch: expect.any(String) })
      expect(bob.client.status).toBe("open")
      expect(statuses).toEqual(["connecting", "open"])
      await waitUntil("presence", () => presence.length > 0)
      await alice.client.subscribe(chat.id)

      const acks = []
      for (const body of ["one", "two", "three"]) acks.push(await alice.client.send(chat.id, body))
      const mine = await alice.client.send(chat.id, "four", { clientMsgId: "my-own-id" })
      expect(mine.clientMsgId).toBe("my-own-id")

      await waitUntil("4 messages at bob", () => atBob.length >= 4)
      await waitUntil("4 messages at alice", () => atAlice.length >= 4)
      expect(atBob.map((m) => [m.seq, m.body])).toEqual([
        [1, "one"],
        [2, "two"],
        [3, "three"],
        [4, "four"]
      ])
      expect(atBob.map((m) => m.id)).toEqual([...acks.map((a) => a.id), mine.id])
      expect(atBob.every((m) => m.authorId === alice.user.id && m.chatId === chat.id)).toBe(true)
      expect(atAlice.map((m) => m.seq)).toEqual([1, 2, 3, 4])

      const page = await bob.client.history(chat.id, { after: 0, limit: 2 })
      expect(page.messages.map((m) => m.seq)).toEqual([1, 2])
      expect(page.next).toBe(2)
    })

    it("signals typing, read receipts, membership", async () => {
      const alice = await account("tya")
      const bob = await account("tyb")
      const carol = await account("tyc")
      const chat = await groupOf(alice, bob)
      const typing = collect(bob.client, "typing")
      const reads = collect(bob.client, "read")
      const received = collect(bob.client, "message")
      const added = collect(bob.client, "member_added")
      await bob.client.subscribe(chat.id)
      await alice.client.subscribe(chat.id)
      await alice.client.send(chat.id, "hi")

      alice.client.typing(chat.id)
      await waitUntil("typing at bob", () => typing.length > 0)
      expect(typing[0]).toEqual({ chatId: chat.id, userId: alice.user.id })

      await alice.client.markRead(chat.id, 1)
      await waitUntil("read at bob", () => reads.length > 0)
      expect(reads[0]).toEqual({ chatId: chat.id, userId: alice.user.id, seq: 1 })
      // Once: the server tells the others; the client does not repeat it over the socket.
      await alice.client.send(chat.id, "after the read")
      await waitUntil("alice's next message at bob", () => received.some((m) => m.body === "after the read"))
      expect(reads).toHaveLength(1)
      expect((await alice.client.chats())[0]?.lastReadSeq).toBe(1)
      const positions = await bob.client.readPositions(chat.id)
      expect(new Map(positions.map((p) => [p.userId, p.seq]))).toEqual(
        new Map([
          [alice.user.id, 1],
          [bob.user.id, 0]
        ])
      )

      await alice.client.addMembers(chat.id, [carol.user.id])
      // (Bob may first hear of his own addition: membership events travel through the outbox.)
      await waitUntil("carol's member_added at bob", () => added.some((a) => a.userId === carol.user.id))
      expect(added.filter((a) => a.userId === carol.user.id)).toEqual([{ chatId: chat.id, userId: carol.user.id }])
    })

    it("rejects sends and subscriptions to chats the caller is not in, with the server's code", async () => {
      const alice = await account("nma")
      const mallory = await account("nmm")
      const chat = await groupOf(alice)
      const errors = collect(mallory.client, "error")
      expect(await rejection(mallory.client.send(chat.id, "let me in"))).toMatchObject({ code: "not_found" })
      expect(await rejection(mallory.client.subscribe(chat.id))).toMatchObject({ code: "not_found" })
      // Checked here with the server's own frame rules, never sent (the server closes after five bad frames).
      expect(await rejection(mallory.client.send(chat.id, ""))).toMatchObject({ code: "bad_request" })
      expect(errors).toEqual([])
      expect(mallory.client.status).toBe("open")
    })

    it("resends a send whose ack was lost, with the same clientMsgId: stored and delivered once", async () => {
      const alice = await account("lsa")
      const bob = await account("lsb")
      const chat = await groupOf(alice, bob)
      const atBob = collect(bob.client, "message")
      await bob.client.subscribe(chat.id)

      // Alice's first ack never arrives, and her connection dies right then.
      let dropped = 0
      const flaky = pool.make({
        ...options(),
        reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
        WebSocket: filteringWebSocket((data, socket) => {
          if (dropped === 0 && JSON.parse(data).type === "ack") {
            dropped++
            socket.close()
            return false
          }
          return true
        })
      })
      await flaky.login({ username: alice.user.username, password })
      const statuses = collect(flaky, "status")
      const accepted = await flaky.send(chat.id, "only once", { clientMsgId: "retry-me" })
      expect(dropped).toBe(1)
      expect(statuses).toContain("reconnecting")
      expect(accepted.clientMsgId).toBe("retry-me")

      await alice.client.send(chat.id, "after")
      await waitUntil("both messages at bob", () => atBob.length >= 2)
      expect(atBob.map((m) => [m.seq, m.body, m.clientMsgId])).toEqual([
        [1, "only once", "retry-me"],
        [2, "after", expect.any(String)]
      ])
      expect(atBob[0]!.id).toBe(accepted.id)
      // The store trails live delivery: wait for both, then there must be exactly these two.
      let stored: ReadonlyArray<Message> = []
      await waitUntilAsync("both messages stored", async () => {
        stored = (await bob.client.history(chat.id, { after: 0 })).messages
        return stored.length >= 2
      })
      expect(stored.map((m) => m.clientMsgId)).toEqual(["retry-me", atBob[1]!.clientMsgId])
    })

    it("sends again with the same clientMsgId after an `unavailable` that was in fact stored: stored and delivered once", async () => {
      const alice = await account("una")
      const bob = await account("unb")
      const chat = await groupOf(alice, bob)
      const atBob = collect(bob.client, "message")
      await bob.client.subscribe(chat.id)

      // The server stores the send, but its answer reaches the client as
      // `unavailable` (as when a produce times out and was written after all).
      const sent: Array<{ type: string; clientMsgId?: string; ref?: string }> = []
      let rewritten = 0
      const Lying = class extends WebSocket {
        override send(data: string) {
          sent.push(JSON.parse(data))
          super.send(data)
        }
        override addEventListener(type: string, listener: any, options?: any): void {
          if (type !== "message") {
            super.addEventListener(type, listener, options)
            return
          }
          super.addEventListener(
            "message",
            (event: MessageEvent) => {
              const frame = typeof event.data === "string" ? JSON.parse(event.data) : undefined
              if (rewritten === 0 && frame?.type === "ack") {
                rewritten++
                const ref = sent.find((f) => f.type === "send" && f.clientMsgId === frame.clientMsgId)?.ref
                const error = { type: "error", code: "unavailable", message: "the message log is unavailable", ref }
                listener(new MessageEvent("message", { data: JSON.stringify(error) }))
                return
              }
              listener(event)
            },
            options
          )
        }
      } as typeof WebSocket
      const liar = pool.make({ ...options(), reconnect: { initialDelayMs: 50, maxDelayMs: 500 }, WebSocket: Lying })
      await liar.login({ username: alice.user.username, password })
      const accepted = await liar.send(chat.id, "stored once", { clientMsgId: "unavailable-but-stored" })
      expect(rewritten).toBe(1)
      const sends = sent.filter((f) => f.type === "send")
      expect(sends.length).toBe(2)
      expect(sends.map((f) => f.clientMsgId)).toEqual(["unavailable-but-stored", "unavailable-but-stored"])
      expect(accepted.clientMsgId).toBe("unavailable-but-stored")

      await alice.client.send(chat.id, "after")
      await waitUntil("both messages at bob", () => atBob.length >= 2)
      expect(atBob.map((m) => [m.seq, m.body])).toEqual([
        [1, "stored once"],
        [2, "after"]
      ])
      let stored: ReadonlyArray<Message> = []
      await waitUntilAsync("both messages stored", async () => {
        stored = (await bob.client.history(chat.id, { after: 0 })).messages
        return stored.length >= 2
      })
      expect(stored.map((m) => m.body)).toEqual(["stored once", "after"])
    })

    it("fills a gap in live delivery by resubscribing with sinceSeq", async () => {
      const alice = await account("gpa")
      const bob = await account("gpb")
      const chat = await groupOf(alice, bob)
      // Bob's connection loses the message with seq 2.
      let lost = 0
      const lossy = pool.make({
        ...options(),
        WebSocket: filteringWebSocket((data) => {
          const frame = JSON.parse(data)
          if (frame.type === "message" && frame.message.seq === 2 && lost === 0) {
            lost++
            return false
          }
          return true
        })
      })
      await lossy.login({ username: bob.user.username, password })
      const seen = collect(lossy, "message")
      await lossy.subscribe(chat.id)
      for (const body of ["a", "b", "c", "d"]) await alice.client.send(chat.id, body)
      await waitUntil("4 messages", () => seen.length >= 4)
      expect(lost).toBe(1)
      expect(seen.map((m: Message) => [m.seq, m.body])).toEqual([
        [1, "a"],
        [2, "b"],
        [3, "c"],
        [4, "d"]
      ])
    })

    it("subscribes with sinceSeq to replay what it missed", async () => {
      const alice = await account("ssa")
      const chat = await groupOf(alice)
      for (const body of ["1", "2", "3"]) await alice.client.send(chat.id, body, { clientMsgId: newId() })
      const bob = await account("ssb")
      await alice.client.addMembers(chat.id, [bob.user.id])
      const seen = collect(bob.client, "message")
      const answer = await bob.client.subscribe(chat.id, { sinceSeq: 1 })
      expect(answer).toMatchObject({ recovered: true })
      await waitUntil("the replay", () => seen.length >= 2)
      expect(seen.map((m) => m.seq)).toEqual([2, 3])
    })
  })

  describe("offline", () => {
    it("queues sends while it cannot connect; close() rejects them with closed", async () => {
      const owner = await account("ofa")
      const chat = await groupOf(owner)
      const offline = gatedWebSocket()
      offline.gate.open = false
      const client = pool.make({ ...options(), WebSocket: offline.WebSocket })
      await client.login({ username: owner.session.user.username, password })
      const statuses = collect(client, "status")
      const queued = rejection(client.send(chat.id, "never sent"))
      const subscribed = rejection(client.subscribe(chat.id))
      await waitUntil("a few attempts", () => offline.gate.attempts >= 2)
      // "connecting" until a first connection opens; "reconnecting" is for one that was lost.
      expect(client.status).toBe("connecting")
      await client.close()
      expect(await queued).toMatchObject({ code: "closed" })
      expect(await subscribed).toMatchObject({ code: "closed" })
      expect(client.status).toBe("closed")
      expect(statuses.at(-1)).toBe("closed")
      expect((await owner.client.history(chat.id, {})).messages).toEqual([])
    })
  })

  describe("as Effects", () => {
    it.live("runs the same calls as Effects, failing with HarmonyError", () =>
      Effect.gen(function* () {
        const { client } = yield* Effect.promise(() => account("eff"))
        const chat = yield* client.effect.createChat({ kind: "group", name: "fx", memberIds: [] })
        const accepted = yield* client.effect.send(chat.id, "from an Effect")
        // The store trails the ack: poll until it holds the message.
        const page = yield* client.effect
          .history(chat.id, {})
          .pipe(
            Effect.repeat({ until: (page) => page.messages.length > 0, schedule: Schedule.spaced("100 millis") }),
            Effect.timeout("30 seconds")
          )
        expect(page.messages.map((m) => m.id)).toEqual([accepted.id])
        const error = yield* Effect.flip(client.effect.chat("missing"))
        expect(error).toBeInstanceOf(HarmonyError)
        expect(error.code).toBe("not_found")
      })
    )
  })
})

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")
