/**
 * The behaviour every MessageStore adapter owes its callers. Each adapter's
 * suite runs it against its own layer (a fresh table per run); every test
 * uses chats of its own, so tests never see each other's messages.
 */
import { assert, layer } from "@effect/vitest"
import { Effect } from "effect"
import type { Layer } from "effect"
import { MessageStore, type MessageStoreError } from "../../src/ports/MessageStore.ts"
import { type Change, ChatId, type LogEntry, Message, MessageId, UserId } from "../../src/schema/Domain.ts"
import { uniqueName } from "../support/services.ts"

const newChat = (): ChatId => ChatId.make(uniqueName("chat"))

const message = (chatId: ChatId, seq: number, body = `message ${seq} of ${chatId}`): Message =>
  Message.make({
    chatId,
    seq,
    id: MessageId.make(`${chatId}-m${seq}`),
    authorId: UserId.make(`author-${seq % 3}`),
    body,
    clientMsgId: `client-${seq}`,
    createdAt: new Date(Date.UTC(2025, 0, 1, 0, 0, seq)).toISOString()
  })

const messages = (chatId: ChatId, from: number, to: number): Array<Message> => {
  const result: Array<Message> = []
  for (let seq = from; seq <= to; seq++) result.push(message(chatId, seq))
  return result
}

const range = (from: number, to: number): Array<number> => {
  const result: Array<number> = []
  if (from <= to) for (let n = from; n <= to; n++) result.push(n)
  else for (let n = from; n >= to; n--) result.push(n)
  return result
}

const seqs = (page: ReadonlyArray<LogEntry>): Array<number> => page.map((m) => m.seq)

const at = (second: number) => new Date(Date.UTC(2025, 0, 2, 0, 0, second)).toISOString()
const edit = (chatId: ChatId, seq: number, targetSeq: number, body: string): Change => ({
  type: "message_edited",
  chatId,
  seq,
  id: MessageId.make(`${chatId}-e${seq}`),
  targetSeq,
  userId: UserId.make(`author-${targetSeq % 3}`),
  body,
  editedAt: at(seq)
})
const del = (chatId: ChatId, seq: number, targetSeq: number): Change => ({
  type: "message_deleted",
  chatId,
  seq,
  id: MessageId.make(`${chatId}-d${seq}`),
  targetSeq,
  userId: UserId.make("admin"),
  deletedAt: at(seq)
})
const reaction = (
  chatId: ChatId,
  seq: number,
  targetSeq: number,
  userId: string,
  emoji: string,
  added = true
): Change => ({
  type: "reaction",
  chatId,
  seq,
  id: MessageId.make(`${chatId}-r${seq}`),
  targetSeq,
  userId: UserId.make(userId),
  emoji,
  added
})

/** Every message of a chat, oldest first, read the way a client scrolls forward. */
const readAll = (store: MessageStore["Service"], chatId: ChatId) =>
  Effect.gen(function* () {
    const all: Array<Message> = []
    while (true) {
      const page = yield* store.page(chatId, { after: all.at(-1)?.seq ?? 0, limit: 100 })
      if (page.length === 0) return all
      all.push(...page)
    }
  })

export const messageStoreContract = (name: string, storeLayer: Layer.Layer<MessageStore, MessageStoreError>): void =>
  // Live services: the adapters retry and poll on the real clock.
  layer(storeLayer, { excludeTestServices: true, timeout: "2 minutes" })(`MessageStore contract: ${name}`, (it) => {
    it.effect("ping answers", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        yield* store.ping
      })
    )

    it.effect("putBatch then page(after 0) returns the messages oldest first, intact", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        const written = messages(chatId, 1, 5)
        yield* store.putBatch([written[2]!, written[0]!, written[4]!, written[1]!, written[3]!])

        const page = yield* store.page(chatId, { limit: 100 })
        assert.deepStrictEqual(seqs(page), [1, 2, 3, 4, 5])
        assert.deepStrictEqual(page, written)
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { after: 0, limit: 100 })), [1, 2, 3, 4, 5])
      })
    )

    it.effect("page(after) returns seq > after, oldest first, at most limit", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        yield* store.putBatch(messages(chatId, 1, 10))

        assert.deepStrictEqual(seqs(yield* store.page(chatId, { after: 3, limit: 4 })), [4, 5, 6, 7])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { after: 8, limit: 5 })), [9, 10])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { after: 10, limit: 5 })), [])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { after: 0, limit: 1 })), [1])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { after: 9, limit: 1 })), [10])
      })
    )

    it.effect("page(before) returns seq < before, newest first, at most limit; before wins over after", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        yield* store.putBatch(messages(chatId, 1, 10))

        assert.deepStrictEqual(seqs(yield* store.page(chatId, { before: 6, limit: 3 })), [5, 4, 3])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { before: 3, limit: 5 })), [2, 1])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { before: 1, limit: 5 })), [])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { before: 11, limit: 100 })), range(10, 1))
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { before: 1000, limit: 2 })), [10, 9])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { before: 10, limit: 1 })), [9])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { before: 5, after: 1, limit: 10 })), [4, 3, 2, 1])
      })
    )

    it.effect("pages walk 260 messages (past 25 per batch and 100 per page) exactly once each way", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        yield* store.putBatch(messages(chatId, 1, 260))

        const forwardPages: Array<Array<number>> = []
        let after = 0
        while (true) {
          const page = seqs(yield* store.page(chatId, { after, limit: 100 }))
          if (page.length === 0) break
          forwardPages.push(page)
          after = page.at(-1)!
        }
        assert.deepStrictEqual(
          forwardPages.map((page) => page.length),
          [100, 100, 60]
        )
        assert.deepStrictEqual(forwardPages.flat(), range(1, 260))

        const backward: Array<number> = []
        let before = 261
        while (true) {
          const page = seqs(yield* store.page(chatId, { before, limit: 7 }))
          if (page.length === 0) break
          assert.isAtMost(page.length, 7)
          backward.push(...page)
          before = page.at(-1)!
        }
        assert.deepStrictEqual(backward, range(260, 1))

        assert.deepStrictEqual(seqs(yield* store.latest(chatId, 100)), range(260, 161))
      })
    )

    it.effect("putBatch is idempotent: repeated, overlapping and self-overlapping batches leave one copy each", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        yield* store.putBatch(messages(chatId, 1, 30))
        yield* store.putBatch(messages(chatId, 1, 30))
        yield* store.putBatch(messages(chatId, 20, 40))
        yield* store.putBatch([...messages(chatId, 41, 45), ...messages(chatId, 41, 45), message(chatId, 1)])

        const all = yield* readAll(store, chatId)
        assert.deepStrictEqual(seqs(all), range(1, 45))
        assert.deepStrictEqual(all, messages(chatId, 1, 45))
      })
    )

    it.effect("putBatch of nothing is a no-op", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        yield* store.putBatch([])
      })
    )

    it.effect("latest(n) returns the newest n, newest first", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        assert.deepStrictEqual(yield* store.latest(chatId, 10), [])

        yield* store.putBatch(messages(chatId, 1, 12))
        assert.deepStrictEqual(seqs(yield* store.latest(chatId, 5)), [12, 11, 10, 9, 8])
        assert.deepStrictEqual(seqs(yield* store.latest(chatId, 1)), [12])
        assert.deepStrictEqual(seqs(yield* store.latest(chatId, 100)), range(12, 1))

        yield* store.putBatch([message(chatId, 13)])
        assert.deepStrictEqual(seqs(yield* store.latest(chatId, 2)), [13, 12])
      })
    )

    it.effect("chats are isolated, including chats whose ids prefix each other", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const a = newChat()
        const b = ChatId.make(`${a}-1`)
        const c = ChatId.make(`${a}1`)
        yield* store.putBatch([...messages(a, 1, 5), ...messages(b, 1, 3), ...messages(c, 4, 6)])

        const pageA = yield* store.page(a, { limit: 100 })
        assert.deepStrictEqual(pageA, messages(a, 1, 5))
        assert.deepStrictEqual(yield* store.page(b, { limit: 100 }), messages(b, 1, 3))
        assert.deepStrictEqual(seqs(yield* store.latest(c, 100)), [6, 5, 4])
        assert.deepStrictEqual(seqs(yield* store.page(a, { before: 100, limit: 100 })), [5, 4, 3, 2, 1])

        yield* store.deleteChat(a)
        assert.deepStrictEqual(yield* store.page(a, { limit: 100 }), [])
        assert.deepStrictEqual(yield* store.page(b, { limit: 100 }), messages(b, 1, 3))
        assert.deepStrictEqual(seqs(yield* store.page(c, { limit: 100 })), [4, 5, 6])
      })
    )

    it.effect("a chat's epoch is created once and kept; it never shows among messages; deleteChat takes it", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        const [first, concurrent] = yield* Effect.all([store.epoch(chatId), store.epoch(chatId)], {
          concurrency: "unbounded"
        })
        assert.isTrue(first.length > 0)
        assert.strictEqual(concurrent, first)
        yield* store.putBatch(messages(chatId, 1, 3))
        assert.strictEqual(yield* store.epoch(chatId), first)
        assert.deepStrictEqual(seqs(yield* store.latest(chatId, 10)), [3, 2, 1])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { before: 3, limit: 10 })), [2, 1])
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { after: 0, limit: 10 })), [1, 2, 3])
        assert.notStrictEqual(yield* store.epoch(newChat()), first)

        // History gone (here deleted; a wiped store alike): a new epoch.
        yield* store.deleteChat(chatId)
        assert.notStrictEqual(yield* store.epoch(chatId), first)
      })
    )

    it.effect("deleteChat removes every message (60, more than one batch) and can be repeated", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        yield* store.putBatch(messages(chatId, 1, 60))
        assert.deepStrictEqual(seqs(yield* readAll(store, chatId)), range(1, 60))

        yield* store.deleteChat(chatId)
        assert.deepStrictEqual(yield* store.page(chatId, { limit: 100 }), [])
        assert.deepStrictEqual(yield* store.page(chatId, { before: 1000, limit: 100 }), [])
        assert.deepStrictEqual(yield* store.latest(chatId, 100), [])

        yield* store.deleteChat(chatId)
        yield* store.deleteChat(newChat())

        // A deleted chat's (chatId, seq) keys are free again.
        yield* store.putBatch(messages(chatId, 1, 2))
        assert.deepStrictEqual(seqs(yield* store.page(chatId, { limit: 100 })), [1, 2])
      })
    )

    it.effect("deleteChat removes a chat larger than one deletion round (600 messages)", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        yield* store.putBatch(messages(chatId, 1, 600))
        assert.deepStrictEqual(seqs(yield* store.latest(chatId, 1)), [600])

        yield* store.deleteChat(chatId)
        assert.deepStrictEqual(yield* store.latest(chatId, 100), [])
      })
    )

    it.effect("changes are log entries: entries and latest hold them by seq; page lists messages as they are now", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        const [m1, m2, m3] = messages(chatId, 1, 3)
        const log: Array<LogEntry> = [
          m1!,
          m2!,
          edit(chatId, 3, 1, "first, edited"),
          reaction(chatId, 4, 1, "u1", "👍"),
          reaction(chatId, 5, 1, "u2", "👍"),
          reaction(chatId, 6, 1, "u2", "🎉"),
          del(chatId, 7, 2),
          { ...m3!, seq: 8 } as Message,
          reaction(chatId, 9, 1, "u2", "🎉", false)
        ].map((entry) => (entry instanceof Message || "type" in entry ? entry : new Message(entry)))
        yield* store.putBatch(log.slice(0, 4))
        yield* store.putBatch(log.slice(4))

        assert.deepStrictEqual(seqs(yield* store.entries(chatId, 0, 100)), range(1, 9))
        assert.deepStrictEqual(seqs(yield* store.entries(chatId, 2, 3)), [3, 4, 5])
        assert.deepStrictEqual(seqs(yield* store.latest(chatId, 4)), [9, 8, 7, 6])
        const entries = yield* store.entries(chatId, 0, 100)
        assert.deepStrictEqual(entries[2], log[2])
        assert.deepStrictEqual(entries[8], log[8])

        // History: messages only; the edit and the delete applied; reactions for the viewer.
        const page = yield* store.page(chatId, { after: 0, limit: 100, viewer: UserId.make("u2") })
        assert.deepStrictEqual(seqs(page), [1, 2, 8])
        assert.strictEqual(page[0]!.body, "first, edited")
        assert.strictEqual(page[0]!.editedAt, at(3))
        assert.deepStrictEqual(page[0]!.reactions, [{ emoji: "👍", count: 2, me: true }])
        assert.strictEqual(page[1]!.body, undefined)
        assert.strictEqual(page[1]!.deletedAt, at(7))
        assert.strictEqual(page[2]!.reactions, undefined)
        const other = yield* store.page(chatId, { before: 100, limit: 2, viewer: UserId.make("u3") })
        assert.deepStrictEqual(seqs(other), [8, 2])
        const first = yield* store.page(chatId, { before: 2, limit: 1, viewer: UserId.make("u3") })
        assert.deepStrictEqual(first[0]!.reactions, [{ emoji: "👍", count: 2, me: false }])
        // Without a viewer, no reactions.
        assert.strictEqual((yield* store.page(chatId, { after: 0, limit: 1 }))[0]!.reactions, undefined)

        // message(): a message as it is now; nothing at a change's seq or past the end.
        const one = yield* store.message(chatId, 1)
        assert.strictEqual(one._tag === "Some" && one.value.body, "first, edited")
        const two = yield* store.message(chatId, 2)
        assert.isTrue(two._tag === "Some" && two.value.deletedAt === at(7) && two.value.body === undefined)
        assert.strictEqual((yield* store.message(chatId, 3))._tag, "None")
        assert.strictEqual((yield* store.message(chatId, 99))._tag, "None")

        // Recovery entries show messages as they are now (a tombstone has no body).
        const replayed = yield* store.entries(chatId, 0, 2)
        assert.strictEqual((replayed[0] as Message).body, "first, edited")
        assert.strictEqual((replayed[1] as Message).body, undefined)

        yield* store.deleteChat(chatId)
        assert.deepStrictEqual(yield* store.entries(chatId, 0, 100), [])
        assert.deepStrictEqual(yield* store.latest(chatId, 100), [])
      })
    )

    it.effect(
      "applying changes is idempotent and order-free: again, overlapping, reversed — the state of the log in seq order",
      () =>
        Effect.gen(function* () {
          const store = yield* MessageStore
          const once = newChat()
          const scrambled = newChat()
          const build = (chatId: ChatId): Array<LogEntry> => [
            ...messages(chatId, 1, 3),
            edit(chatId, 4, 1, "edit one"),
            edit(chatId, 5, 1, "edit two"),
            reaction(chatId, 6, 2, "u1", "👍"),
            reaction(chatId, 7, 2, "u1", "👍", false),
            reaction(chatId, 8, 2, "u1", "👍"),
            reaction(chatId, 9, 2, "u2", "👀"),
            reaction(chatId, 10, 2, "u2", "👀", false),
            del(chatId, 11, 3),
            edit(chatId, 12, 3, "edited after its deletion"),
            del(chatId, 13, 3)
          ]
          yield* store.putBatch(build(once))
          const log = build(scrambled)
          // Written as a crash and replays might: the tail first, then everything, then parts again, backwards.
          yield* store.putBatch(log.slice(7))
          yield* store.putBatch(log)
          yield* store.putBatch(log.toReversed())
          yield* store.putBatch(log.slice(3, 6))
          for (const entry of log.toReversed()) yield* store.putBatch([entry])

          const viewer = UserId.make("u1")
          const want = yield* store.page(once, { after: 0, limit: 100, viewer })
          const got = yield* store.page(scrambled, { after: 0, limit: 100, viewer })
          const strip = (page: ReadonlyArray<Message>, chatId: ChatId) =>
            JSON.parse(JSON.stringify(page).replaceAll(chatId, "CHAT"))
          assert.deepStrictEqual(strip(got, scrambled), strip(want, once))
          assert.strictEqual(want[0]!.body, "edit two")
          assert.strictEqual(want[0]!.editedAt, at(5))
          assert.deepStrictEqual(want[1]!.reactions, [{ emoji: "👍", count: 1, me: true }])
          assert.strictEqual(want[2]!.deletedAt, at(11))
          assert.strictEqual(want[2]!.body, undefined)
          assert.strictEqual(want[2]!.editedAt, undefined)
          assert.deepStrictEqual(seqs(yield* store.entries(scrambled, 0, 100)), range(1, 13))
        })
    )

    it.effect("unicode, special characters and 4000-character bodies round-trip", () =>
      Effect.gen(function* () {
        const store = yield* MessageStore
        const chatId = newChat()
        const bodies = [
          "héllo wörld 👋🏽 — 中文 — עברית — Ελληνικά — 🏳️‍🌈",
          "quotes \" ' ` backslash \\ newline\n tab\t nul\u0000 end",
          "x".repeat(4000),
          "😀".repeat(2000),
          `${"é中🎉".repeat(999)}abcd`,
          " "
        ]
        const written = bodies.map((body, i) => message(chatId, i + 1, body))
        assert.deepStrictEqual(
          written.map((m) => m.body?.length),
          [bodies[0]!.length, bodies[1]!.length, 4000, 4000, 4000, 1]
        )
        yield* store.putBatch(written)

        assert.deepStrictEqual(yield* store.page(chatId, { limit: 100 }), written)
        assert.deepStrictEqual(yield* store.latest(chatId, 100), written.toReversed())
      })
    )
  })
