// Talks once to Redis, Kafka and DynamoDB Local started by scripts/services.sh
// (Postgres is checked with psql by `services.sh smoke` itself).
// Run: bash scripts/services.sh smoke   (sets the env from `services.sh env`)
import { randomUUID } from "node:crypto"
import {
  CreateTableCommand,
  DeleteTableCommand,
  DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  waitUntilTableExists
} from "@aws-sdk/client-dynamodb"
import { Redis } from "ioredis"
import { Kafka, logLevel } from "kafkajs"

const env = (name) => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set (eval "$(bash scripts/services.sh env)")`)
  return value
}

const withTimeout = (name, ms, run) =>
  Promise.race([
    run(),
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${name}: timed out after ${ms}ms`)), ms).unref())
  ])

const id = randomUUID().slice(0, 8)

async function redis() {
  const client = new Redis(env("REDIS_URL"), { lazyConnect: true, maxRetriesPerRequest: 1 })
  try {
    await client.connect()
    await client.set(`smoke:${id}`, "ok", "EX", 60)
    const value = await client.get(`smoke:${id}`)
    if (value !== "ok") throw new Error(`redis: read back ${value}`)
  } finally {
    client.disconnect()
  }
}

async function kafka() {
  const kafka = new Kafka({
    clientId: "harmony-smoke",
    brokers: env("KAFKA_BROKERS").split(","),
    logLevel: logLevel.NOTHING
  })
  const topic = `harmony-smoke-${id}`
  const admin = kafka.admin()
  const producer = kafka.producer()
  const consumer = kafka.consumer({ groupId: `harmony-smoke-${id}` })
  try {
    await admin.connect()
    await admin.createTopics({ topics: [{ topic, numPartitions: 4 }], waitForLeaders: true })
    const [meta] = (await admin.fetchTopicMetadata({ topics: [topic] })).topics
    if (meta.partitions.length !== 4) throw new Error(`kafka: ${meta.partitions.length} partitions`)

    await consumer.connect()
    await consumer.subscribe({ topic, fromBeginning: true })
    const received = new Promise((resolve) => {
      consumer.run({ eachMessage: async ({ message }) => resolve(message.value.toString()) })
    })
    await producer.connect()
    await producer.send({ topic, messages: [{ key: "k", value: `hello ${id}` }] })
    const value = await received
    if (value !== `hello ${id}`) throw new Error(`kafka: consumed ${value}`)
    await admin.deleteTopics({ topics: [topic] }).catch(() => {})
  } finally {
    await consumer.disconnect().catch(() => {})
    await producer.disconnect().catch(() => {})
    await admin.disconnect().catch(() => {})
  }
}

async function dynamodb() {
  const client = new DynamoDBClient({ endpoint: env("DYNAMODB_ENDPOINT"), region: env("AWS_REGION") })
  const TableName = `harmony-smoke-${id}`
  try {
    await client.send(
      new CreateTableCommand({
        TableName,
        KeySchema: [{ AttributeName: "pk", KeyType: "HASH" }],
        AttributeDefinitions: [{ AttributeName: "pk", AttributeType: "S" }],
        BillingMode: "PAY_PER_REQUEST"
      })
    )
    await waitUntilTableExists({ client, minDelay: 1, maxWaitTime: 20 }, { TableName })
    await client.send(new PutItemCommand({ TableName, Item: { pk: { S: "a" }, v: { S: id } } }))
    const { Item } = await client.send(new GetItemCommand({ TableName, Key: { pk: { S: "a" } }, ConsistentRead: true }))
    if (Item?.v?.S !== id) throw new Error(`dynamodb: read back ${JSON.stringify(Item)}`)
    await client.send(new DeleteTableCommand({ TableName }))
  } finally {
    client.destroy()
  }
}

let failed = 0
for (const [name, check, ms] of [
  ["redis", redis, 10_000],
  ["kafka", kafka, 60_000],
  ["dynamodb", dynamodb, 30_000]
]) {
  const t0 = Date.now()
  try {
    await withTimeout(name, ms, check)
    console.log(`smoke: ${name} ok (${Date.now() - t0}ms)`)
  } catch (error) {
    failed++
    console.error(`smoke: ${name} FAILED: ${error?.stack ?? error}`)
  }
}
process.exit(failed ? 1 : 0)
