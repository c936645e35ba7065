/**
 * Lost history, in both modes: a chat's messages vanish from the message
 * store while the node is down (embedded: its SQLite store is deleted;
 * cluster: the chat's items are deleted from DynamoDB, as a recreated table
 * would leave them). The chat's stream restarts with a new epoch; a client
 * that resubscribes with the seqs of the old one is answered recovered:false,
 * and the SDK resets the chat (a `reset` event) instead of waiting for seqs
 * that will never come; new messages go to the new history (from seq 1, in
 * embedded mode, where no other node can hold the chat's actor from before).
 */
import { BatchWriteItemCommand, DynamoDBClient, QueryCommand } from "@aws-sdk/client-dynamodb"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import type { Message } from "../../src/client/index.ts"
import { freePort, type Harmony, startHarmony } from "../support/harmony.ts"
import { serviceUrl } from "../support/services.ts"
import { clientPool, collect, registered, waitUntil, waitUntilAsync } from "./support.ts"

/** Deletes every item of the chat (its messages, and its epoch under `<chatId>#epoch`) from the cluster's DynamoDB table, as a recreated table would have lost them. */
const wipeChatInDynamo = async (chatId: string) => {
  const dynamo = new DynamoDBClient({
    endpoint: serviceUrl("DYNAMODB_ENDPOINT"),
    region: process.env.AWS_REGION ?? "us-east-1",
    credentials: {
      accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? "local",
      secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? "local"
    }
  })
  try {
    const table = "harmony_messages"
    const found = await dynamo.send(
      new QueryCommand({
        TableName: table,
        KeyConditionExpression: "chatId = :c",
        ExpressionAttributeValues: { ":c": { S: chatId } },
        ProjectionExpression: "chatId, seq",
        ConsistentRead: true
      })
    )
    const keys = [...(found.Items ?? [])]
    expect(keys.length).toBeGreaterThan(0)
    keys.push({ chatId: { S: `${chatId}#epoch` }, seq: { N: "0" } })
    for (let i = 0; i < keys.length; i += 25) {
      await dynamo.send(
        new BatchWriteItemCommand({
          RequestItems: { [table]: keys.slice(i, i + 25).map((Key) => ({ DeleteRequest: { Key } })) }
        })
      )
    }
  } finally {
    dynamo.destroy()
  }
}

for (const mode of ["embedded", "cluster"] as const) {
  describe(`a chat whose history was lost gets a new epoch (${mode} mode)`, { timeout: 300_000 }, () => {
    const dataDir = mode === "embedded" ? mkdtempSync(join(tmpdir(), "harmony-epoch-")) : undefined
    const pool = clientPool()
    let harmony: Harmony | undefined

    afterAll(async () => {
      await pool.closeAll()
      await harmony?.stop()
      if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true })
    })

    it("the SDK resets the chat and goes on with the new history", async () => {
      const port = await freePort()
      const start = () => startHarmony({ mode, port, ...(dataDir === undefined ? {} : { dataDir }) })
      harmony = await start()
      const options = { baseUrl: harmony.url, reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } }
      const alice = await registered(pool.make, options, "epa")
      const chat = await alice.client.createChat({ kind: "group", name: "epoch", memberIds: [] })
      const messages: Array<Message> = collect(alice.client, "message")
      const resets = collect(alice.client, "reset")
      const before = await alice.client.subscribe(chat.id)
      expect(before.epoch).toEqual(expect.any(String))
      for (let i = 1; i <= 3; i++) await alice.client.send(chat.id, `old ${i}`)
      await waitUntil("3 messages", () => messages.length === 3, 90_000)
      // Persisted before the node stops (SIGTERM drains the sink), so there is history to lose.
      await harmony.stop()

      if (dataDir !== undefined) rmSync(join(dataDir, "messages"), { recursive: true, force: true })
      else await wipeChatInDynamo(chat.id)

      harmony = await start()
      // The client reconnects by itself and resubscribes with sinceSeq 3 of the old epoch.
      await waitUntil("a reset", () => resets.length === 1, 90_000)
      expect(resets[0]).toEqual({ chatId: chat.id, lastSeq: 0, epoch: expect.any(String) })
      expect(resets[0]!.epoch).not.toBe(before.epoch)

      await alice.client.send(chat.id, "new 1")
      if (mode === "embedded") {
        await waitUntil("the new history's first message", () => messages.length === 4, 90_000)
        expect(messages.map((m) => [m.seq, m.body])).toEqual([
          [1, "old 1"],
          [2, "old 2"],
          [3, "old 3"],
          [1, "new 1"]
        ])
      } else {
        // On the shared services another test's node may own the chat's partition and still hold its actor
        // from before the wipe (it numbers on from 3): what is certain is that the message is in the new history.
        await waitUntilAsync(
          "the new message in history",
          async () => (await alice.client.history(chat.id, { after: 0 })).messages.some((m) => m.body === "new 1"),
          90_000
        )
      }
    })
  })
}
