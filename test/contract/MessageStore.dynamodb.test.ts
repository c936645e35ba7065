/**
 * The MessageStore contract against DynamoDB Local (cluster mode's adapter on
 * the real wire protocol), plus table set-up against a table that already
 * exists or that several nodes create at once.
 */
import { request as httpRequest, createServer as httpServer } from "node:http"
import { assert, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as DynamoMessageStore from "../../src/adapters/dynamo/DynamoMessageStore.ts"
import { MessageStore } from "../../src/ports/MessageStore.ts"
import { ChatId, Message, MessageId, UserId } from "../../src/schema/Domain.ts"
import { serviceUrl, uniqueName } from "../support/services.ts"
import { messageStoreContract } from "./MessageStore.contract.ts"

const endpoint = serviceUrl("DYNAMODB_ENDPOINT")

const storeOn = (table: string, through = endpoint) =>
  DynamoMessageStore.layer({
    endpoint: through,
    region: "us-east-1",
    table,
    credentials: { accessKeyId: "local", secretAccessKey: "local" }
  })

messageStoreContract("DynamoDB Local", storeOn(uniqueName("messages")))

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

const buildStore = (table: string, through = endpoint) =>
  Layer.build(storeOn(table, through)).pipe(Effect.map(Context.get(MessageStore)))

/**
 * A plain HTTP relay to DynamoDB Local that counts the BatchWriteItem
 * requests in flight through it at once (the store's answers are real).
 */
const countingRelay = Effect.acquireRelease(
  Effect.callback<{ readonly url: string; readonly maxInFlight: () => number; readonly close: () => void }>(
    (resume) => {
      const upstream = new URL(endpoint)
      let inFlight = 0
      let max = 0
      const server = httpServer((incoming, outgoing) => {
        const counted = String(incoming.headers["x-amz-target"] ?? "").endsWith("BatchWriteItem")
        if (counted) max = Math.max(max, ++inFlight)
        const done = () => {
          if (counted) inFlight--
        }
        const forward = httpRequest(
          {
            host: upstream.hostname,
            port: upstream.port,
            method: incoming.method,
            path: incoming.url,
            headers: incoming.headers
          },
          (answer) => {
            outgoing.writeHead(answer.statusCode ?? 502, answer.headers)
            answer.pipe(outgoing)
            answer.on("end", done)
          }
        )
        forward.on("error", () => {
          done()
          outgoing.destroy()
        })
        incoming.pipe(forward)
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        const port = typeof address === "object" && address !== null ? address.port : 0
        resume(Effect.succeed({ url: `http://127.0.0.1:${port}`, maxInFlight: () => max, close: () => server.close() }))
      })
    }
  ),
  (relay) => Effect.sync(relay.close)
)

layer(Layer.empty, { excludeTestServices: true })("DynamoMessageStore table set-up on DynamoDB Local", (it) => {
  it.effect("nodes racing to create one table all come up on it", () =>
    Effect.gen(function* () {
      const table = uniqueName("race")
      const chatId = ChatId.make(uniqueName("chat"))
      const [first, second, third] = yield* Effect.forEach([1, 2, 3], () => buildStore(table), {
        concurrency: "unbounded"
      })
      yield* first!.putBatch([message(chatId, 1), message(chatId, 2)])
      assert.deepStrictEqual(yield* second!.page(chatId, { limit: 10 }), [message(chatId, 1), message(chatId, 2)])
      assert.deepStrictEqual(yield* third!.latest(chatId, 1), [message(chatId, 2)])
    })
  )

  // DynamoDB Local on disk writes ~65 items/s here: 32 BatchWriteItems at once take 12 s each,
  // past the 10 s request timeout, so every one failed and was written again (no progress at all).
  it.effect("concurrent batches share a bound on the BatchWriteItems in flight (a slow store is not flooded)", () =>
    Effect.gen(function* () {
      const relay = yield* countingRelay
      const table = uniqueName("bounded")
      const store = yield* buildStore(table, relay.url)
      const chats = Array.from({ length: 8 }, () => ChatId.make(uniqueName("chat")))
      // Eight partitions' sinks at once, each with a batch of four BatchWriteItems.
      yield* Effect.forEach(
        chats,
        (chatId) => store.putBatch(Array.from({ length: 100 }, (_, i) => message(chatId, i + 1))),
        { concurrency: "unbounded", discard: true }
      )
      for (const chatId of chats) assert.strictEqual((yield* store.page(chatId, { limit: 100 })).length, 100)
      assert.isAtMost(relay.maxInFlight(), DynamoMessageStore.writeConcurrency)
    })
  )

  it.effect("a store opened on an existing table sees the data already there", () =>
    Effect.gen(function* () {
      const table = uniqueName("reopen")
      const chatId = ChatId.make(uniqueName("chat"))
      yield* Effect.scoped(Effect.flatMap(buildStore(table), (store) => store.putBatch([message(chatId, 1)])))
      const reopened = yield* buildStore(table)
      assert.deepStrictEqual(yield* reopened.page(chatId, { limit: 10 }), [message(chatId, 1)])
      yield* reopened.ping
    })
  )
})
