/**
 * The MessageStore contract against DynamoDB Local (cluster mode's adapter on
 * the real wire protocol), plus table set-up against a table that already
 * exists or that several nodes create at once.
 */
import { assert, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as DynamoMessageStore from "../../src/adapters/dynamo/DynamoMessageStore.ts"
import { MessageStore } from "../../src/ports/MessageStore.ts"
import { ChatId, Message, MessageId, UserId } from "../../src/schema/Domain.ts"
import { serviceUrl, uniqueName } from "../support/services.ts"
import { messageStoreContract } from "./MessageStore.contract.ts"

const endpoint = serviceUrl("DYNAMODB_ENDPOINT")

const storeOn = (table: string) =>
  DynamoMessageStore.layer({
    endpoint,
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

const buildStore = (table: string) => Layer.build(storeOn(table)).pipe(Effect.map(Context.get(MessageStore)))

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
