/**
 * What a Kafka claim's buffer takes from a fetched batch (src/adapters/kafka/
 * Claim.ts): the records from the claim's position on, contiguous. A batch
 * fetched from a stale position ahead of it (a fetch issued before a seek
 * back to the committed offset, delivered after it) must not be buffered:
 * its first record would move the claim's position past records the
 * handler never saw, and the runner would commit past them — acknowledged
 * messages lost (issue 11). Duplicates below the position are dropped.
 */
import { describe, expect, it } from "vitest"
import * as Claim from "../../src/adapters/kafka/Claim.ts"
import type { LogRecord } from "../../src/ports/EventLog.ts"

const batch = (from: number, count: number) => Array.from({ length: count }, (_, i) => ({ offset: String(from + i) }))

const toRecord = (message: { readonly offset: string }): LogRecord => ({
  topic: "t",
  partition: 0,
  offset: Number(message.offset),
  key: "k",
  value: new Uint8Array(0),
  headers: {},
  timestamp: 0
})

const claimAt = (offset: number) => {
  const claim = Claim.make(0)
  claim.phase = Claim.Phase.Active()
  claim.nextOffset = offset
  return claim
}

describe("Kafka claim buffer", () => {
  it("takes the records from its position on and drops duplicates below it", () => {
    const claim = claimAt(500)
    const taken = Claim.accept(claim, batch(498, 5), toRecord)
    expect(taken.map((r) => r.offset)).toEqual([500, 501, 502])
    expect(claim.nextOffset).toBe(503)
  })

  it("takes nothing from a batch that starts past its position, and stays where it is", () => {
    const claim = claimAt(500)
    const taken = Claim.accept(claim, batch(1000, 3), toRecord)
    expect(taken).toEqual([])
    expect(claim.nextOffset).toBe(500)
    // The records it is waiting for still come in afterwards, in order.
    expect(Claim.accept(claim, batch(500, 2), toRecord).map((r) => r.offset)).toEqual([500, 501])
  })
})
