/**
 * The Kafka producer under a schedule of broker answers (issue 11, defect 2):
 * each send meets the next answer of a generated schedule — acknowledged,
 * a fatal idempotence error (OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID:
 * the producer is broken for good), a retriable error, or no answer at all.
 * Whatever the schedule:
 *
 * (a) every send is answered within the send timeout;
 * (b) a producer that answered a fatal error is never used again, and exactly
 *     one new producer (a new producer id) is made per fatal error — so once
 *     the broker answers again, the next send goes through;
 * (c) other errors (retriable, timeouts) keep the producer;
 * (d) an acknowledged send answers its records' positions.
 *
 * kafkajs's producer is stood in for by a fake; virtual time (TestClock).
 */
import { assert, describe, it } from "@effect/vitest"
import { Arbitrary, Duration, Effect, Exit, Fiber } from "effect"
import { TestClock } from "effect/testing"
import type { Producer } from "kafkajs"
import * as KafkaProducer from "../../src/adapters/kafka/Producer.ts"
import { checkOptions, int } from "./generators.ts"

type Answer = "ack" | "outOfOrder" | "unknownProducer" | "retriable" | "silent"
const answers: ReadonlyArray<Answer> = ["ack", "ack", "ack", "outOfOrder", "unknownProducer", "retriable", "silent"]

const schedule = Arbitrary.map(Arbitrary.array(int(0, answers.length - 1), { minLength: 1, maxLength: 30 }), (picks) =>
  picks.map((i) => answers[i]!)
)

const kafkaError = (type: string, retriable: boolean) =>
  Object.assign(new Error(`broker answered ${type}`), { name: "KafkaJSProtocolError", type, retriable })

const sendTimeout = Duration.seconds(5)

describe("Kafka producer under a schedule of broker answers", () => {
  it.effect.prop(
    "answers every send in time, replaces a producer exactly when it is broken, and keeps it otherwise",
    { schedule },
    ({ schedule }) =>
      Effect.gen(function* () {
        let calls = 0
        const producers: Array<{ sends: number; brokenAt: number | undefined }> = []
        const create = (chosen: WeakMap<object, number>) => {
          const state = { sends: 0, brokenAt: undefined as number | undefined }
          producers.push(state)
          return {
            connect: async () => undefined,
            disconnect: async () => undefined,
            send: ({ messages }: { messages: Array<object> }) => {
              const answer = schedule[calls++] ?? "ack"
              state.sends++
              if (state.brokenAt !== undefined) return Promise.reject(kafkaError("OUT_OF_ORDER_SEQUENCE_NUMBER", false))
              for (const message of messages) chosen.set(message, 1)
              switch (answer) {
                case "ack":
                  return Promise.resolve([
                    { topicName: "t", partition: 1, errorCode: 0, baseOffset: String(calls * 10) }
                  ])
                case "outOfOrder":
                case "unknownProducer":
                  state.brokenAt = state.sends
                  return Promise.reject(
                    kafkaError(answer === "outOfOrder" ? "OUT_OF_ORDER_SEQUENCE_NUMBER" : "UNKNOWN_PRODUCER_ID", false)
                  )
                case "retriable":
                  return Promise.reject(kafkaError("NOT_LEADER_FOR_PARTITION", true))
                case "silent":
                  return new Promise(() => undefined)
              }
            }
          } as unknown as Producer
        }
        const producer = yield* KafkaProducer.make({ create, where: "fake", sendTimeout })
        let fatal = 0
        for (const [i, answer] of schedule.entries()) {
          const fiber = yield* Effect.forkChild(producer.send("t", [{ key: "k", value: Buffer.from(`m${i}`) }]))
          yield* TestClock.adjust(sendTimeout)
          const exit = fiber.pollUnsafe()
          assert.isDefined(exit, `send ${i} (${answer}) answered within the send timeout`)
          if (exit === undefined) return
          yield* Fiber.await(fiber)
          if (answer === "ack") {
            assert.isTrue(Exit.isSuccess(exit), `send ${i} was acknowledged`)
            if (Exit.isSuccess(exit)) assert.deepStrictEqual(exit.value, [{ partition: 1, offset: (i + 1) * 10 }])
          } else assert.isTrue(Exit.isFailure(exit), `send ${i} (${answer}) failed`)
          if (answer === "outOfOrder" || answer === "unknownProducer") fatal++
          assert.strictEqual(
            producers.length,
            1 + fatal,
            `after send ${i}: one producer per fatal error, plus the first`
          )
        }
        for (const made of producers) {
          if (made.brokenAt !== undefined)
            assert.strictEqual(made.sends, made.brokenAt, "a broken producer sends no more")
        }
      }),
    { arbitrary: checkOptions(Number(process.env.PROPERTY_RUNS ?? 100), 30) }
  )
})
