/**
 * The MessageStore contract against embedded mode's store (DynamoMessageStore
 * on an in-memory dynalite), plus what only the adapter itself promises:
 * malformed items, bad limits, retries of unprocessed items, throttling and
 * 5xx (through a fault-injecting proxy), an unreachable endpoint,
 * persistence under a path, and racing table creators.
 */
import { mkdtemp, rm } from "node:fs/promises"
import { createServer, type IncomingMessage } from "node:http"
import { createRequire } from "node:module"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as Dynalite from "../../src/adapters/dynamo/Dynalite.ts"
import * as DynamoMessageStore from "../../src/adapters/dynamo/DynamoMessageStore.ts"
import { MessageStore, MessageStoreError } from "../../src/ports/MessageStore.ts"
import { ChatId, Message, MessageId, UserId } from "../../src/schema/Domain.ts"
import { uniqueName } from "../support/services.ts"
import { messageStoreContract } from "./MessageStore.contract.ts"

messageStoreContract("dynalite (in memory)", Dynalite.embeddedLayer({ table: uniqueName("messages") }))

const storeOn = (endpoint: string, table: string) =>
  DynamoMessageStore.layer({
    endpoint,
    region: "us-east-1",
    table,
    credentials: { accessKeyId: "test", secretAccessKey: "test" }
  })

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

/** A PutItem that bypasses the adapter, to plant items it would never write. */
const rawPutItem = (endpoint: string, table: string, item: Record<string, unknown>) =>
  Effect.tryPromise(async () => {
    const response = await fetch(endpoint, {
      method: "POST",
      headers: {
        "content-type": "application/x-amz-json-1.0",
        "x-amz-target": "DynamoDB_20120810.PutItem",
        "x-amz-date": "20250101T000000Z",
        // dynalite checks the header's shape, not the signature.
        authorization:
          "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0"
      },
      body: JSON.stringify({ TableName: table, Item: item })
    })
    if (!response.ok) throw new Error(`raw PutItem: ${response.status} ${await response.text()}`)
  })

/** The iterators dynalite's LevelDB holds open, counted where abstract-level attaches and detaches them. */
const openIterators = (() => {
  const require = createRequire(createRequire(import.meta.url).resolve("dynalite"))
  const fromClassic = createRequire(createRequire(require.resolve("level")).resolve("classic-level"))
  const { AbstractLevel } = fromClassic("abstract-level") as {
    AbstractLevel: { prototype: { attachResource(resource: unknown): void; detachResource(resource: unknown): void } }
  }
  const { attachResource, detachResource } = AbstractLevel.prototype
  let open = 0
  AbstractLevel.prototype.attachResource = function (resource) {
    open++
    return attachResource.call(this, resource)
  }
  AbstractLevel.prototype.detachResource = function (resource) {
    open--
    return detachResource.call(this, resource)
  }
  return () => open
})()

const adapterTable = uniqueName("adapter")
const adapterLayer = Layer.unwrap(
  Effect.gen(function* () {
    const { endpoint } = yield* Dynalite.DynaliteServer
    return storeOn(endpoint, adapterTable)
  })
).pipe(Layer.provideMerge(Dynalite.layer({})))

layer(adapterLayer, { excludeTestServices: true })("DynamoMessageStore on dynalite", (it) => {
  it.effect("a malformed item read back is a MessageStoreError, not a defect", () =>
    Effect.gen(function* () {
      const { endpoint } = yield* Dynalite.DynaliteServer
      const store = yield* MessageStore
      const chatId = ChatId.make(uniqueName("chat"))
      yield* store.putBatch([message(chatId, 1)])
      yield* rawPutItem(endpoint, adapterTable, {
        chatId: { S: chatId },
        seq: { N: "2" },
        id: { S: "m2" },
        authorId: { S: "author" },
        body: { N: "5" },
        clientMsgId: { S: "client-2" },
        createdAt: { S: "2025-01-01T00:00:00.000Z" }
      })

      const error = yield* Effect.flip(store.page(chatId, { limit: 10 }))
      assert.instanceOf(error, MessageStoreError)
      assert.include(error.message, "body")
      // Reads that stop short of the bad item still work.
      assert.deepStrictEqual(yield* store.page(chatId, { limit: 1 }), [message(chatId, 1)])

      yield* store.deleteChat(chatId)
    })
  )

  it.effect("a deleted message's text goes from its item too, not only from history", () =>
    Effect.gen(function* () {
      const { endpoint } = yield* Dynalite.DynaliteServer
      const store = yield* MessageStore
      const chatId = ChatId.make(uniqueName("chat"))
      yield* store.putBatch([message(chatId, 1), message(chatId, 2)])
      yield* store.putBatch([
        {
          type: "message_deleted",
          chatId,
          seq: 3,
          id: MessageId.make(`${chatId}-d3`),
          targetSeq: 1,
          userId: UserId.make("author"),
          deletedAt: "2025-01-02T00:00:00.000Z"
        }
      ])
      const items: Array<Message> = []
      yield* DynamoMessageStore.scanTable(
        {
          endpoint,
          region: "us-east-1",
          table: adapterTable,
          credentials: { accessKeyId: "test", secretAccessKey: "test" }
        },
        (page) => Effect.sync(() => items.push(...page.messages.filter((m) => m.chatId === chatId)))
      ).pipe(Effect.catch(() => Effect.void))
      const raw = items.sort((a, b) => a.seq - b.seq)
      assert.deepStrictEqual(
        raw.map((m) => [m.seq, m.body]),
        [
          [1, undefined],
          [2, "body 2"]
        ]
      )
      yield* store.deleteChat(chatId)
    })
  )

  it.effect("an item whose seq is not an integer is a MessageStoreError", () =>
    Effect.gen(function* () {
      const { endpoint } = yield* Dynalite.DynaliteServer
      const store = yield* MessageStore
      const chatId = ChatId.make(uniqueName("chat"))
      yield* rawPutItem(endpoint, adapterTable, {
        chatId: { S: chatId },
        seq: { N: "1.5" },
        id: { S: "m" },
        authorId: { S: "author" },
        body: { S: "b" },
        clientMsgId: { S: "c" },
        createdAt: { S: "2025-01-01T00:00:00.000Z" }
      })
      const error = yield* Effect.flip(store.latest(chatId, 10))
      assert.instanceOf(error, MessageStoreError)
      assert.include(error.message, "seq")
    })
  )

  it.effect("reads close their LevelDB iterators, also those a Limit stops short", () =>
    Effect.gen(function* () {
      const store = yield* MessageStore
      const chatId = ChatId.make(uniqueName("chat"))
      yield* store.putBatch(messages(chatId, 5))
      const before = openIterators()
      for (let i = 0; i < 20; i++) {
        assert.strictEqual((yield* store.latest(chatId, 1)).length, 1)
        assert.strictEqual((yield* store.page(chatId, { limit: 10 })).length, 5)
      }
      // Closing is asynchronous: wait for it, with a generous deadline.
      const closed = yield* Effect.sleep("20 millis").pipe(
        Effect.repeat({ until: () => openIterators() <= before }),
        Effect.timeoutOption("10 seconds")
      )
      assert.isTrue(closed._tag === "Some", `${openIterators() - before} iterators still open after 40 reads`)
    })
  )

  it.effect("a limit that is not a non-negative integer is a MessageStoreError", () =>
    Effect.gen(function* () {
      const store = yield* MessageStore
      const chatId = ChatId.make(uniqueName("chat"))
      assert.instanceOf(yield* Effect.flip(store.page(chatId, { limit: -1 })), MessageStoreError)
      assert.instanceOf(yield* Effect.flip(store.page(chatId, { limit: 1.5 })), MessageStoreError)
      assert.instanceOf(yield* Effect.flip(store.latest(chatId, Number.NaN)), MessageStoreError)
      assert.deepStrictEqual(yield* store.latest(chatId, 0), [])
    })
  )

  it.effect("layers racing to create one table all come up on it", () =>
    Effect.gen(function* () {
      const { endpoint } = yield* Dynalite.DynaliteServer
      const table = uniqueName("race")
      const chatId = ChatId.make(uniqueName("chat"))
      const [first, second] = yield* Effect.forEach(
        [1, 2, 3],
        () => Layer.build(storeOn(endpoint, table)).pipe(Effect.map(Context.get(MessageStore))),
        { concurrency: "unbounded" }
      )
      yield* first!.putBatch([message(chatId, 1)])
      assert.deepStrictEqual(yield* second!.page(chatId, { limit: 10 }), [message(chatId, 1)])
    })
  )
})

describe("DynamoMessageStore outside the contract", () => {
  it.live("an unreachable endpoint fails the layer with a MessageStoreError within seconds", () =>
    Effect.gen(function* () {
      const started = Date.now()
      // Port 1 on loopback refuses connections: the adapter's view of a down DynamoDB.
      const error = yield* Effect.flip(Layer.build(storeOn("http://127.0.0.1:1", uniqueName("down"))))
      const elapsed = Date.now() - started
      assert.instanceOf(error, MessageStoreError)
      assert.include(error.message, "ECONNREFUSED")
      assert.isBelow(elapsed, 10_000)
    })
  )

  it.live("data under a path survives closing and reopening dynalite", () =>
    Effect.gen(function* () {
      const directory = yield* Effect.acquireRelease(
        Effect.promise(() => mkdtemp(join(tmpdir(), "harmony-dynalite-"))),
        (directory) => Effect.promise(() => rm(directory, { recursive: true, force: true }))
      )
      const options = { path: join(directory, "db"), table: "messages" }
      const chatId = ChatId.make(uniqueName("chat"))
      const written = [message(chatId, 1), message(chatId, 2)]

      yield* Effect.gen(function* () {
        const store = yield* MessageStore
        yield* store.putBatch(written)
      }).pipe(Effect.provide(Dynalite.embeddedLayer(options)))

      const reread = yield* Effect.gen(function* () {
        const store = yield* MessageStore
        return yield* store.page(chatId, { limit: 10 })
      }).pipe(Effect.provide(Dynalite.embeddedLayer(options)))

      assert.deepStrictEqual(reread, written)
    })
  )

  it.live("a data directory in use by another dynalite is a MessageStoreError, not a crash", () =>
    Effect.gen(function* () {
      const directory = yield* Effect.acquireRelease(
        Effect.promise(() => mkdtemp(join(tmpdir(), "harmony-dynalite-"))),
        (directory) => Effect.promise(() => rm(directory, { recursive: true, force: true }))
      )
      const options = { path: join(directory, "db"), table: "messages" }
      yield* Layer.build(Dynalite.embeddedLayer(options))
      const error = yield* Effect.flip(Layer.build(Dynalite.embeddedLayer(options)))
      assert.instanceOf(error, MessageStoreError)
      assert.include(error.message, "lock")
    })
  )
})

type Fault =
  | { readonly _tag: "Forward" }
  /** Writes only the first half of the batch and reports the rest unprocessed, as DynamoDB does under load. */
  | { readonly _tag: "HalfProcessed" }
  | { readonly _tag: "Error"; readonly status: number; readonly type: string }

/**
 * An HTTP proxy in front of dynalite that lets `decide` answer each
 * BatchWriteItem instead; every other request passes through untouched.
 */
const faultyProxy = (target: string, decide: (attempt: number) => Fault) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly endpoint: string; readonly attempts: () => number; close: () => void }>((resume) => {
      let attempts = 0
      const readBody = async (request: IncomingMessage) => {
        const chunks: Array<Buffer> = []
        for await (const chunk of request) chunks.push(chunk as Buffer)
        return Buffer.concat(chunks).toString("utf8")
      }
      const forward = (request: IncomingMessage, body: string) => {
        const headers = new Headers()
        for (const [name, value] of Object.entries(request.headers)) {
          if (typeof value === "string" && name !== "host" && name !== "content-length") headers.set(name, value)
        }
        return fetch(target, { method: "POST", headers, body })
      }
      const server = createServer((request, response) => {
        const handle = async () => {
          const body = await readBody(request)
          const isBatchWrite = request.headers["x-amz-target"] === "DynamoDB_20120810.BatchWriteItem"
          const fault: Fault = isBatchWrite ? decide(++attempts) : { _tag: "Forward" }
          const reply = (status: number, payload: unknown) => {
            response.writeHead(status, { "content-type": "application/x-amz-json-1.0" })
            response.end(JSON.stringify(payload))
          }
          switch (fault._tag) {
            case "Forward": {
              const upstream = await forward(request, body)
              // Passed on verbatim, checksum header included: the SDK verifies it.
              const headers: Record<string, string> = {}
              upstream.headers.forEach((value, name) => {
                headers[name] = value
              })
              response.writeHead(upstream.status, headers)
              response.end(await upstream.text())
              return
            }
            case "HalfProcessed": {
              const input = JSON.parse(body) as { RequestItems: Record<string, Array<unknown>> }
              const [table, requests] = Object.entries(input.RequestItems)[0]!
              const kept = requests.slice(0, Math.ceil(requests.length / 2))
              const upstream = await forward(request, JSON.stringify({ RequestItems: { [table]: kept } }))
              if (!upstream.ok) return reply(upstream.status, await upstream.json())
              const rest = requests.slice(kept.length)
              return reply(200, { UnprocessedItems: rest.length === 0 ? {} : { [table]: rest } })
            }
            case "Error":
              return reply(fault.status, {
                __type: `com.amazonaws.dynamodb.v20120810#${fault.type}`,
                message: "injected"
              })
          }
        }
        handle().catch((error: unknown) => {
          response.writeHead(599)
          response.end(String(error))
        })
      })
      server.listen(0, "127.0.0.1", () =>
        resume(
          Effect.succeed({
            endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
            attempts: () => attempts,
            close: () => {
              server.closeAllConnections()
              server.close()
            }
          })
        )
      )
    }),
    (proxy) => Effect.sync(() => proxy.close())
  )

const messages = (chatId: ChatId, count: number) => Array.from({ length: count }, (_, i) => message(chatId, i + 1))

layer(Dynalite.layer({}), { excludeTestServices: true })("DynamoMessageStore retries (fault-injecting proxy)", (it) => {
  const storeBehind = (decide: (attempt: number) => Fault) =>
    Effect.gen(function* () {
      const { endpoint } = yield* Dynalite.DynaliteServer
      const proxy = yield* faultyProxy(endpoint, decide)
      const store = yield* Layer.build(storeOn(proxy.endpoint, uniqueName("faults"))).pipe(
        Effect.map(Context.get(MessageStore))
      )
      return { store, attempts: proxy.attempts }
    })

  it.effect("unprocessed items are resent until every message is written", () =>
    Effect.gen(function* () {
      const { store, attempts } = yield* storeBehind((attempt) =>
        attempt <= 6 ? { _tag: "HalfProcessed" } : { _tag: "Forward" }
      )
      const chatId = ChatId.make(uniqueName("chat"))
      yield* store.putBatch(messages(chatId, 60))
      assert.deepStrictEqual(yield* store.page(chatId, { limit: 100 }), messages(chatId, 60))
      // 3 batches of 25/25/10, each resent at least once for what was left.
      assert.isAtLeast(attempts(), 6)
    })
  )

  it.effect("throttling and 5xx answers are retried", () =>
    Effect.gen(function* () {
      const { store, attempts } = yield* storeBehind((attempt) =>
        attempt <= 2
          ? { _tag: "Error", status: 400, type: "ProvisionedThroughputExceededException" }
          : attempt === 3
            ? { _tag: "Error", status: 500, type: "InternalServerError" }
            : attempt === 4
              ? { _tag: "Error", status: 503, type: "ServiceUnavailable" }
              : { _tag: "Forward" }
      )
      const chatId = ChatId.make(uniqueName("chat"))
      yield* store.putBatch(messages(chatId, 20))
      assert.deepStrictEqual(yield* store.page(chatId, { limit: 100 }), messages(chatId, 20))
      assert.strictEqual(attempts(), 5)
    })
  )

  it.effect("deleteChat retries its batch writes too", () =>
    Effect.gen(function* () {
      const { store } = yield* storeBehind((attempt) =>
        attempt === 1
          ? { _tag: "Forward" }
          : attempt <= 4
            ? { _tag: "HalfProcessed" }
            : attempt === 5
              ? { _tag: "Error", status: 400, type: "ThrottlingException" }
              : { _tag: "Forward" }
      )
      const chatId = ChatId.make(uniqueName("chat"))
      yield* store.putBatch(messages(chatId, 20))
      yield* store.deleteChat(chatId)
      assert.deepStrictEqual(yield* store.latest(chatId, 100), [])
    })
  )

  it.effect("persistent throttling gives up after 8 retries with a MessageStoreError", () =>
    Effect.gen(function* () {
      const { store, attempts } = yield* storeBehind(() => ({
        _tag: "Error",
        status: 400,
        type: "ProvisionedThroughputExceededException"
      }))
      const started = Date.now()
      const error = yield* Effect.flip(store.putBatch(messages(ChatId.make(uniqueName("chat")), 5)))
      assert.instanceOf(error, MessageStoreError)
      assert.include(error.message, "ProvisionedThroughputExceededException")
      assert.strictEqual(attempts(), 9)
      assert.isBelow(Date.now() - started, 15_000)
    })
  )

  it.effect("a permanent error is not retried", () =>
    Effect.gen(function* () {
      const { store, attempts } = yield* storeBehind(() => ({
        _tag: "Error",
        status: 400,
        type: "ValidationException"
      }))
      const error = yield* Effect.flip(store.putBatch(messages(ChatId.make(uniqueName("chat")), 5)))
      assert.instanceOf(error, MessageStoreError)
      assert.strictEqual(attempts(), 1)
    })
  )
})
