/**
 * CPU per persisted message of the embedded message stores, in-process: the
 * same batches written through the MessageStore port to SQLite
 * (SqliteMessageStore) and to dynalite on LevelDB (the store embedded mode
 * used before), each in a fresh temporary directory. CPU time of the whole
 * process (every thread, `process.cpuUsage`), so a busy machine slows the
 * run but barely moves the figures; wall time is printed for reference only.
 *
 *   npx tsx bench/store-cpu.ts [--messages 20000] [--batch 100] [--chats 100] [--body 100]
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { Effect, type Layer } from "effect"
import * as Dynalite from "../src/adapters/dynamo/Dynalite.ts"
import * as SqliteMessageStore from "../src/adapters/sqlite/SqliteMessageStore.ts"
import { MessageStore, type MessageStoreError } from "../src/ports/MessageStore.ts"
import { ChatId, Message, MessageId, UserId } from "../src/schema/Domain.ts"

const { values } = parseArgs({
  options: {
    messages: { type: "string", default: "20000" },
    batch: { type: "string", default: "100" },
    chats: { type: "string", default: "100" },
    body: { type: "string", default: "100" }
  }
})
const total = Number(values.messages)
const batchSize = Number(values.batch)
const chats = Number(values.chats)
const body = "x".repeat(Number(values.body))

const batches: Array<Array<Message>> = []
const seqs = new Array<number>(chats).fill(0)
for (let i = 0; i < total; i += batchSize) {
  const batch: Array<Message> = []
  for (let j = i; j < Math.min(total, i + batchSize); j++) {
    const chat = j % chats
    const seq = ++seqs[chat]!
    batch.push(
      Message.make({
        chatId: ChatId.make(`chat-${chat}`),
        seq,
        id: MessageId.make(`m-${chat}-${seq}`),
        authorId: UserId.make("author"),
        body,
        clientMsgId: `c-${chat}-${seq}`,
        createdAt: new Date().toISOString()
      })
    )
  }
  batches.push(batch)
}

const measure = (name: string, layer: (dir: string) => Layer.Layer<MessageStore, MessageStoreError>) => {
  const dir = mkdtempSync(join(tmpdir(), "harmony-store-cpu-"))
  return Effect.gen(function* () {
    const store = yield* MessageStore
    const cpu = process.cpuUsage()
    const started = performance.now()
    for (const batch of batches) yield* store.putBatch(batch)
    const used = process.cpuUsage(cpu)
    const wall = performance.now() - started
    const perMessage = (used.user + used.system) / total
    console.log(
      `${name.padEnd(8)} ${total} messages in batches of ${batchSize}: ${perMessage.toFixed(1)} µs CPU/message (user ${(used.user / 1000).toFixed(0)} ms, system ${(used.system / 1000).toFixed(0)} ms; wall ${wall.toFixed(0)} ms)`
    )
  }).pipe(Effect.provide(layer(dir)), Effect.ensuring(Effect.sync(() => rmSync(dir, { recursive: true, force: true }))))
}

await Effect.runPromise(
  Effect.gen(function* () {
    yield* measure("sqlite", (dir) => SqliteMessageStore.layer({ directory: dir }))
    yield* measure("dynalite", (dir) => Dynalite.embeddedLayer({ path: join(dir, "dynamo"), table: "messages" }))
  })
)
