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
import { applyChange, type Change, ChatId, isChange, type LogEntry, Message, UserId } from "../../src/schema/Domain.ts"
import {
  type ChangeRecord,
  type ChatRecord,
  changeIdOf,
  isChangeRecord,
  messageIdOf,
  type SendRecord
} from "../../src/schema/Records.ts"

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

/** Per chat, the record ids in order of first occurrence: what seqs 1..n must be. */
export const firstOccurrences = <R extends ChatRecord>(records: ReadonlyArray<R>): Map<string, Array<R>> => {
  const byChat = new Map<string, Array<R>>()
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

// --- changes (edits, deletes, reactions) -------------------------------------------------

export const emojis = ["👍", "🎉"] as const

/**
 * A step of a scenario with changes: a send, or (`change`) a change by
 * author `author` to chat `chat` read off the same fields — `back % 4` is the
 * kind (edit, delete, react, unreact), `(back >> 2)` picks the target among
 * the chat's messages so far, `(back >> 4) % 3` the emoji; `retry === 9`
 * repeats the chat's last change instead (a retried request: same id).
 */
export interface LogOp {
  readonly op: SendOp
  readonly change: boolean
}

/**
 * Turns sends and changes into records, in order, like buildRecords; a
 * change's target is named by the seq it will have (first occurrences in log
 * order). A change to a chat with no message yet produces nothing (undefined).
 */
export const buildLog = (
  ops: ReadonlyArray<LogOp>,
  options: { readonly prefix: string }
): Array<ChatRecord | undefined> => {
  const records: Array<ChatRecord | undefined> = []
  const seen = new Set<string>()
  /** Per chat: the distinct records so far (their index + 1 is their seq), and the messages' seqs. */
  const chats = new Map<
    number,
    { entries: number; messages: Array<SendRecord & { seq: number }>; changes: Array<ChangeRecord> }
  >()
  const base = Date.UTC(2025, 0, 1)
  ops.forEach(({ op, change }, index) => {
    const chat = chats.get(op.chat) ?? { entries: 0, messages: [], changes: [] }
    chats.set(op.chat, chat)
    const chatId = chatIdOf(options.prefix, op.chat)
    const at = new Date(base + index * 1000).toISOString()
    const push = (record: ChatRecord) => {
      records.push(record)
      if (seen.has(record.id)) return
      seen.add(record.id)
      chat.entries++
      if (!isChangeRecord(record)) chat.messages.push({ ...record, seq: chat.entries })
      else chat.changes.push(record)
    }
    if (!change) {
      const earlier = chat.messages
      if (op.retry < 3 && earlier.length > 0) {
        const { seq: _seq, ...original } = earlier[earlier.length - 1 - (op.back % earlier.length)]!
        push({ ...original, sentAt: at })
        return
      }
      const authorId = UserId.make(`u${op.author}`)
      const clientMsgId = `m${index}`
      push({
        id: messageIdOf(chatId, authorId, clientMsgId),
        chatId,
        authorId,
        clientMsgId,
        body: `body ${index}`,
        sentAt: at
      })
      return
    }
    const last = chat.changes.at(-1)
    if (op.retry === 9 && last !== undefined) {
      push(last)
      return
    }
    if (chat.messages.length === 0) {
      records.push(undefined)
      return
    }
    // One of the chat's two newest messages, so changes meet on the same target often.
    const target = chat.messages[chat.messages.length - 1 - ((op.back >> 2) % Math.min(2, chat.messages.length))]!.seq
    const userId = UserId.make(`u${op.author}`)
    const id = changeIdOf(chatId, userId, `k${index}`)
    const emoji = emojis[(op.back >> 4) % emojis.length]!
    const kind = op.back % 4
    push(
      kind === 0
        ? { type: "message_edited", chatId, id, targetSeq: target, userId, body: `edit ${index}`, editedAt: at }
        : kind === 1
          ? { type: "message_deleted", chatId, id, targetSeq: target, userId, deletedAt: at }
          : { type: "reaction", chatId, id, targetSeq: target, userId, emoji, added: kind === 2 }
    )
  })
  return records
}

/**
 * The model: a chat's distinct records (first occurrences, in log order)
 * applied once, in seq order — the log entries as the store must answer them
 * (messages as they are now), and the reactions history must count.
 */
export const modelOf = (records: ReadonlyArray<ChatRecord>) => {
  const entries: Array<LogEntry> = []
  /** Per message seq, per emoji, per user: present, and the seq of the change that decided it. */
  const reactions = new Map<number, Map<string, Map<string, { present: boolean; seq: number }>>>()
  records.forEach((record, index) => {
    const seq = index + 1
    if (!isChangeRecord(record)) {
      const { sentAt, ...fields } = record
      entries.push(new Message({ ...fields, seq, createdAt: sentAt }))
      return
    }
    const change = { ...record, seq } as Change
    entries.push(change)
    const target = entries[change.targetSeq - 1]
    if (target === undefined || isChange(target)) return
    entries[change.targetSeq - 1] = applyChange(target, change)
    if (change.type !== "reaction") return
    const byEmoji = reactions.get(change.targetSeq) ?? new Map()
    reactions.set(change.targetSeq, byEmoji)
    const byUser = byEmoji.get(change.emoji) ?? new Map()
    byEmoji.set(change.emoji, byUser)
    byUser.set(change.userId, { present: change.added, seq })
  })
  /** History's reactions of message `seq` for `viewer` (undefined when none). */
  const reactionsOf = (seq: number, viewer: string) => {
    const message = entries[seq - 1]
    if (message === undefined || isChange(message) || message.deletedAt !== undefined) return undefined
    const counts = [...(reactions.get(seq) ?? new Map<string, Map<string, { present: boolean; seq: number }>>())]
      .map(([emoji, byUser]) => {
        const present = [...byUser].filter(([, state]) => state.present)
        return {
          emoji,
          count: present.length,
          me: present.some(([userId]) => userId === viewer),
          first: Math.min(...present.map(([, state]) => state.seq))
        }
      })
      .filter((count) => count.count > 0)
      .sort((a, b) => a.first - b.first)
      .map(({ emoji, count, me }) => ({ emoji, count, me }))
    return counts.length === 0 ? undefined : counts
  }
  return { entries, reactionsOf }
}
