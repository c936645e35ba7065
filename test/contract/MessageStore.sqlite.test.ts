/**
 * The embedded MessageStore: the MessageStore contract, plus what only a
 * store on disk promises — messages and epochs survive a reopen, and a
 * malformed row read back is a MessageStoreError — and the move of the
 * history that earlier versions kept in dynalite.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { existsSync, mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"
import * as Dynalite from "../../src/adapters/dynamo/Dynalite.ts"
import * as EmbeddedMessageStore from "../../src/adapters/sqlite/EmbeddedMessageStore.ts"
import * as SqliteMessageStore from "../../src/adapters/sqlite/SqliteMessageStore.ts"
import { MessageStore, MessageStoreError } from "../../src/ports/MessageStore.ts"
import { ChatId, Message, MessageId, UserId } from "../../src/schema/Domain.ts"
import { uniqueName } from "../support/services.ts"
import { messageStoreContract } from "./MessageStore.contract.ts"

const freshDir = () => join(mkdtempSync(join(tmpdir(), "harmony-messages-")), "messages")

messageStoreContract("SqliteMessageStore", SqliteMessageStore.layer({ directory: freshDir() }))

const message = (chatId: ChatId, seq: number) =>
  Message.make({
    chatId,
    seq,
    id: MessageId.make(`${chatId}-m${seq}`),
    authorId: UserId.make("author"),
    body: `body ${seq}`,
    clientMsgId: `client-${seq}`,
    createdAt: "2025-01-01T00:00:00.000Z"
  })

const withStore = <A, E>(
  directory: string,
  use: (store: SqliteMessageStore.SqliteMessageStore) => Effect.Effect<A, E>
) => Effect.scoped(SqliteMessageStore.make({ directory }).pipe(Effect.flatMap(use)))

describe("SqliteMessageStore outside the contract", () => {
  it.effect("messages and epochs survive closing and reopening the store", () =>
    Effect.gen(function* () {
      const directory = freshDir()
      const chatId = ChatId.make(uniqueName("chat"))
      const written = [message(chatId, 1), message(chatId, 2)]
      const epoch = yield* withStore(directory, (store) =>
        store.putBatch(written).pipe(Effect.andThen(store.epoch(chatId)))
      )
      const [reread, epochAgain] = yield* withStore(directory, (store) =>
        Effect.all([store.page(chatId, { limit: 10 }), store.epoch(chatId)])
      )
      assert.deepStrictEqual(reread, written)
      assert.strictEqual(epochAgain, epoch)
    })
  )

  it.effect("a transaction that fails writes nothing", () =>
    Effect.gen(function* () {
      const directory = freshDir()
      const chatId = ChatId.make(uniqueName("chat"))
      yield* withStore(directory, (store) =>
        Effect.gen(function* () {
          const failed = yield* Effect.flip(
            store.transaction((write) =>
              Effect.sync(() => write.messages([message(chatId, 1)])).pipe(Effect.andThen(Effect.fail("stop")))
            )
          )
          assert.strictEqual(failed, "stop")
          assert.isTrue(yield* store.isEmpty)
          yield* store.transaction((write) => Effect.sync(() => write.messages([message(chatId, 1)])))
          assert.isFalse(yield* store.isEmpty)
        })
      )
    })
  )

  it.effect("a malformed row read back is a MessageStoreError, not a defect", () =>
    Effect.gen(function* () {
      const directory = freshDir()
      const chatId = ChatId.make(uniqueName("chat"))
      yield* withStore(directory, (store) => store.putBatch([message(chatId, 1)]))
      const db = new DatabaseSync(join(directory, "messages.db"))
      db.prepare("INSERT INTO messages VALUES (?, 2, 'm2', '', 'b', 'c', 'x')").run(chatId)
      db.close()
      yield* withStore(directory, (store) =>
        Effect.gen(function* () {
          const error = yield* Effect.flip(store.page(chatId, { limit: 10 }))
          assert.instanceOf(error, MessageStoreError)
          assert.include(error.message, "malformed")
          assert.deepStrictEqual(yield* store.page(chatId, { limit: 1 }), [message(chatId, 1)])
          assert.instanceOf(yield* Effect.flip(store.latest(chatId, -1)), MessageStoreError)
        })
      )
    })
  )
})

describe("EmbeddedMessageStore: the dynalite history of earlier versions", () => {
  const table = "harmony_messages"
  const big = (chatId: ChatId, seq: number) =>
    Message.make({ ...message(chatId, seq), body: `${seq} ${"x".repeat(3000)}` })

  it.live("is moved into the SQLite store once, with its epochs, and the old directory renamed", () =>
    Effect.gen(function* () {
      const dataDir = mkdtempSync(join(tmpdir(), "harmony-import-"))
      const a = ChatId.make(uniqueName("chat"))
      const b = ChatId.make(uniqueName("chat"))
      // Over 1 MB in all, so the copy takes several scan pages.
      const written = [...Array.from({ length: 450 }, (_, i) => big(a, i + 1)), message(b, 1), message(b, 2)]
      const epochs = yield* Effect.gen(function* () {
        const store = yield* MessageStore
        yield* store.putBatch(written)
        return yield* Effect.all([store.epoch(a), store.epoch(b)])
      }).pipe(Effect.provide(Dynalite.embeddedLayer({ path: join(dataDir, "dynamo"), table })))

      const readBack = Effect.gen(function* () {
        const store = yield* MessageStore
        const all: Array<Message> = []
        for (const chatId of [a, b]) {
          let after = 0
          while (true) {
            const page = yield* store.page(chatId, { after, limit: 100 })
            if (page.length === 0) break
            all.push(...page)
            after = page.at(-1)!.seq
          }
        }
        return { all, epochs: yield* Effect.all([store.epoch(a), store.epoch(b)]) }
      }).pipe(Effect.provide(EmbeddedMessageStore.layer({ dataDir, table })))

      const first = yield* readBack
      assert.deepStrictEqual(first.all, written)
      assert.deepStrictEqual(first.epochs, epochs)
      assert.isFalse(existsSync(join(dataDir, "dynamo")))
      assert.isTrue(existsSync(join(dataDir, "dynamo.migrated")))

      // The next start reads the SQLite store alone, and finds the same.
      assert.deepStrictEqual(yield* readBack, first)
    })
  )

  it.live("is left alone, not merged, when the SQLite store already holds messages", () =>
    Effect.gen(function* () {
      const dataDir = mkdtempSync(join(tmpdir(), "harmony-import-"))
      const old = ChatId.make(uniqueName("chat"))
      const current = ChatId.make(uniqueName("chat"))
      yield* withStore(join(dataDir, "messages"), (store) => store.putBatch([message(current, 1)]))
      yield* Effect.gen(function* () {
        const store = yield* MessageStore
        yield* store.putBatch([message(old, 1)])
      }).pipe(Effect.provide(Dynalite.embeddedLayer({ path: join(dataDir, "dynamo"), table })))

      const [oldPage, currentPage] = yield* Effect.gen(function* () {
        const store = yield* MessageStore
        return yield* Effect.all([store.page(old, { limit: 10 }), store.page(current, { limit: 10 })])
      }).pipe(Effect.provide(EmbeddedMessageStore.layer({ dataDir, table })))
      assert.deepStrictEqual(oldPage, [])
      assert.deepStrictEqual(currentPage, [message(current, 1)])
      assert.isTrue(existsSync(join(dataDir, "dynamo")))
    })
  )
})
