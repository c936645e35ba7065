/**
 * The message path as a whole, under generated workloads and faults (see
 * harness.ts): sends over several chats and authors with retried sends,
 * produced to `chat.messages` while actors nodes join (rebalance), leave
 * gracefully, and crash (uncommitted records are redelivered), and while the
 * MessageStore fails batches, writes only part of a batch before failing, or
 * is slow. After settling:
 *
 * (a) every distinct message id is persisted exactly once;
 * (b) per chat, the stored seqs are exactly 1..n, in the log order of the
 *     first occurrence of each id, with the content of that first send;
 * (c) a live subscriber that drops seqs it already delivered (as Session
 *     does) receives 1..n, in order, without a gap; and anything ever
 *     published under a seq — before a crash or after a replay — is the
 *     message stored under that seq. (PubSub is at most once, but the
 *     in-process one loses nothing, and what a crash loses between
 *     sequencing and publishing is re-published on replay: the actor
 *     publishes before it hands messages to the sink, and re-publishes a
 *     duplicate's earlier copy from its ring.)
 * (d) the committed offset reached the end of every partition (nothing left
 *     unpersisted) and never went backwards;
 * (e) `chats.last_seq` equals n.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Effect } from "effect"
import { checkOptions } from "./generators.ts"
import { infraLayer, runMessagePath, scenario } from "./harness.ts"

describe("message path", () => {
  layer(infraLayer, { excludeTestServices: true, timeout: 120_000 })((it) => {
    it.effect.prop(
      "exactly once, contiguous, in log order, delivered live, committed to the end — through crashes, rebalances and store faults",
      { scenario },
      ({ scenario }) =>
        Effect.gen(function* () {
          const report = yield* runMessagePath(scenario)
          if (process.env.PROPERTY_VERBOSE) console.log(JSON.stringify(report.stats))
          assert.deepStrictEqual(
            report.violations,
            [],
            `violations:\\n${report.violations.join("\\n")}\\n\\njournal:\\n${report.journal}`
          )
        }),
      { timeout: 180_000, arbitrary: checkOptions(30, 70, 40) }
    )
  })
})
