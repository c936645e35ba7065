/**
 * The search index and its indexer (src/state/SearchIndex.ts,
 * src/messages/SearchIndexer.ts) on PGlite with dynalite as the message
 * store: what a member finds, what a non-member never does, idempotence under
 * redelivery (the same records again, overlapping batches, retried sends),
 * the wait for a store that is behind, edits and deletes, and reindex.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Duration, Effect, Fiber, Layer } from "effect"
import { SqlClient } from "effect/sql"
import { randomUUID } from "node:crypto"
import * as Dynalite from "../../src/adapters/dynamo/Dynalite.ts"
import * as MemoryEventLog from "../../src/adapters/memory/MemoryEventLog.ts"
import { RecentMessages } from "../../src/messages/RecentMessages.ts"
import * as SearchIndexer from "../../src/messages/SearchIndexer.ts"
import { EventLog, type LogRecord } from "../../src/ports/EventLog.ts"
import { MessageStore } from "../../src/ports/MessageStore.ts"
import { type ChatId, Message, type MessageId, type UserId } from "../../src/schema/Domain.ts"
import {
  type ChangeRecord,
  changeIdOf,
  encodeChangeRecord,
  encodeSendRecord,
  messageIdOf
} from "../../src/schema/Records.ts"
import { MessagesTopic } from "../../src/schema/Topics.ts"
import { SearchIndex, unmark } from "../../src/state/SearchIndex.ts"
import { uniqueName } from "../support/services.ts"
import { embeddedSql, eventually } from "./support.ts"

const store = Dynalite.embeddedLayer({ table: uniqueName("messages") })
const services = Layer.mergeAll(
  SearchIndex.layer.pipe(Layer.provideMerge(embeddedSql)),
  store,
  // No actors here: every read goes to the store (the test below gives the indexer an actor's ring).
  RecentMessages.none
)

/** A chat's actor on this node, as RecentMessages shows it: its ring holds `entries`, oldest first. */
const actorHolding = (chatId: ChatId, entries: ReadonlyArray<Message>) =>
  RecentMessages.of({
    since: (asked, sinceSeq) => {
      if (asked !== chatId) return undefined
      const first = entries[0]
      if (first === undefined || first.seq > sinceSeq + 1) return undefined
      return entries.filter((entry) => entry.seq > sinceSeq)
    },
    lastSeq: (asked) => (asked === chatId ? entries.at(-1)?.seq : undefined),
    epoch: () => undefined
  })

const user = Effect.fnUntraced(function* (name: string) {
  const sql = yield* SqlClient.SqlClient
  const id = `${name}-${randomUUID()}` as UserId
  yield* sql`INSERT INTO users (id, username, display_name) VALUES (${id}, ${id.slice(0, 32)}, ${name})`
  return id
})

const chatOf = Effect.fnUntraced(function* (members: ReadonlyArray<UserId>) {
  const sql = yield* SqlClient.SqlClient
  const id = `chat-${randomUUID()}` as ChatId
  yield* sql`INSERT INTO chats (id, kind) VALUES (${id}, 'group')`
  for (const userId of members)
    yield* sql`INSERT INTO memberships (chat_id, user_id, role) VALUES (${id}, ${userId}, 'member')`
  return id
})

const message = (chatId: ChatId, seq: number, authorId: UserId, body: string) =>
  new Message({
    chatId,
    seq,
    id: messageIdOf(chatId, authorId, `c${seq}`),
    authorId,
    body,
    clientMsgId: `c${seq}`,
    createdAt: new Date(Date.UTC(2026, 0, 1, 0, 0, seq)).toISOString()
  })

/** The log record of a message's send, as Ingest produces it. */
let offset = 0
const recordOf = (m: Message): LogRecord => ({
  topic: MessagesTopic,
  partition: 0,
  offset: offset++,
  key: m.chatId,
  value: new TextEncoder().encode(
    encodeSendRecord({
      id: m.id as MessageId,
      chatId: m.chatId,
      authorId: m.authorId,
      clientMsgId: m.clientMsgId,
      body: m.body ?? "",
      sentAt: m.createdAt
    })
  ),
  headers: {},
  timestamp: Date.now()
})

/** The log record of a change (edit, delete, reaction), as Ingest.change produces it. */
const changeRecordOf = (change: ChangeRecord): LogRecord => ({
  topic: MessagesTopic,
  partition: 0,
  offset: offset++,
  key: change.chatId,
  value: new TextEncoder().encode(encodeChangeRecord(change)),
  headers: {},
  timestamp: Date.now()
})

const search = (userId: UserId, q: string, options: { chatId?: ChatId; before?: string; limit?: number } = {}) =>
  Effect.flatMap(SearchIndex, (index) =>
    index.search(userId, { q, chatId: options.chatId, before: options.before, limit: options.limit ?? 20 })
  )

const rowsOf = (chatId: ChatId) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<{ n: string }>`SELECT count(*) AS n FROM search_messages WHERE chat_id = ${chatId}`.pipe(
      Effect.map(([row]) => Number(row?.n))
    )
  )

describe("unmark", () => {
  layer(Layer.empty)((it) => {
    it.effect("turns ts_headline's markers into plain text and ranges", () =>
      Effect.sync(() => {
        assert.deepStrictEqual(unmark("say \u0002hello\u0003 to \u0002héllo\u0003"), {
          snippet: "say hello to héllo",
          highlights: [
            [4, 9],
            [13, 18]
          ]
        })
        assert.deepStrictEqual(unmark("no match"), { snippet: "no match", highlights: [] })
      })
    )
  })
})

layer(services, { timeout: 120_000, excludeTestServices: true })("the search index", (it) => {
  it.effect("a member finds a stored message with its place and a highlighted snippet; a non-member nothing", () =>
    Effect.gen(function* () {
      const [ann, bob, eve] = [yield* user("ann"), yield* user("bob"), yield* user("eve")]
      const chatId = yield* chatOf([ann, bob])
      const messages = [
        message(chatId, 1, ann, "the quarterly zebrafish report is late"),
        message(chatId, 2, bob, "nothing to see here")
      ]
      yield* (yield* MessageStore).putBatch(messages)
      yield* SearchIndexer.applyBatch(messages.map(recordOf))

      const page = yield* search(bob, "zebrafish")
      assert.strictEqual(page.nextBefore, null)
      assert.strictEqual(page.hits.length, 1)
      const [hit] = page.hits
      assert.deepStrictEqual(
        { chatId: hit?.chatId, seq: hit?.seq, id: hit?.id, authorId: hit?.authorId, createdAt: hit?.createdAt },
        { chatId, seq: 1, id: messages[0]?.id, authorId: ann, createdAt: messages[0]?.createdAt }
      )
      const [start, end] = hit?.highlights[0] ?? [0, 0]
      assert.strictEqual(hit?.snippet.slice(start, end), "zebrafish")
      assert.include(hit?.snippet ?? "", "quarterly zebrafish report")

      assert.deepStrictEqual((yield* search(eve, "zebrafish")).hits, [])
      assert.deepStrictEqual((yield* search(eve, "zebrafish", { chatId })).hits, [])
      // Removed: from that moment on, nothing of the chat.
      const sql = yield* SqlClient.SqlClient
      yield* sql`DELETE FROM memberships WHERE chat_id = ${chatId} AND user_id = ${bob}`
      assert.deepStrictEqual((yield* search(bob, "zebrafish")).hits, [])
      assert.strictEqual((yield* search(ann, "zebrafish")).hits.length, 1)
    })
  )

  it.effect(
    "what the chat's actor on this node holds is indexed from its ring, not read from the store; older messages from the store",
    () =>
      Effect.gen(function* () {
        const ann = yield* user("ann")
        const chatId = yield* chatOf([ann])
        const messages = Array.from({ length: 150 }, (_, i) => message(chatId, i + 1, ann, `narwhal ${i + 1}`))
        // The store holds the first 30; the actor's ring the newest 130 (none of them stored yet past 30).
        yield* (yield* MessageStore).putBatch(messages.slice(0, 30))
        const ring = actorHolding(chatId, messages.slice(20))
        const records = messages.map(recordOf)
        yield* SearchIndexer.applyBatch(records.slice(0, 10))
        assert.strictEqual(yield* rowsOf(chatId), 30, "before the ring: the store's 30")
        yield* SearchIndexer.applyBatch(records).pipe(Effect.provideService(RecentMessages, ring))
        assert.strictEqual(yield* rowsOf(chatId), 150)
        const page = yield* search(ann, "narwhal 150")
        assert.strictEqual(page.hits[0]?.seq, 150)
        // Redelivered: nothing twice.
        yield* SearchIndexer.applyBatch(records.slice(100)).pipe(Effect.provideService(RecentMessages, ring))
        assert.strictEqual(yield* rowsOf(chatId), 150)
      })
  )

  it.effect(
    "a chat deleted before its stored messages are indexed is skipped; the other chats of the batch are indexed",
    () =>
      Effect.gen(function* () {
        const ann = yield* user("ann")
        const [gone, kept] = [yield* chatOf([ann]), yield* chatOf([ann])]
        const messages = [gone, kept].flatMap((chatId) =>
          Array.from({ length: 3 }, (_, i) => message(chatId, i + 1, ann, `pangolin ${i + 1}`))
        )
        yield* (yield* MessageStore).putBatch(messages)
        const sql = yield* SqlClient.SqlClient
        yield* sql`DELETE FROM chats WHERE id = ${gone}`
        // A row for the deleted chat would break the foreign key: the whole batch would be retried forever.
        yield* SearchIndexer.applyBatch(messages.map(recordOf)).pipe(
          Effect.timeoutOrElse({ duration: "20 seconds", orElse: () => Effect.die("the batch never completed") })
        )
        assert.strictEqual(yield* rowsOf(kept), 3)
        assert.strictEqual(yield* rowsOf(gone), 0)
      })
  )

  it.effect("redelivered records, overlapping batches and retried sends index each message once", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const chatId = yield* chatOf([ann])
      const messages = Array.from({ length: 250 }, (_, i) => message(chatId, i + 1, ann, `walrus number ${i + 1}`))
      yield* (yield* MessageStore).putBatch(messages)
      const records = messages.map(recordOf)
      yield* SearchIndexer.applyBatch(records.slice(0, 120))
      yield* SearchIndexer.applyBatch(records.slice(100, 250))
      yield* SearchIndexer.applyBatch(records)
      // A retried send: the same message id again on the log.
      yield* SearchIndexer.applyBatch([recordOf(messages[7] as Message)])
      assert.strictEqual(yield* rowsOf(chatId), 250)
      const seqs: Array<number> = []
      let before: string | undefined
      do {
        const page = yield* search(ann, "walrus", before === undefined ? { limit: 50 } : { limit: 50, before })
        seqs.push(...page.hits.map((hit) => hit.seq))
        before = page.nextBefore ?? undefined
      } while (before !== undefined)
      assert.deepStrictEqual(
        [...seqs].sort((a, b) => a - b),
        messages.map((m) => m.seq)
      )
    })
  )

  it.effect("one batch of chats of one, two and three pages indexes every message of each once", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const chats = [yield* chatOf([ann]), yield* chatOf([ann]), yield* chatOf([ann])]
      const sizes = [1, 150, 250]
      const messages = chats.flatMap((chatId, c) =>
        Array.from({ length: sizes[c] ?? 0 }, (_, i) => message(chatId, i + 1, ann, `puffin ${c} ${i + 1}`))
      )
      yield* (yield* MessageStore).putBatch(messages)
      const known = new Map<ChatId, number>()
      yield* SearchIndexer.applyBatch(messages.map(recordOf), known)
      assert.deepStrictEqual(
        chats.map((chatId) => known.get(chatId)),
        sizes
      )
      for (const [c, chatId] of chats.entries()) assert.strictEqual(yield* rowsOf(chatId), sizes[c])
    })
  )

  it.effect("watermarks kept between batches: several chats per batch; a stale one only adds again what is there", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const [one, two] = [yield* chatOf([ann]), yield* chatOf([ann])]
      const store = yield* MessageStore
      const known = new Map<ChatId, number>()
      const first = [message(one, 1, ann, "gannet one"), message(two, 1, ann, "gannet two")]
      yield* store.putBatch(first)
      yield* SearchIndexer.applyBatch(first.map(recordOf), known)
      assert.deepStrictEqual([known.get(one), known.get(two)], [1, 1])
      const second = [
        message(one, 2, ann, "gannet three"),
        message(two, 2, ann, "gannet four"),
        message(two, 3, ann, "gannet five")
      ]
      yield* store.putBatch(second)
      yield* SearchIndexer.applyBatch(second.map(recordOf), known)
      assert.deepStrictEqual([known.get(one), known.get(two)], [2, 3])
      // Behind the index (another writer indexed meanwhile): the catch-up re-adds, which changes nothing.
      const stale = new Map<ChatId, number>()
      stale.set(one, 0)
      stale.set(two, 1)
      yield* SearchIndexer.applyBatch([...first, ...second].map(recordOf), stale)
      assert.strictEqual(yield* rowsOf(one), 2)
      assert.strictEqual(yield* rowsOf(two), 3)
      assert.strictEqual((yield* search(ann, "gannet")).hits.length, 5)
    })
  )

  it.effect(
    "sends their actors sequence just after the indexer first looks are caught up together, in one index write",
    () =>
      Effect.gen(function* () {
        const ann = yield* user("ann")
        const chats = [yield* chatOf([ann]), yield* chatOf([ann]), yield* chatOf([ann])]
        const messages = chats.flatMap((chatId) =>
          Array.from({ length: 2 }, (_, i) => message(chatId, i + 1, ann, `quokka ${i + 1}`))
        )
        // The indexer reads the log beside the actors: at its first look no
        // actor has sequenced these yet; at the next, each has.
        const looked = new Set<string>()
        const ring = RecentMessages.of({
          since: (chatId, sinceSeq) => {
            if (!looked.has(chatId)) {
              looked.add(chatId)
              return []
            }
            return messages.filter((m) => m.chatId === chatId && m.seq > sinceSeq)
          },
          lastSeq: () => undefined,
          epoch: () => undefined
        })
        const index = yield* SearchIndex
        let writes = 0
        const counted = SearchIndex.of({
          ...index,
          add: (rows) =>
            Effect.suspend(() => {
              writes++
              return index.add(rows)
            })
        })
        yield* SearchIndexer.applyBatch(messages.map(recordOf)).pipe(
          Effect.provideService(RecentMessages, ring),
          Effect.provideService(SearchIndex, counted)
        )
        for (const chatId of chats) assert.strictEqual(yield* rowsOf(chatId), 2)
        assert.strictEqual(writes, 1, "one index write for the chats caught up again, not one per chat")
      })
  )

  it.effect("a send the store does not hold yet is waited for; a deleted chat's sends are skipped", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const chatId = yield* chatOf([ann])
      const late = message(chatId, 1, ann, "narwhal arrives late")
      const fiber = yield* Effect.forkChild(SearchIndexer.applyBatch([recordOf(late)]))
      // It cannot finish while the store lacks the message, however long it is given.
      yield* Effect.sleep("300 millis")
      assert.isUndefined(fiber.pollUnsafe())
      yield* (yield* MessageStore).putBatch([late])
      yield* Fiber.join(fiber).pipe(Effect.timeout("60 seconds"))
      assert.strictEqual((yield* search(ann, "narwhal")).hits.length, 1)

      const gone = `chat-${randomUUID()}` as ChatId
      yield* SearchIndexer.applyBatch([recordOf(message(gone, 1, ann, "never stored"))]).pipe(
        Effect.timeout("60 seconds")
      )
      assert.strictEqual(yield* rowsOf(gone), 0)
    })
  )

  it.effect("an edit replaces the indexed text, a delete removes it, and redelivery does not bring it back", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const chatId = yield* chatOf([ann])
      const original = message(chatId, 1, ann, "the ocelot sleeps")
      yield* (yield* MessageStore).putBatch([original, message(chatId, 2, ann, "the ocelot wakes")])
      const index = yield* SearchIndex
      yield* SearchIndexer.applyBatch([recordOf(original)])
      yield* index.edit(chatId, 1, "the lynx sleeps")
      assert.deepStrictEqual(
        (yield* search(ann, "ocelot")).hits.map((hit) => hit.seq),
        [2]
      )
      assert.deepStrictEqual(
        (yield* search(ann, "lynx")).hits.map((hit) => hit.seq),
        [1]
      )
      yield* index.remove(chatId, 1)
      yield* index.edit(chatId, 1, "the lynx is back")
      yield* SearchIndexer.applyBatch([recordOf(original)])
      assert.deepStrictEqual((yield* search(ann, "lynx")).hits, [])
      assert.deepStrictEqual(
        (yield* search(ann, "sleeps")).hits.map((hit) => hit.seq),
        []
      )
    })
  )

  it.effect(
    "the indexer applies edit and delete records from the log: the new word is found, the old and the deleted not",
    () =>
      Effect.gen(function* () {
        const ann = yield* user("ann")
        const chatId = yield* chatOf([ann])
        const first = message(chatId, 1, ann, "the caracal hunts")
        const second = message(chatId, 2, ann, "the serval naps")
        const store = yield* MessageStore
        yield* store.putBatch([first, second])
        const at = new Date(Date.UTC(2026, 0, 2)).toISOString()
        const edit: ChangeRecord = {
          type: "message_edited",
          chatId,
          id: changeIdOf(chatId, ann, "e1"),
          targetSeq: 1,
          userId: ann,
          body: "the margay hunts",
          editedAt: at
        }
        const remove: ChangeRecord = {
          type: "message_deleted",
          chatId,
          id: changeIdOf(chatId, ann, "d1"),
          targetSeq: 2,
          userId: ann,
          deletedAt: at
        }
        const react: ChangeRecord = {
          type: "reaction",
          chatId,
          id: changeIdOf(chatId, ann, "r1"),
          targetSeq: 1,
          userId: ann,
          emoji: "🐾",
          added: true
        }
        // Sends and changes in one batch, as the log holds them; then the same batch again (redelivery).
        const batch = [
          recordOf(first),
          recordOf(second),
          changeRecordOf(edit),
          changeRecordOf(react),
          changeRecordOf(remove)
        ]
        yield* SearchIndexer.applyBatch(batch)
        const found = (q: string) => Effect.map(search(ann, q), (page) => page.hits.map((hit) => hit.seq))
        assert.deepStrictEqual(yield* found("margay"), [1])
        assert.deepStrictEqual(yield* found("caracal"), [])
        assert.deepStrictEqual(yield* found("serval"), [])
        yield* SearchIndexer.applyBatch(batch)
        assert.deepStrictEqual(yield* found("margay"), [1])
        assert.deepStrictEqual(yield* found("caracal"), [])
        assert.deepStrictEqual(yield* found("serval"), [])

        // A message indexed after its deletion reached the store: the catch-up reads its tombstone.
        const third = message(chatId, 3, ann, "the jaguarundi swims")
        yield* store.putBatch([
          third,
          {
            type: "message_deleted",
            chatId,
            seq: 4,
            id: changeIdOf(chatId, ann, "d2"),
            targetSeq: 3,
            userId: ann,
            deletedAt: at
          }
        ])
        yield* SearchIndexer.applyBatch([recordOf(third)])
        assert.deepStrictEqual(yield* found("jaguarundi"), [])
      })
  )

  it.effect("a send the store never holds is given up on after the bound, not waited for forever", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const chatId = yield* chatOf([ann])
      const stored = message(chatId, 1, ann, "a stored quokka")
      yield* (yield* MessageStore).putBatch([stored])
      const dropped = message(chatId, 2, ann, "a dropped quokka")
      yield* SearchIndexer.applyBatch([recordOf(stored), recordOf(dropped)], new Map(), Duration.seconds(1)).pipe(
        Effect.timeout("60 seconds")
      )
      assert.deepStrictEqual(
        (yield* search(ann, "quokka")).hits.map((hit) => hit.seq),
        [1]
      )
    })
  )

  it.effect("a chat whose history was wiped (a new epoch) is indexed again from its first seq", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const chatId = yield* chatOf([ann])
      const store = yield* MessageStore
      const before = [1, 2, 3].map((seq) => message(chatId, seq, ann, `old wombat ${seq}`))
      yield* store.putBatch(before)
      const watermarks = new Map<ChatId, number>()
      yield* SearchIndexer.applyBatch(before.map(recordOf), watermarks)
      yield* store.deleteChat(chatId)
      const after = new Message({ ...message(chatId, 1, ann, "new wombat"), id: messageIdOf(chatId, ann, "again") })
      yield* store.putBatch([after])
      yield* SearchIndexer.applyBatch([recordOf(after)], watermarks).pipe(Effect.timeout("60 seconds"))
      assert.deepStrictEqual(
        (yield* search(ann, "wombat")).hits.map((hit) => [hit.seq, hit.id]),
        [[1, after.id]]
      )
    })
  )

  it.effect("a message stored above a gap (a batch half written) waits: the watermark never passes the gap", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const chatId = yield* chatOf([ann])
      const [first, second, third] = [
        message(chatId, 1, ann, "one axolotl"),
        message(chatId, 2, ann, "two axolotls"),
        message(chatId, 3, ann, "three axolotls")
      ]
      const store = yield* MessageStore
      yield* store.putBatch([first, third])
      yield* SearchIndexer.applyBatch([recordOf(first)])
      assert.strictEqual(yield* (yield* SearchIndex).watermark(chatId), 1)
      // The rest of the batch lands; its records index everything.
      yield* store.putBatch([second])
      yield* SearchIndexer.applyBatch([recordOf(second), recordOf(third)])
      assert.deepStrictEqual((yield* search(ann, "axolotls")).hits.map((hit) => hit.seq).sort(), [2, 3])
    })
  )

  it.effect("pages follow the ranking without repeats; a bad cursor is a bad request", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const chatId = yield* chatOf([ann])
      const bodies = ["puffin", "puffin puffin puffin", "puffin and puffin", "a puffin", "puffin puffin puffin puffin"]
      const messages = bodies.map((body, i) => message(chatId, i + 1, ann, body))
      yield* (yield* MessageStore).putBatch(messages)
      yield* SearchIndexer.applyBatch(messages.map(recordOf))
      const all = (yield* search(ann, "puffin")).hits.map((hit) => hit.seq)
      assert.strictEqual(all[0], 5)
      const paged: Array<number> = []
      let before: string | undefined
      do {
        const page = yield* search(ann, "puffin", before === undefined ? { limit: 2 } : { limit: 2, before })
        paged.push(...page.hits.map((hit) => hit.seq))
        before = page.nextBefore ?? undefined
      } while (before !== undefined)
      assert.deepStrictEqual(paged, all)
      const bad = yield* Effect.flip(search(ann, "puffin", { before: "not-a-cursor" }))
      assert.strictEqual(bad._tag, "BadRequest")
    })
  )

  it.effect("reindex rebuilds the index from the store", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const chatId = yield* chatOf([ann])
      const messages = Array.from({ length: 130 }, (_, i) => message(chatId, i + 1, ann, `capybara ${i + 1}`))
      yield* (yield* MessageStore).putBatch(messages)
      const sql = yield* SqlClient.SqlClient
      // Lost and stale: rows gone, one row's text wrong, one row the store never had.
      yield* sql`DELETE FROM search_messages WHERE chat_id = ${chatId}`
      const index = yield* SearchIndex
      yield* index.replace([{ ...messages[0]!, body: "wrong text" }])
      yield* index.replace([{ ...message(chatId, 500, ann, "capybara ghost"), body: "capybara ghost" }])
      const { messages: indexed } = yield* SearchIndexer.reindex()
      assert.isAtLeast(indexed, 130)
      assert.strictEqual(yield* rowsOf(chatId), 130)
      assert.strictEqual((yield* search(ann, "capybara", { limit: 50 })).hits.length, 50)
      assert.deepStrictEqual((yield* search(ann, "ghost")).hits, [])
      assert.deepStrictEqual(
        (yield* search(ann, '"capybara 1"')).hits.map((hit) => hit.seq),
        [1]
      )
    })
  )

  it.effect("the indexer group on the log indexes what the store holds, once", () =>
    Effect.gen(function* () {
      const ann = yield* user("ann")
      const chatId = yield* chatOf([ann])
      const messages = Array.from({ length: 20 }, (_, i) => message(chatId, i + 1, ann, `axolotl ${i}`))
      const log = yield* EventLog
      yield* Layer.build(SearchIndexer.layer({ partitions: 2 }))
      const produce = (batch: ReadonlyArray<Message>) =>
        log.produce(
          MessagesTopic,
          batch.map((m) => {
            const record = recordOf(m)
            return { key: record.key, value: record.value }
          })
        )
      yield* produce(messages)
      yield* (yield* MessageStore).putBatch(messages)
      // Retried sends: the same records again.
      yield* produce(messages.slice(0, 5))
      yield* eventually(
        "indexed",
        Effect.flatMap(search(ann, "axolotl", { limit: 50 }), (page) =>
          page.hits.length === 20 ? Effect.void : Effect.fail(`${page.hits.length} hits`)
        )
      )
      assert.strictEqual(yield* rowsOf(chatId), 20)
    }).pipe(Effect.scoped, Effect.provide(MemoryEventLog.layer()))
  )
})
