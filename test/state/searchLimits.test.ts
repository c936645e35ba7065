/**
 * What one search may cost (src/state/SearchIndex.ts, docs/protocol.md
 * "Search"), on real Postgres and on PGlite: a query matching more than
 * `maxMatches` messages in the caller's chats is refused with `bad_request`
 * (only the caller's chats count, and `chatId` narrows them), and on
 * Postgres a search cut off by `statement_timeout` answers `unavailable` —
 * forced with a timeout of one millisecond over tens of thousands of
 * matches, never by measuring time — after which the connection serves the
 * next search. PGlite accepts the setting but cannot cut a statement off (it
 * runs on the caller's thread): the test pins that, as documented; embedded
 * mode therefore searches without a timeout (and without its transaction),
 * as the PGlite match-limit test does.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Duration, Effect, Layer } from "effect"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import { randomUUID } from "node:crypto"
import type { ChatId, UserId } from "../../src/schema/Domain.ts"
import { SearchIndex, type SearchLimits } from "../../src/state/SearchIndex.ts"
import { freshDatabaseUrl } from "../support/database.ts"
import { embeddedSql, postgresAt } from "./support.ts"

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

/** `count` messages in the chat whose body holds `word`, written straight into the index. */
const indexed = Effect.fnUntraced(function* (chatId: ChatId, authorId: UserId, word: string, count: number) {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    INSERT INTO search_messages (chat_id, seq, message_id, author_id, created_at, body)
    SELECT ${chatId}, g, ${chatId} || '-' || g, ${authorId}, now(), ${word} || ' number ' || g
    FROM generate_series(1, ${count}) g`
})

/** A search index with these limits over the suite's database. */
const indexWith = (limits: SearchLimits) =>
  Effect.provide(
    Effect.flatMap(SearchIndex, (index) => Effect.succeed(index)),
    SearchIndex.layerWith(limits)
  )

const limitsSuite = (name: string, sqlLayer: Layer.Layer<SqlClient.SqlClient, SqlError>, timeoutHolds: boolean) =>
  layer(sqlLayer, { timeout: 180_000 })(`search limits: ${name}`, (it) => {
    it.effect("a query matching more than maxMatches messages in the caller's chats is refused", () =>
      Effect.gen(function* () {
        const [ann, eve] = [yield* user("ann"), yield* user("eve")]
        const [mine, alsoMine, hers] = [yield* chatOf([ann]), yield* chatOf([ann]), yield* chatOf([eve])]
        const word = `kumquat${randomUUID().slice(0, 8)}`
        yield* indexed(mine, ann, word, 3)
        yield* indexed(alsoMine, ann, word, 2)
        yield* indexed(hers, eve, word, 10)
        const index = yield* indexWith({ timeout: timeoutHolds ? Duration.seconds(30) : undefined, maxMatches: 4 })

        const refused = yield* Effect.flip(index.search(ann, { q: word, limit: 20 }))
        assert.strictEqual(refused._tag, "BadRequest")
        assert.strictEqual(refused.message, "q matches more than 4 messages: add words, or search one chat")
        // One chat of the caller's: three, ranked.
        assert.strictEqual((yield* index.search(ann, { q: word, chatId: mine, limit: 20 })).hits.length, 3)
        // Narrower words match fewer.
        assert.strictEqual((yield* index.search(ann, { q: `${word} 1`, limit: 20 })).hits.length, 2)
        // Another's chat never counts for the caller; it does for its member.
        assert.deepStrictEqual((yield* index.search(ann, { q: word, chatId: hers, limit: 20 })).hits, [])
        assert.strictEqual((yield* Effect.flip(index.search(eve, { q: word, limit: 20 })))._tag, "BadRequest")
        // Exactly the limit is allowed.
        const five = yield* indexWith({ timeout: timeoutHolds ? Duration.seconds(30) : undefined, maxMatches: 5 })
        const page = yield* five.search(ann, { q: word, limit: 2 })
        assert.strictEqual(page.hits.length, 2)
        assert.notStrictEqual(page.nextBefore, null)
      })
    )

    it.effect(
      timeoutHolds
        ? "a search cut off by the statement timeout answers unavailable; the next search is served"
        : "the statement timeout is set and reset without effect (PGlite cannot cut a statement off)",
      () =>
        Effect.gen(function* () {
          const ann = yield* user("ann")
          const chatId = yield* chatOf([ann])
          const word = `loquat${randomUUID().slice(0, 8)}`
          yield* indexed(chatId, ann, word, 30_000)
          const hasty = yield* indexWith({ timeout: Duration.millis(1), maxMatches: 1_000_000 })
          if (timeoutHolds) {
            const cut = yield* Effect.flip(hasty.search(ann, { q: word, limit: 20 }))
            assert.strictEqual(cut._tag, "Unavailable")
            assert.strictEqual(cut.message, "the search took longer than 1ms: add words, or search one chat")
          } else {
            // PGlite runs a statement to its end (docs/operations.md): there only the match limit bounds a search.
            assert.strictEqual((yield* hasty.search(ann, { q: word, limit: 20 })).hits.length, 20)
          }
          // The timeout was the search's own (SET LOCAL): the same connection serves on.
          const patient = yield* indexWith({ timeout: Duration.seconds(60), maxMatches: 1_000_000 })
          const page = yield* patient.search(ann, { q: `${word} 12345`, limit: 20 })
          assert.deepStrictEqual(
            page.hits.map((hit) => hit.seq),
            [12345]
          )
          const sql = yield* SqlClient.SqlClient
          const [setting] = yield* sql<{ statement_timeout: string }>`SHOW statement_timeout`
          assert.strictEqual(setting?.statement_timeout, "0")
        })
    )
  })

describe("search limits", () => {
  limitsSuite("PGlite", embeddedSql, false)
  limitsSuite("Postgres", Layer.unwrap(Effect.map(freshDatabaseUrl, (url) => postgresAt(url, { migrate: true }))), true)
})
