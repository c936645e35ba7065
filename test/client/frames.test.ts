/**
 * The SDK's decoding side of the wire, without a server: every frame the
 * server can build (the `ServerFrame` type of src/schema/Protocol.ts) must be
 * an encoded frame of src/schema/ServerFrames.ts — checked by the compiler —
 * and decode to what the client dispatches on; errors keep the contract's codes.
 */
import { describe, expect, expectTypeOf, it } from "@effect/vitest"
import { Exit } from "effect"
import { HarmonyError, newClientMsgId } from "../../src/client/index.ts"
import { fromWire } from "../../src/client/HarmonyError.ts"
import { Message } from "../../src/schema/Domain.ts"
import type { ServerFrame as BuiltByServer } from "../../src/schema/Protocol.ts"
import { decodeServerFrame, type ServerFrame } from "../../src/schema/ServerFrames.ts"

const message = {
  chatId: "c1",
  seq: 3,
  id: "m1",
  authorId: "u1",
  body: "hi",
  clientMsgId: "k1",
  createdAt: "2025-01-01T00:00:00.000Z"
}

describe("server frames", () => {
  it("cover every frame the server builds", () => {
    expectTypeOf<BuiltByServer>().toExtend<typeof ServerFrame.Encoded>()
  })

  it("decode every kind of frame", () => {
    const frames = [
      { type: "ready", userId: "u1", sessionId: "s1", ref: "r1" },
      { type: "subscribed", chatId: "c1", lastSeq: 0, recovered: true },
      { type: "subscribed", chatId: "c1", lastSeq: 0, recovered: true, epoch: "e1" },
      { type: "unsubscribed", chatId: "c1" },
      { type: "ack", clientMsgId: "k1", id: "m1", ref: "r2" },
      { type: "error", code: "not_found", message: "chat c1 not found", ref: "r3" },
      { type: "pong" },
      { type: "message", message },
      { type: "typing", chatId: "c1", userId: "u2" },
      { type: "read", chatId: "c1", userId: "u2", seq: 3 },
      { type: "presence", chatId: "c1", online: ["u1", "u2"] },
      { type: "join", chatId: "c1", userId: "u2" },
      { type: "leave", chatId: "c1", userId: "u2" },
      { type: "member_added", chatId: "c1", userId: "u3" },
      { type: "member_removed", chatId: "c1", userId: "u3" },
      { type: "chat_deleted", chatId: "c1" }
    ]
    for (const frame of frames) {
      const decoded = decodeServerFrame(JSON.stringify(frame))
      expect(Exit.isSuccess(decoded), JSON.stringify(frame)).toBe(true)
    }
    const decoded = decodeServerFrame(JSON.stringify({ type: "message", message }))
    expect(Exit.isSuccess(decoded) && decoded.value.type === "message" && decoded.value.message).toBeInstanceOf(Message)
  })

  it("reject frames off the contract", () => {
    for (const text of ["not json", "{}", '{"type":"message","message":{"seq":1}}', '{"type":"subscribed"}']) {
      expect(Exit.isFailure(decodeServerFrame(text)), text).toBe(true)
    }
  })
})

describe("HarmonyError", () => {
  it("keeps the contract's code and status, and says what is worth retrying", () => {
    const notFound = fromWire("not_found", "chat c1 not found", 404)
    expect(notFound).toBeInstanceOf(HarmonyError)
    expect(notFound).toMatchObject({ _tag: "HarmonyError", code: "not_found", status: 404 })
    expect(notFound.transient).toBe(false)
    expect(fromWire("unavailable", "try again").transient).toBe(true)
    expect(fromWire("rate_limited", "slow down", 429, 2)).toMatchObject({ retryAfterSeconds: 2, transient: true })
    // A code this client does not know (a newer server): kept in the message.
    expect(fromWire("teapot", "short and stout")).toMatchObject({
      code: "internal",
      message: "teapot: short and stout"
    })
  })
})

describe("newClientMsgId", () => {
  it("makes distinct v4 UUIDs", () => {
    const ids = new Set(Array.from({ length: 100 }, newClientMsgId))
    expect(ids.size).toBe(100)
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
  })
})
