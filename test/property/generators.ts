/**
 * Shared pieces of the property suites: small Arbitrary helpers, the check
 * options (runs, size, and a seed or replay token from the environment so a
 * failure can be reproduced), and a builder that turns generated send
 * operations into the SendRecords the gateway would put on `chat.messages`.
 *
 * Reproducing a failure: every falsification prints its shrunk input and
 * `Replay: <token>`; run that one test again (`-t <name>`) with
 * PROPERTY_REPLAY=<token>, or fix the master seed of every property in the
 * run with PROPERTY_SEED=<n>. The pure properties replay exactly; a pipeline
 * replay regenerates the same scenario, but its interleaving depends on
 * timing too, so it may not fail again (its journal shows what happened).
 */
import { Arbitrary, Schema } from "effect"
import type { Arbitrary as ArbitraryT } from "effect/Arbitrary"
import { ChatId, UserId } from "../../src/schema/Domain.ts"
import { messageIdOf, type SendRecord } from "../../src/schema/Records.ts"

/** Integers in [min, max]; they shrink towards `min`. */
export const int = (min: number, max: number): ArbitraryT<number> =>
  Arbitrary.schema(Schema.Int.check(Schema.isBetween({ minimum: min, maximum: max })))

export const bool: ArbitraryT<boolean> = Arbitrary.schema(Schema.Boolean)

/** Check options for a property: runs and size, plus PROPERTY_SEED / PROPERTY_REPLAY when set. */
export const checkOptions = (runs: number, size: number, maxShrinks?: number) => {
  const seed = process.env.PROPERTY_SEED
  const replay = process.env.PROPERTY_REPLAY
  return {
    runs,
    size,
    ...(maxShrinks === undefined ? {} : { maxShrinks }),
    ...(seed === undefined || seed === "" ? {} : { seed: Number.isNaN(Number(seed)) ? seed : Number(seed) }),
    ...(replay === undefined || replay === "" ? {} : { replay })
  }
}

/**
 * One generated send: to chat `chat` by author `author`, either a fresh
 * message or (when `retry` is below 3, 30% of the time) a retry of an earlier
 * send of the same chat, `back` distinct messages back from the newest (taken
 * modulo the window the caller allows, so a retry never reaches further back
 * than the dedupe window promises to cover).
 */
export interface SendOp {
  readonly chat: number
  readonly author: number
  readonly retry: number
  readonly back: number
}

export const sendOp = (chats: number, authors: number): ArbitraryT<SendOp> =>
  Arbitrary.all({ chat: int(0, chats - 1), author: int(0, authors - 1), retry: int(0, 9), back: int(0, 63) })

export const chatIdOf = (prefix: string, chat: number) => ChatId.make(`${prefix}-c${chat}`)

/**
 * Turns operations into records, in order. A retry repeats (chatId, authorId,
 * clientMsgId) and so the message id, with a later `sentAt` as the gateway
 * would stamp it; the body is the same. `window` bounds how far back a retry
 * may reach, counted in distinct messages of its chat.
 */
export const buildRecords = (
  ops: ReadonlyArray<SendOp>,
  options: { readonly prefix: string; readonly window: number }
): Array<SendRecord> => {
  const sent = new Map<number, Array<SendRecord>>()
  const records: Array<SendRecord> = []
  const base = Date.UTC(2025, 0, 1)
  ops.forEach((op, index) => {
    const chatId = chatIdOf(options.prefix, op.chat)
    const earlier = sent.get(op.chat) ?? []
    const sentAt = new Date(base + index * 1000).toISOString()
    if (op.retry < 3 && earlier.length > 0) {
      const reach = Math.min(earlier.length, options.window)
      const original = earlier[earlier.length - 1 - (op.back % reach)]!
      records.push({ ...original, sentAt })
      return
    }
    const authorId = UserId.make(`u${op.author}`)
    const clientMsgId = `m${index}`
    const record: SendRecord = {
      id: messageIdOf(chatId, authorId, clientMsgId),
      chatId,
      authorId,
      clientMsgId,
      body: `body ${index} from u${op.author}`,
      sentAt
    }
    earlier.push(record)
    sent.set(op.chat, earlier)
    records.push(record)
  })
  return records
}

/** Per chat, the message ids in order of first occurrence: what seqs 1..n must be. */
export const firstOccurrences = (records: ReadonlyArray<SendRecord>): Map<string, Array<SendRecord>> => {
  const byChat = new Map<string, Array<SendRecord>>()
  const seen = new Set<string>()
  for (const record of records) {
    if (seen.has(record.id)) continue
    seen.add(record.id)
    const list = byChat.get(record.chatId) ?? []
    list.push(record)
    byChat.set(record.chatId, list)
  }
  return byChat
}
