/**
 * The EventLog contract: what every adapter (MemoryEventLog, SqliteEventLog, KafkaEventLog)
 * must do. Each test uses its own topic and group, so the suites can share
 * one log (and one Kafka cluster) with earlier runs.
 *
 * Consumers record what their handlers see in a Journal; the tests wait for
 * conditions on it (polling with a deadline, never sleeping as an assertion)
 * and then assert exact record sets and offsets.
 */
import { assert, layer } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Scope, Stream } from "effect"
import type { Layer } from "effect"
import { EventLog, type LogRecord, type PartitionClaim, type RecordPosition } from "../../src/ports/EventLog.ts"
import { uniqueName } from "../support/services.ts"

const decoder = new TextDecoder()
const text = (record: LogRecord): string => decoder.decode(record.value)
const at = (partition: number, offset: number): string => `${partition}@${offset}`
const positionOf = (record: { readonly partition: number; readonly offset: number }): string =>
  at(record.partition, record.offset)
const range = (from: number, to: number): Array<number> => Array.from({ length: to - from }, (_, i) => from + i)

interface Seen {
  readonly consumer: string
  readonly record: LogRecord
}

interface ClaimEvent {
  readonly consumer: string
  readonly partition: number
  readonly kind: "start" | "end"
  readonly seq: number
}

/** What the handlers of one test saw, in the order they saw it. */
class Journal {
  private seq = 0
  readonly seen: Array<Seen> = []
  readonly claims: Array<ClaimEvent> = []

  claimed(consumer: string, partition: number, kind: "start" | "end"): void {
    this.claims.push({ consumer, partition, kind, seq: this.seq++ })
  }

  recordsOf(consumer?: string): Array<LogRecord> {
    return this.seen.filter((s) => consumer === undefined || s.consumer === consumer).map((s) => s.record)
  }

  /** Partitions whose claim has started and not ended, for `consumer`. */
  active(consumer: string): Set<number> {
    const active = new Set<number>()
    for (const event of this.claims) {
      if (event.consumer !== consumer) continue
      if (event.kind === "start") active.add(event.partition)
      else active.delete(event.partition)
    }
    return active
  }
}

/** Polls `condition` until it holds; fails the test with `what` at the deadline. */
const until = (what: string, condition: () => boolean, timeoutMs = 45_000) =>
  Effect.gen(function* () {
    const deadline = Date.now() + timeoutMs
    while (!condition()) {
      if (Date.now() > deadline)
        return yield* Effect.die(new Error(`timed out after ${timeoutMs}ms waiting for ${what}`))
      yield* Effect.sleep("25 millis")
    }
  })

interface ConsumerOptions {
  readonly journal: Journal
  readonly name: string
  readonly group: string
  readonly topic: string
  /** Runs after a record is journaled: commit policy, crashes. Defaults to no commit. */
  readonly onRecord?: (claim: PartitionClaim, record: LogRecord) => Effect.Effect<void, unknown>
  /** Runs once the claim's records have ended (the final commit). */
  readonly onEnd?: (claim: PartitionClaim, last: LogRecord | undefined) => Effect.Effect<void, unknown>
  /** Runs before the handler pulls anything. */
  readonly beforeStart?: Effect.Effect<void>
}

/**
 * Joins a consumer in its own scope, so the test can make it leave (close
 * the scope) before the test ends; the test's scope closes it otherwise.
 */
const startConsumer = (options: ConsumerOptions) =>
  Effect.gen(function* () {
    const log = yield* EventLog
    const scope = yield* Scope.make()
    const leave = Scope.close(scope, Exit.void)
    yield* Effect.addFinalizer(() => leave)
    const onClaim = (claim: PartitionClaim) =>
      Effect.gen(function* () {
        options.journal.claimed(options.name, claim.partition, "start")
        if (options.beforeStart !== undefined) yield* options.beforeStart
        let last: LogRecord | undefined
        yield* Stream.runForEach(claim.records, (record) =>
          Effect.gen(function* () {
            last = record
            options.journal.seen.push({ consumer: options.name, record })
            if (options.onRecord !== undefined) yield* options.onRecord(claim, record)
          })
        )
        if (options.onEnd !== undefined) yield* options.onEnd(claim, last)
      }).pipe(
        // A failed commit is a contract failure: die loudly rather than hide it.
        Effect.orDie,
        Effect.ensuring(Effect.sync(() => options.journal.claimed(options.name, claim.partition, "end")))
      )
    yield* log.consume({ group: options.group, topic: options.topic, onClaim }).pipe(Scope.provide(scope))
    return { leave }
  })

const commitEach = (claim: PartitionClaim, record: LogRecord) => claim.commit(record.offset + 1)

const values = (records: ReadonlyArray<LogRecord>) => records.map(text)

/**
 * Registers the contract's tests for an EventLog layer. The layer is built
 * once for the whole block; `name` labels the block.
 */
export const eventLogContract = (name: string, eventLog: Layer.Layer<EventLog, any>): void => {
  layer(eventLog, { excludeTestServices: true, timeout: "60 seconds" })(`EventLog contract: ${name}`, (it) => {
    it.effect(
      "answers ping and creates topics idempotently",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          yield* log.ping
          const topic = uniqueName("contract-create")
          yield* log.createTopic(topic, 3)
          yield* log.createTopic(topic, 3)
          const positions = yield* log.produce(
            topic,
            range(0, 24).map((i) => ({ key: `key-${i}`, value: `v${i}` }))
          )
          assert.isTrue(positions.every((p) => p.partition >= 0 && p.partition < 3))
          const invalid = yield* Effect.flip(log.createTopic(uniqueName("contract-invalid"), 0))
          assert.strictEqual(invalid._tag, "EventLogError")
        }),
      60_000
    )

    it.effect(
      "delivers produced records with key, value, headers and position intact",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-roundtrip")
          yield* log.createTopic(topic, 3)
          const binary = new Uint8Array([0, 255, 128, 10, 13, 0])
          const before = Date.now()
          const produced = [
            { key: "user-1", value: "héllo wörld ✓", headers: { "content-type": "text/plain", trace: "abc-123" } },
            { key: "user-2", value: binary, headers: { empty: "" } },
            { key: "user-1", value: "second" }
          ] as const
          const positions = yield* log.produce(topic, produced)
          const after = Date.now()
          assert.strictEqual(positions.length, 3)
          // One key keeps one partition, in produce order, from offset 0 of a fresh topic.
          assert.strictEqual(positions[0]!.partition, positions[2]!.partition)
          positions.forEach((position, i) => {
            const before = positions.slice(0, i).filter((p) => p.partition === position.partition).length
            assert.strictEqual(position.offset, before)
          })

          const journal = new Journal()
          yield* startConsumer({ journal, name: "A", group: uniqueName("group"), topic })
          yield* until("3 records", () => journal.seen.length >= 3)
          const seen = journal.recordsOf()
          assert.deepStrictEqual(seen.map(positionOf).sort(), positions.map(positionOf).sort())
          const expected = [
            { value: Array.from(new TextEncoder().encode("héllo wörld ✓")), headers: produced[0].headers },
            { value: Array.from(binary), headers: produced[1].headers },
            { value: Array.from(new TextEncoder().encode("second")), headers: {} }
          ]
          positions.forEach((position, i) => {
            const record = seen.find((r) => positionOf(r) === positionOf(position))!
            assert.strictEqual(record.topic, topic)
            assert.strictEqual(record.key, produced[i]!.key)
            assert.deepStrictEqual(Array.from(record.value), expected[i]!.value)
            assert.deepStrictEqual({ ...record.headers }, expected[i]!.headers)
            assert.isTrue(
              record.timestamp >= before - 1_000 && record.timestamp <= after + 1_000,
              `timestamp ${record.timestamp} outside [${before}, ${after}]`
            )
          })
        }),
      60_000
    )

    it.effect(
      "carries trace context headers, and a claim knows its partition's end offset (consumer lag)",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-trace")
          yield* log.createTopic(topic, 1)
          const traceparent = (i: number) => `00-${"ab".repeat(15)}${String(i).padStart(2, "0")}-${"cd".repeat(8)}-01`
          const produce = (from: number, to: number) =>
            log.produce(
              topic,
              range(from, to).map((i) => ({
                key: "chat-1",
                value: `m${i}`,
                headers: { traceparent: traceparent(i), tracestate: "harmony=1" }
              }))
            )
          yield* produce(0, 3)

          const journal = new Journal()
          let claim: PartitionClaim | undefined
          yield* startConsumer({
            journal,
            name: "A",
            group: uniqueName("group"),
            topic,
            onRecord: (current) =>
              Effect.sync(() => {
                claim = current
              })
          })
          yield* until("3 records", () => journal.seen.length >= 3)
          yield* until("the end offset at 3", () => claim?.endOffset() === 3)
          yield* produce(3, 5)
          yield* until("5 records", () => journal.seen.length >= 5)
          yield* until("the end offset at 5", () => claim?.endOffset() === 5)
          assert.deepStrictEqual(
            journal.recordsOf().map((record) => ({ ...record.headers })),
            range(0, 5).map((i) => ({ traceparent: traceparent(i), tracestate: "harmony=1" }))
          )
        }),
      60_000
    )

    it.effect(
      "keeps each key on one partition, in produce order, with contiguous offsets",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-keys")
          yield* log.createTopic(topic, 4)
          const alpha1 = yield* log.produce(
            topic,
            range(0, 10).map((i) => ({ key: "alpha", value: `a${i}` }))
          )
          const mixed = yield* log.produce(
            topic,
            range(0, 32).map((i) => ({ key: `key-${i}`, value: `k${i}` }))
          )
          const alpha2 = yield* log.produce(
            topic,
            range(10, 15).map((i) => ({ key: "alpha", value: `a${i}` }))
          )
          const again = yield* log.produce(
            topic,
            range(0, 32).map((i) => ({ key: `key-${i}`, value: `again${i}` }))
          )

          const alphaPartition = alpha1[0]!.partition
          assert.isTrue([...alpha1, ...alpha2].every((p) => p.partition === alphaPartition))
          assert.deepStrictEqual(
            alpha1.map((p) => p.offset),
            range(0, 10)
          )
          const mixedInAlpha = mixed.filter((p) => p.partition === alphaPartition).length
          assert.deepStrictEqual(
            alpha2.map((p) => p.offset),
            range(10 + mixedInAlpha, 15 + mixedInAlpha)
          )
          assert.isTrue(new Set(mixed.map((p) => p.partition)).size > 1, "32 keys all landed on one partition")
          assert.deepStrictEqual(
            again.map((p) => p.partition),
            mixed.map((p) => p.partition)
          )

          const produced = new Map<string, string>()
          const record = (positions: ReadonlyArray<RecordPosition>, value: (i: number) => string) =>
            positions.forEach((p, i) => {
              produced.set(positionOf(p), value(i))
            })
          record(alpha1, (i) => `a${i}`)
          record(mixed, (i) => `k${i}`)
          record(alpha2, (i) => `a${i + 10}`)
          record(again, (i) => `again${i}`)
          assert.strictEqual(produced.size, 79)

          const journal = new Journal()
          yield* startConsumer({ journal, name: "A", group: uniqueName("group"), topic })
          yield* until("79 records", () => journal.seen.length >= 79)
          const seen = journal.recordsOf()
          assert.strictEqual(seen.length, 79)
          for (const partition of range(0, 4)) {
            const inPartition = seen.filter((r) => r.partition === partition)
            const count = [...produced.keys()].filter((k) => k.startsWith(`${partition}@`)).length
            // Delivered in offset order, every offset from 0 exactly once.
            assert.deepStrictEqual(
              inPartition.map((r) => r.offset),
              range(0, count)
            )
          }
          for (const r of seen) assert.strictEqual(text(r), produced.get(positionOf(r)))
          assert.deepStrictEqual(
            values(seen.filter((r) => r.key === "alpha")),
            range(0, 15).map((i) => `a${i}`)
          )
        }),
      60_000
    )

    it.effect(
      "creates a topic on first produce",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-implicit")
          const positions = yield* log.produce(
            topic,
            range(0, 40).map((i) => ({ key: `key-${i}`, value: `v${i}` }))
          )
          assert.isTrue(new Set(positions.map((p) => p.partition)).size > 1)
          const journal = new Journal()
          yield* startConsumer({ journal, name: "A", group: uniqueName("group"), topic })
          yield* until("40 records", () => journal.seen.length >= 40)
          assert.deepStrictEqual(journal.recordsOf().map(positionOf).sort(), positions.map(positionOf).sort())
        }),
      60_000
    )

    it.effect(
      "tail of an unknown topic, and of a topic without records, is empty",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const unknown = uniqueName("contract-tail-unknown")
          assert.deepStrictEqual(yield* log.tail(unknown), [])
          const empty = uniqueName("contract-tail-empty")
          yield* log.createTopic(empty, 3)
          assert.deepStrictEqual(yield* log.tail(empty), [])
        }),
      60_000
    )

    it.effect(
      "tail answers exactly the last record of every non-empty partition, and moves as records are produced",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-tail")
          const partitions = 8
          yield* log.createTopic(topic, partitions)

          /** What was produced at each position, to compare the tail against. */
          const produced = new Map<
            string,
            { readonly key: string; readonly value: string; readonly headers: Record<string, string> }
          >()
          const produce = (records: ReadonlyArray<{ key: string; value: string; headers?: Record<string, string> }>) =>
            log.produce(topic, records).pipe(
              Effect.tap((positions) =>
                Effect.sync(() =>
                  positions.forEach((position, i) => {
                    const record = records[i]!
                    produced.set(positionOf(position), {
                      key: record.key,
                      value: record.value,
                      headers: record.headers ?? {}
                    })
                  })
                )
              )
            )
          /** The last position produced in each partition, in partition order. */
          const expectedTail = () => {
            const last = new Map<number, number>()
            for (const position of produced.keys()) {
              const [partition, offset] = position.split("@").map(Number) as [number, number]
              last.set(partition, Math.max(last.get(partition) ?? -1, offset))
            }
            return [...last].sort(([a], [b]) => a - b).map(([partition, offset]) => at(partition, offset))
          }
          const checkTail = Effect.gen(function* () {
            const tail = yield* log.tail(topic)
            const expected = expectedTail()
            assert.deepStrictEqual([...tail].map(positionOf).sort(), [...expected].sort())
            for (const record of tail) {
              const want = produced.get(positionOf(record))!
              assert.strictEqual(record.topic, topic)
              assert.strictEqual(record.key, want.key)
              assert.strictEqual(text(record), want.value)
              assert.deepStrictEqual({ ...record.headers }, want.headers)
            }
            return tail
          })

          // Two keys: at most two of the eight partitions hold records.
          yield* produce([
            { key: "alpha", value: "a0" },
            { key: "beta", value: "b0" },
            { key: "alpha", value: "a1" },
            { key: "beta", value: "b1", headers: { trace: "t-1" } },
            { key: "alpha", value: "a2", headers: { trace: "t-2" } }
          ])
          const first = yield* checkTail
          assert.isAtLeast(first.length, 1)
          assert.isAtMost(first.length, 2)
          assert.includeMembers(values(first), ["a2"])
          const alpha = first.find((record) => record.key === "alpha")!

          // More records: the tail of a partition moves to its new last record,
          // and partitions that were empty appear.
          yield* produce([
            { key: "alpha", value: "a3" },
            ...range(0, 24).map((i) => ({ key: `key-${i}`, value: `k${i}` }))
          ])
          const second = yield* checkTail
          assert.isAbove(second.length, first.length)
          const alphaAgain = second.find((record) => record.partition === alpha.partition)!
          assert.isAbove(alphaAgain.offset, alpha.offset)

          yield* produce([{ key: "alpha", value: "a4", headers: { trace: "t-4" } }])
          const third = yield* checkTail
          const latest = third.find((record) => record.partition === alpha.partition)!
          assert.strictEqual(text(latest), "a4")
          assert.strictEqual(latest.offset, alphaAgain.offset + 1)
          assert.strictEqual(third.length, second.length)
        }),
      60_000
    )

    it.effect(
      "resumes a group right after its committed offset",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-resume")
          const group = uniqueName("group")
          yield* log.createTopic(topic, 1)
          yield* log.produce(
            topic,
            range(0, 10).map((i) => ({ key: "k", value: `${i}` }))
          )

          const journal = new Journal()
          const a = yield* startConsumer({
            journal,
            name: "A",
            group,
            topic,
            // Processes everything, but only makes offsets 0..3 durable.
            onRecord: (claim, record) => (record.offset === 3 ? claim.commit(4) : Effect.void)
          })
          yield* until("A sees 10 records", () => journal.recordsOf("A").length >= 10)
          assert.deepStrictEqual(
            journal.recordsOf("A").map((r) => r.offset),
            range(0, 10)
          )
          yield* a.leave

          yield* startConsumer({ journal, name: "B", group, topic, onRecord: commitEach })
          yield* until("B sees 6 records", () => journal.recordsOf("B").length >= 6)
          assert.deepStrictEqual(
            journal.recordsOf("B").map((r) => r.offset),
            range(4, 10)
          )
          assert.deepStrictEqual(values(journal.recordsOf("B")), range(4, 10).map(String))

          // Another group has its own position: it starts from the beginning.
          yield* startConsumer({ journal, name: "C", group: uniqueName("other-group"), topic })
          yield* until("C sees 10 records", () => journal.recordsOf("C").length >= 10)
          assert.deepStrictEqual(
            journal.recordsOf("C").map((r) => r.offset),
            range(0, 10)
          )
        }),
      60_000
    )

    it.effect(
      "refuses commits beyond the delivered records and after the claim ended",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-commit-bounds")
          const group = uniqueName("group")
          yield* log.createTopic(topic, 1)
          yield* log.produce(
            topic,
            range(0, 3).map((i) => ({ key: "k", value: `${i}` }))
          )
          const journal = new Journal()
          const refusals: Array<string> = []
          let ended: PartitionClaim | undefined
          const a = yield* startConsumer({
            journal,
            name: "A",
            group,
            topic,
            onRecord: (claim, record) =>
              Effect.gen(function* () {
                ended = claim
                if (record.offset !== 0) return yield* claim.commit(record.offset + 1)
                // Only 3 records exist: no claim can have delivered up to 1000.
                const refused = yield* Effect.flip(claim.commit(1_000))
                refusals.push(refused._tag)
                yield* claim.commit(1)
              })
          })
          yield* until("A sees 3 records", () => journal.recordsOf("A").length >= 3)
          assert.deepStrictEqual(refusals, ["EventLogError"])
          yield* a.leave
          const late = yield* Effect.flip(ended!.commit(1))
          assert.strictEqual(late._tag, "EventLogError")

          // The refused commits changed nothing: the group resumes after offset 2.
          yield* log.produce(topic, [{ key: "k", value: "3" }])
          yield* startConsumer({ journal, name: "B", group, topic })
          yield* until("B sees a record", () => journal.recordsOf("B").length >= 1)
          assert.deepStrictEqual(
            journal.recordsOf("B").map((r) => r.offset),
            [3]
          )
        }),
      60_000
    )

    it.effect(
      "keeps the final commit a handler makes after its records end",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-final-commit")
          const group = uniqueName("group")
          yield* log.createTopic(topic, 1)
          yield* log.produce(
            topic,
            range(0, 5).map((i) => ({ key: "k", value: `${i}` }))
          )
          const journal = new Journal()
          const a = yield* startConsumer({
            journal,
            name: "A",
            group,
            topic,
            onEnd: (claim, last) => (last === undefined ? Effect.void : claim.commit(last.offset + 1))
          })
          yield* until("A sees 5 records", () => journal.recordsOf("A").length >= 5)
          // Leaving ends A's records and waits for its handler's final commit.
          yield* a.leave
          assert.isFalse(journal.active("A").has(0))

          yield* log.produce(topic, [
            { key: "k", value: "5" },
            { key: "k", value: "6" }
          ])
          yield* startConsumer({ journal, name: "B", group, topic })
          yield* until("B sees 2 records", () => journal.recordsOf("B").length >= 2)
          assert.deepStrictEqual(
            journal.recordsOf("B").map((r) => r.offset),
            [5, 6]
          )
        }),
      60_000
    )

    it.effect(
      "redelivers what a consumer processed but did not commit before it left",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-redeliver")
          const group = uniqueName("group")
          yield* log.createTopic(topic, 2)
          const positions = yield* log.produce(
            topic,
            range(0, 12).map((i) => ({ key: `key-${i}`, value: `${i}` }))
          )
          const journal = new Journal()
          const a = yield* startConsumer({ journal, name: "A", group, topic })
          yield* until("A sees 12 records", () => journal.recordsOf("A").length >= 12)
          yield* a.leave

          yield* startConsumer({ journal, name: "B", group, topic })
          yield* until("B sees 12 records", () => journal.recordsOf("B").length >= 12)
          assert.deepStrictEqual(journal.recordsOf("B").map(positionOf).sort(), positions.map(positionOf).sort())
        }),
      60_000
    )

    it.effect(
      "redelivers from the committed offset after a handler dies or is interrupted",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-crash")
          const group = uniqueName("group")
          yield* log.createTopic(topic, 1)
          yield* log.produce(
            topic,
            range(0, 6).map((i) => ({ key: "k", value: `${i}` }))
          )
          const journal = new Journal()
          let run = 0
          const a = yield* startConsumer({
            journal,
            name: "A",
            group,
            topic,
            beforeStart: Effect.sync(() => {
              run++
            }),
            onRecord: (claim, record) => {
              // Run 1 makes 0..1 durable, processes 2..3, then dies.
              if (run === 1 && record.offset === 1) return claim.commit(2)
              if (run === 1 && record.offset === 3) {
                return Effect.die(new Error("simulated handler crash (expected by the test)"))
              }
              // Run 2 (from 2) makes 2 durable, processes 3..4, then is interrupted.
              if (run === 2 && record.offset === 2) return claim.commit(3)
              if (run === 2 && record.offset === 4) return Effect.interrupt
              // Run 3 (from 3) processes the rest and commits nothing.
              return Effect.void
            }
          })
          yield* until("A's handler to run a third time", () => journal.recordsOf("A").length >= 10)
          assert.deepStrictEqual(
            journal.recordsOf("A").map((r) => r.offset),
            [0, 1, 2, 3, 2, 3, 4, 3, 4, 5]
          )
          assert.strictEqual(run, 3)
          yield* a.leave

          // The last run committed nothing: the next member starts at 3.
          yield* startConsumer({ journal, name: "B", group, topic })
          yield* until("B sees 3 records", () => journal.recordsOf("B").length >= 3)
          assert.deepStrictEqual(
            journal.recordsOf("B").map((r) => r.offset),
            [3, 4, 5]
          )
        }),
      60_000
    )

    it.effect(
      "hands partitions over on rebalance without losing or repeating a record",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-rebalance")
          const group = uniqueName("group")
          const partitions = 4
          yield* log.createTopic(topic, partitions)
          const produced: Array<RecordPosition> = []
          produced.push(
            ...(yield* log.produce(
              topic,
              range(0, 40).map((i) => ({ key: `key-${i}`, value: `initial-${i}` }))
            ))
          )
          assert.strictEqual(new Set(produced.map((p) => p.partition)).size, partitions)

          const journal = new Journal()
          yield* startConsumer({
            journal,
            name: "A",
            group,
            topic,
            // Slow enough that the revocation lands mid-record and the drain
            // takes a while: a new owner starting early would show.
            onRecord: (claim, record) => Effect.sleep("5 millis").pipe(Effect.andThen(commitEach(claim, record))),
            onEnd: () => Effect.sleep("200 millis")
          })
          yield* until("A claims every partition", () => journal.active("A").size === partitions)
          yield* until("A sees the first 40 records", () => journal.recordsOf("A").length >= 40)

          // Records keep arriving while the group rebalances.
          let producing = true
          const producer = yield* Effect.forkChild(
            Effect.gen(function* () {
              for (let i = 0; producing; i++) {
                produced.push(...(yield* log.produce(topic, [{ key: `live-${i}`, value: `live-${i}` }])))
                yield* Effect.sleep("20 millis")
              }
            })
          )

          yield* startConsumer({ journal, name: "B", group, topic, onRecord: commitEach })
          yield* until("the partitions to be split between A and B", () => {
            const a = journal.active("A")
            const b = journal.active("B")
            return a.size > 0 && b.size > 0 && a.size + b.size === partitions && [...b].every((p) => !a.has(p))
          })
          yield* until("B to process records", () => journal.recordsOf("B").length >= 5)
          producing = false
          yield* Fiber.join(producer)
          produced.push(
            ...(yield* log.produce(
              topic,
              range(0, 20).map((i) => ({ key: `key-${i}`, value: `final-${i}` }))
            ))
          )

          const expected = produced.map(positionOf).sort()
          yield* until("every produced record to be seen", () => {
            const seen = new Set(journal.recordsOf().map(positionOf))
            return expected.every((p) => seen.has(p))
          })
          const seen = journal.recordsOf().map(positionOf).sort()
          assert.deepStrictEqual(seen, expected, "every record exactly once across A and B")

          // B started each partition only after A's claim on it had ended.
          const bPartitions = journal.active("B")
          assert.isTrue(bPartitions.size > 0 && journal.active("A").size > 0)
          for (const partition of bPartitions) {
            const bStart = journal.claims.find((e) => e.consumer === "B" && e.partition === partition)!
            const aEnd = journal.claims.find((e) => e.consumer === "A" && e.partition === partition && e.kind === "end")
            assert.isDefined(aEnd, `A's claim on partition ${partition} never ended`)
            assert.isTrue(aEnd!.seq < bStart.seq, `B claimed partition ${partition} before A released it`)
            const aLast = Math.max(
              ...journal
                .recordsOf("A")
                .filter((r) => r.partition === partition)
                .map((r) => r.offset)
            )
            const bFirst = journal.recordsOf("B").find((r) => r.partition === partition)
            if (bFirst !== undefined) assert.strictEqual(bFirst.offset, aLast + 1)
          }
        }),
      90_000
    )

    it.effect(
      "lets produce proceed while a claim handler does not pull",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const topic = uniqueName("contract-backpressure")
          yield* log.createTopic(topic, 1)
          const gate = yield* Deferred.make<void>()
          const journal = new Journal()
          yield* startConsumer({
            journal,
            name: "A",
            group: uniqueName("group"),
            topic,
            beforeStart: Deferred.await(gate)
          })
          // Opened before the consumer leaves, should an assertion fail first.
          yield* Effect.addFinalizer(() => Deferred.succeed(gate, undefined))
          yield* until("A's claim", () => journal.active("A").size === 1)

          const payload = "x".repeat(200)
          for (const batch of range(0, 40)) {
            const positions = yield* log.produce(
              topic,
              range(0, 100).map((i) => ({ key: "k", value: `${batch * 100 + i}:${payload}` }))
            )
            assert.strictEqual(positions[99]!.offset, batch * 100 + 99)
          }
          assert.strictEqual(journal.seen.length, 0)

          yield* Deferred.succeed(gate, undefined)
          yield* until("A sees 4000 records", () => journal.seen.length >= 4000)
          const seen = journal.recordsOf("A")
          assert.strictEqual(seen.length, 4000)
          assert.deepStrictEqual(
            seen.map((r) => r.offset),
            range(0, 4000)
          )
          assert.isTrue(seen.every((r) => text(r).startsWith(`${r.offset}:`)))
        }),
      90_000
    )
  })
}
