/**
 * Properties of the OffsetTracker: records are registered in offset order
 * (offsets increase, with gaps as a log with compaction or transaction
 * markers has them) and completed in any order, interleaved with further
 * registrations. After every step `committable` is one past the longest
 * completed prefix (the first registered offset while nothing is completed),
 * never moves backwards, never passes an uncompleted offset, and `inFlight`
 * counts what a crash would replay: everything registered from the last
 * confirmed commit (of a committable position, as the runner makes them) on.
 */
import { assert, describe, it } from "@effect/vitest"
import { Arbitrary } from "effect"
import { OffsetTracker } from "../../src/sequencing/OffsetTracker.ts"
import { checkOptions, int } from "./generators.ts"

describe("OffsetTracker", () => {
  it.prop(
    "committable is one past the completed prefix, monotone, and never passes an uncompleted offset",
    {
      start: int(0, 1_000_000),
      steps: Arbitrary.array(Arbitrary.all({ kind: int(0, 9), gap: int(1, 3), pick: int(0, 1000) }), {
        maxLength: 120
      }),
      // Complete whatever is still in flight at the end, in a generated order.
      finalOrder: Arbitrary.array(int(0, 1000), { maxLength: 120 })
    },
    ({ start, steps, finalOrder }) => {
      const tracker = new OffsetTracker()
      const registered: Array<number> = []
      const completed = new Set<number>()
      let previous: number | undefined
      let committed: number | undefined

      const check = (label: string) => {
        const committable = tracker.committable
        let prefix = 0
        while (prefix < registered.length && completed.has(registered[prefix]!)) prefix++
        const expected =
          registered.length === 0 ? undefined : prefix === 0 ? registered[0]! : registered[prefix - 1]! + 1
        assert.strictEqual(committable, expected, `${label}: committable`)
        if (previous !== undefined) assert.isAtLeast(committable!, previous, `${label}: committable moved backwards`)
        const firstUncompleted = registered.find((offset) => !completed.has(offset))
        if (firstUncompleted !== undefined) {
          assert.isAtMost(
            committable!,
            firstUncompleted,
            `${label}: committable passed uncompleted ${firstUncompleted}`
          )
        }
        const replayed = registered.filter((offset) => committed === undefined || offset >= committed).length
        assert.strictEqual(tracker.inFlight, replayed, `${label}: inFlight`)
        previous = committable
      }

      const completeOne = (pick: number, label: string) => {
        const open = registered.filter((offset) => !completed.has(offset))
        if (open.length === 0) return
        const offset = open[pick % open.length]!
        completed.add(offset)
        tracker.complete(offset)
        check(`${label}: complete(${offset})`)
      }

      check("initially")
      steps.forEach((step, index) => {
        if (step.kind === 0 && tracker.committable !== undefined) {
          committed = tracker.committable
          tracker.committed(committed)
          check(`step ${index}: committed(${committed})`)
        } else if (step.kind <= 5 || registered.length === completed.size) {
          const offset = registered.length === 0 ? start : registered[registered.length - 1]! + step.gap
          registered.push(offset)
          tracker.register(offset)
          check(`step ${index}: register(${offset})`)
        } else {
          completeOne(step.pick, `step ${index}`)
        }
      })
      finalOrder.forEach((pick, index) => {
        completeOne(pick, `final ${index}`)
      })
      while (completed.size < registered.length) completeOne(0, "drain")
      if (registered.length > 0) {
        assert.strictEqual(tracker.committable, registered[registered.length - 1]! + 1, "everything completed")
        committed = tracker.committable
        tracker.committed(committed!)
        assert.strictEqual(tracker.inFlight, 0, "everything committed")
      }
    },
    { arbitrary: checkOptions(300, 120) }
  )
})
