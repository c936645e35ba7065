/**
 * Supervised actors (src/sequencing/ChatActors.ts): an actor that dies by a
 * defect mid-batch — here, its fanout publish dies — is restarted from the
 * store, and the whole message path keeps its promises (see
 * messagePath.test.ts for the list): every message stored once, seqs
 * contiguous, delivered live, and every partition committed to its end —
 * the dead actor's partition included, and the chats it shares with others.
 *
 * PROPERTY_RUNS overrides the number of runs (default 25).
 */
import { assert, describe, layer } from "@effect/vitest"
import { Effect } from "effect"
import { checkOptions } from "./generators.ts"
import { infraLayer, runMessagePath, type Scenario, supervisionScenario } from "./harness.ts"

const runs = Number(process.env.PROPERTY_RUNS ?? 25)

const explain = (report: { readonly journal: string }, problems: ReadonlyArray<string>) =>
  `violations:\n${problems.join("\n")}\n\njournal:\n${report.journal}`

describe("supervised actors", () => {
  layer(infraLayer, { excludeTestServices: true, timeout: 120_000 })((it) => {
    // Chat 0's actor dies on its second batch; chats 0 and 1 share the one
    // partition, so a dead actor that stayed dead would freeze its commit.
    const oneDefect: Scenario = {
      partitions: 1,
      steps: [
        { _tag: "Send", op: { chat: 0, author: 0, retry: 9, back: 0 } },
        { _tag: "Pause", millis: 50 },
        { _tag: "ActorDefect", chat: 0 },
        { _tag: "Send", op: { chat: 0, author: 1, retry: 9, back: 0 } },
        { _tag: "Send", op: { chat: 1, author: 0, retry: 9, back: 0 } },
        { _tag: "Send", op: { chat: 0, author: 2, retry: 9, back: 0 } },
        { _tag: "Pause", millis: 50 },
        { _tag: "Send", op: { chat: 0, author: 0, retry: 9, back: 0 } },
        { _tag: "Send", op: { chat: 1, author: 1, retry: 9, back: 0 } }
      ],
      faults: [],
      mailboxSize: 4,
      backlog: 8,
      batchSize: 4,
      commitMillis: 10,
      idleMillis: 5_000,
      ringSize: 8
    }

    it.effect(
      "an actor that dies by a defect is restarted: its partition's other chats and its later records flow",
      () =>
        Effect.gen(function* () {
          const report = yield* runMessagePath(oneDefect)
          assert.strictEqual(report.counters.defects, 1)
          assert.deepStrictEqual(report.violations, [], explain(report, report.violations))
        })
    )

    it.effect.prop(
      "exactly once, contiguous, delivered live, committed to the end — with actors dying among crashes, rebalances and store faults",
      { scenario: supervisionScenario },
      ({ scenario }) =>
        Effect.gen(function* () {
          const report = yield* runMessagePath(scenario)
          if (process.env.PROPERTY_VERBOSE) console.log(JSON.stringify(report.counters))
          assert.deepStrictEqual(report.violations, [], explain(report, report.violations))
        }),
      { timeout: 240_000, arbitrary: checkOptions(runs, 70, 25) }
    )
  })
})
