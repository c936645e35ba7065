/**
 * The Kafka adapter's producer under the two broker faults a send must
 * survive (issue 11): a producer whose idempotence state is broken for good
 * (OUT_OF_ORDER_SEQUENCE_NUMBER after a broker restart) is replaced by a new
 * one, and a send the brokers do not answer fails within the send timeout
 * instead of hanging. kafkajs's producer is stood in for by a fake that
 * answers as a broker would; the partitioner's choice is recorded as the
 * real one does.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber } from "effect"
import { TestClock } from "effect/testing"
import type { Producer } from "kafkajs"
import * as KafkaProducer from "../../src/adapters/kafka/Producer.ts"

type Behaviour = "fatal" | "ok" | "silent"

/** kafkajs's error for the broker's answer, as kafkajs builds it (not retriable). */
const outOfOrder = () =>
  Object.assign(new Error("The broker received an out of order sequence number"), {
    name: "KafkaJSProtocolError",
    type: "OUT_OF_ORDER_SEQUENCE_NUMBER",
    code: 45,
    retriable: false
  })

const fakes = (behaviours: ReadonlyArray<Behaviour>) => {
  const made: Array<{ behaviour: Behaviour; sends: number; disconnected: boolean }> = []
  const create = (chosen: WeakMap<object, number>) => {
    const state = { behaviour: behaviours[made.length] ?? "ok", sends: 0, disconnected: false }
    made.push(state)
    const producer = {
      connect: async () => undefined,
      disconnect: async () => {
        state.disconnected = true
      },
      send: ({ messages }: { messages: Array<object> }) => {
        state.sends++
        for (const message of messages) chosen.set(message, 0)
        if (state.behaviour === "fatal") return Promise.reject(outOfOrder())
        if (state.behaviour === "silent") return new Promise(() => undefined)
        return Promise.resolve([{ topicName: "t", partition: 0, errorCode: 0, baseOffset: "41" }])
      }
    }
    return producer as unknown as Producer
  }
  return { made, create }
}

const message = () => ({ key: "chat", value: Buffer.from("hello") })

describe("Kafka producer", () => {
  it.effect("a producer in a fatal state is replaced, and the next send goes through without a restart", () =>
    Effect.gen(function* () {
      const { made, create } = fakes(["fatal", "ok"])
      const producer = yield* KafkaProducer.make({ create, where: "fake", sendTimeout: Duration.seconds(5) })
      const first = yield* Effect.exit(producer.send("t", [message()]))
      assert.isTrue(Exit.isFailure(first), "the send that met the fatal error fails (the client sends it again)")
      const second = yield* producer.send("t", [message(), message()])
      assert.deepStrictEqual(second, [
        { partition: 0, offset: 41 },
        { partition: 0, offset: 42 }
      ])
      assert.strictEqual(made.length, 2, "a new producer (a new producer id) was made")
      assert.strictEqual(made[0]!.sends, 1, "the broken producer sent nothing more")
      yield* Effect.yieldNow
      assert.isTrue(made[0]!.disconnected, "the broken producer was let go")
    })
  )

  it.effect("a send the brokers do not answer fails within the send timeout", () =>
    Effect.gen(function* () {
      const { create } = fakes(["silent"])
      const producer = yield* KafkaProducer.make({ create, where: "fake", sendTimeout: Duration.seconds(5) })
      const fiber = yield* Effect.forkChild(producer.send("t", [message()]))
      yield* TestClock.adjust(Duration.seconds(5))
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) assert.include(String(exit.cause), "no acknowledgement within")
    })
  )
})
