/**
 * A claim consumer whose kafkajs consumer crashed with an error kafkajs does
 * not restart after (it restarts only after retriable ones) keeps consuming.
 * Seen in the fault-injection suite (test/chaos): with the broker stopped, a
 * request on a connection being torn down failed with a plain
 * `Error: Broker not connected`; kafkajs disconnected the consumer and left
 * it stopped, and the node consumed nothing of the `actors` group until it
 * was restarted. Here the crash is made as kafkajs makes it — the consumer
 * disconnected, then its CRASH event with `restart: false` — on a real broker.
 */
import { Duration, Effect, Exit, Scope, Stream } from "effect"
import type { Consumer, InstrumentationEvent } from "kafkajs"
import { describe, expect, it } from "vitest"
import * as ClaimConsumer from "../../src/adapters/kafka/ClaimConsumer.ts"
import * as Client from "../../src/adapters/kafka/Client.ts"
import { serviceUrl, uniqueName } from "../support/services.ts"
import { until } from "./cluster.support.ts"

describe("Kafka claim consumer", () => {
  it("consumes again after a crash kafkajs does not restart after", async () => {
    const scope = Scope.makeUnsafe()
    const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.provide(scope)(effect))
    try {
      const topic = uniqueName("crash")
      const group = uniqueName("crash-group")
      const client = await run(
        Client.make({
          brokers: serviceUrl("KAFKA_BROKERS").split(","),
          clientId: "harmony-crash-test",
          sessionTimeout: 6_000,
          heartbeatInterval: 1_000,
          rebalanceTimeout: 10_000,
          maxWaitTime: 100
        })
      )
      await client.admin.createTopics({ topics: [{ topic, numPartitions: 1 }], waitForLeaders: true })
      let consumer: Consumer | undefined
      let onCrash: ((event: InstrumentationEvent<unknown>) => void) | undefined
      const watched: Client.KafkaClient = {
        ...client,
        consumer: (options) => {
          const made = client.consumer(options)
          consumer = made
          const on = made.on.bind(made)
          made.on = ((event: string, listener: (event: InstrumentationEvent<unknown>) => void) => {
            if (event === made.events.CRASH) onCrash = listener
            return on(event as never, listener as never)
          }) as Consumer["on"]
          return made
        }
      }
      const seen: Array<string> = []
      await run(
        ClaimConsumer.make(watched, { drainTimeout: Duration.seconds(5), ensureTopic: () => Effect.succeed(1) })({
          group,
          topic,
          onClaim: (claim) =>
            claim.records.pipe(
              Stream.runForEach((record) =>
                Effect.sync(() => seen.push(new TextDecoder().decode(record.value))).pipe(
                  Effect.andThen(claim.commit(record.offset + 1)),
                  Effect.ignore
                )
              )
            )
        })
      )
      const producer = client.kafka.producer()
      await producer.connect()
      try {
        await producer.send({ topic, messages: [{ value: "before" }] })
        await until("the record before the crash consumed", () => seen.includes("before") || undefined)

        // As kafkajs's consumer does on a crash it does not restart after.
        await consumer!.disconnect()
        onCrash!({
          id: "0",
          type: "consumer.crash",
          timestamp: Date.now(),
          payload: { error: new Error("Broker not connected"), groupId: group, restart: false }
        })

        await producer.send({ topic, messages: [{ value: "after" }] })
        await until("the record after the crash consumed", () => seen.includes("after") || undefined, {
          timeoutMs: 60_000
        })
        expect(seen.at(-1)).toBe("after")
      } finally {
        await producer.disconnect()
      }
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  }, 120_000)
})
