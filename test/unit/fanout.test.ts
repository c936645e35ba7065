/**
 * The fanout envelope: what one node publishes, every node reads back — a
 * removal says whom it ends as data, and a payload of the format before
 * `ends` (four fields, then the frame) still reads right.
 */
import { assert, describe, it } from "@effect/vitest"
import { decodeItem, decodeItems, encodeItem, Everyone, signalItem } from "../../src/messages/Fanout.ts"
import type { ChatId, UserId } from "../../src/schema/Domain.ts"

const chatId = "c1" as ChatId
const userId = "u1" as UserId
const frame = JSON.stringify({ type: "message", message: { body: "a body with spaces" } })

describe("fanout envelope", () => {
  it("round-trips a message with its delivery data", () => {
    const item = {
      seq: 7,
      frame,
      sentAt: 1_700_000_000_000,
      publishedAt: 1_700_000_000_012.25,
      traceparent: "00-0af7-b7ad-01"
    }
    assert.deepStrictEqual(decodeItem(encodeItem(item), 1_700_000_000_013.5), {
      ...item,
      from: undefined,
      ends: undefined,
      receivedAt: 1_700_000_000_013.5
    })
  })

  it("carries a chat's batch in one payload, in order", () => {
    const items = [1, 2, 3].map((seq) => ({ seq, frame: frame.replace("spaces", `seq ${seq}`), sentAt: seq }))
    const payload = items.map(encodeItem).join("\n")
    const decoded = decodeItems(payload)
    assert.deepStrictEqual(
      decoded.map((item) => [item.seq, item.frame, item.sentAt]),
      items.map((item) => [item.seq, item.frame, item.sentAt])
    )
    assert.deepStrictEqual(decodeItems(`garbage\n${encodeItem(items[0]!)}`).length, 1)
  })

  it("carries whom a signal ends as data", () => {
    const removed = decodeItem(encodeItem(signalItem(undefined, { type: "member_removed", chatId, userId })))
    assert.strictEqual(removed?.ends, userId)
    assert.strictEqual(removed?.seq, 0)
    assert.deepStrictEqual(JSON.parse(removed?.frame ?? ""), { type: "member_removed", chatId, userId })
    const deleted = decodeItem(encodeItem(signalItem(undefined, { type: "chat_deleted", chatId })))
    assert.strictEqual(deleted?.ends, Everyone)
    const typing = decodeItem(encodeItem(signalItem(userId, { type: "typing", chatId, userId })))
    assert.strictEqual(typing?.ends, undefined)
    assert.strictEqual(typing?.from, userId)
  })

  it("reads the four-field payloads of nodes before `ends`", () => {
    assert.deepStrictEqual(decodeItem(`3 - 12 - ${frame}`), {
      seq: 3,
      from: undefined,
      ends: undefined,
      sentAt: 12,
      publishedAt: undefined,
      receivedAt: undefined,
      traceparent: undefined,
      frame
    })
  })

  it("drops what is not an envelope", () => {
    for (const payload of ["", "garbage", `x - - - ${frame}`, "1 - - -", `1 - - - a b ${frame}`]) {
      assert.strictEqual(decodeItem(payload), undefined, payload)
    }
  })
})
