/**
 * Cluster mode's search indexer on its own thread (src/messages/SearchIndexerThread.ts)
 * against the real services: it indexes what the log and the store hold,
 * its metrics reach this thread's registry, it stops when asked (its scope
 * closes) and a thread that cannot start is started again.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Context, Duration, Effect, Layer, Metric } from "effect"
import { SqlClient } from "effect/sql"
import { randomUUID } from "node:crypto"
import * as DynamoMessageStore from "../../src/adapters/dynamo/DynamoMessageStore.ts"
import * as SearchIndexerThread from "../../src/messages/SearchIndexerThread.ts"
import { EventLog } from "../../src/ports/EventLog.ts"
import { MessageStore } from "../../src/ports/MessageStore.ts"
import { type ChatId, Message, type MessageId, type UserId } from "../../src/schema/Domain.ts"
import { encodeSendRecord, messageIdOf } from "../../src/schema/Records.ts"
import { MessagesTopic } from "../../src/schema/Topics.ts"
import { SearchIndex } from "../../src/state/SearchIndex.ts"
import { serviceUrl, uniqueName } from "../support/services.ts"
import { freshDatabaseUrl } from "../support/database.ts"
import { eventually, kafkaLog, LogBook, logInto, postgresAt } from "./support.ts"

const table = uniqueName("messages")

/** The fresh database the suite's pool and the thread share. */
class TestDatabase extends Context.Service<TestDatabase, { readonly url: string }>()("test/TestDatabase") {}

const threadOptions = (databaseUrl: string, overrides: Partial<SearchIndexerThread.ThreadOptions> = {}) => ({
  partitions: 8,
  kafkaBrokers: serviceUrl("KAFKA_BROKERS").split(","),
  sessionTimeoutMs: 6_000,
  drainTimeoutMs: 10_000,
  dynamodbEndpoint: serviceUrl("DYNAMODB_ENDPOINT"),
  region: "us-east-1",
  table,
  databaseUrl,
  stopTimeout: Duration.seconds(15),
  ...overrides
})

const services = Layer.unwrap(
  Effect.map(freshDatabaseUrl, (url) =>
    Layer.mergeAll(
      Layer.succeed(TestDatabase, { url }),
      SearchIndex.layer.pipe(Layer.provideMerge(postgresAt(url, { migrate: true }))),
      DynamoMessageStore.layer({ endpoint: serviceUrl("DYNAMODB_ENDPOINT"), region: "us-east-1", table }).pipe(
        Layer.orDie
      ),
      kafkaLog("search-indexer-thread-test")
    )
  )
)

const chatWith = Effect.fnUntraced(function* (name: string) {
  const sql = yield* SqlClient.SqlClient
  const userId = `${name}-${randomUUID()}` as UserId
  yield* sql`INSERT INTO users (id, username, display_name) VALUES (${userId}, ${userId.slice(0, 32)}, ${name})`
  const chatId = `chat-${randomUUID()}` as ChatId
  yield* sql`INSERT INTO chats (id, kind) VALUES (${chatId}, 'group')`
  yield* sql`INSERT INTO memberships (chat_id, user_id, role) VALUES (${chatId}, ${userId}, 'member')`
  return { userId, chatId }
})

const messageOf = (chatId: ChatId, seq: number, authorId: UserId, body: string) =>
  new Message({
    chatId,
    seq,
    id: messageIdOf(chatId, authorId, `c${seq}`),
    authorId,
    body,
    clientMsgId: `c${seq}`,
    createdAt: new Date(Date.UTC(2026, 0, 1, 0, 0, seq)).toISOString()
  })

const sendRecord = (m: Message) => ({
  key: m.chatId,
  value: encodeSendRecord({
    id: m.id as MessageId,
    chatId: m.chatId,
    authorId: m.authorId,
    clientMsgId: m.clientMsgId,
    body: m.body ?? "",
    sentAt: m.createdAt
  })
})

const indexedCount = Effect.map(Metric.snapshot, (snapshot) =>
  snapshot
    .filter((metric) => metric.id === "harmony_search_indexed_messages_total" && metric.type === "Counter")
    .reduce((sum, metric) => sum + Number((metric.state as { count: number }).count), 0)
)

describe("the search indexer's thread", () => {
  layer(services, { timeout: 180_000, excludeTestServices: true })((it) => {
    it.effect(
      "indexes what the log and the store hold, reports its metrics here, and stops when its scope closes",
      () =>
        Effect.gen(function* () {
          const book = new LogBook()
          const { userId, chatId } = yield* chatWith("ann")
          const messages = Array.from({ length: 12 }, (_, i) => messageOf(chatId, i + 1, userId, `quokka ${i}`))
          yield* (yield* MessageStore).putBatch(messages)
          const index = yield* SearchIndex
          const found = index.search(userId, { q: "quokka", limit: 50 })

          yield* Effect.gen(function* () {
            yield* Layer.build(SearchIndexerThread.layer(threadOptions((yield* TestDatabase).url)))
            yield* (yield* EventLog).produce(MessagesTopic, messages.map(sendRecord))
            yield* eventually(
              "indexed",
              Effect.flatMap(found, (page) =>
                page.hits.length === 12 ? Effect.void : Effect.fail(`${page.hits.length}`)
              ),
              { timeout: "90 seconds", interval: "200 millis" }
            )
            yield* eventually(
              "the thread's metrics forwarded",
              Effect.flatMap(indexedCount, (n) => (n >= 12 ? Effect.void : Effect.fail(`indexed ${n}`))),
              { timeout: "10 seconds", interval: "100 millis" }
            )
          }).pipe(Effect.scoped, logInto(book))

          // Stopped when asked: no termination, and its series left the registry with it.
          assert.strictEqual(book.count(/not stopped within/), 0, book.text())
          assert.strictEqual(book.count(/exited with code/), 0, book.text())
          assert.strictEqual(yield* indexedCount, 0)
        }),
      { timeout: 150_000 }
    )

    it.effect(
      "a thread that cannot start is started again, with the reason logged",
      () =>
        Effect.gen(function* () {
          const book = new LogBook()
          // Nothing listens on port 1: the thread's Kafka client gives up connecting (after its
          // retries, ~16 s) and the thread exits 1.
          const unreachable = threadOptions((yield* TestDatabase).url, { kafkaBrokers: ["127.0.0.1:1"] })
          yield* Effect.gen(function* () {
            yield* Layer.build(SearchIndexerThread.layer(unreachable))
            yield* eventually(
              "started again twice",
              Effect.suspend(() =>
                book.count(/search indexer thread exited with code 1.*starting it again/) >= 2
                  ? Effect.void
                  : Effect.fail(book.text(5))
              ),
              { timeout: "120 seconds", interval: "200 millis" }
            )
          }).pipe(Effect.scoped, logInto(book))
        }),
      { timeout: 150_000 }
    )
  })
})
