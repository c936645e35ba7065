/**
 * Properties of the Sequencer, the pure heart of a ChatActor:
 *
 * 1. Uninterrupted: for any sends over a few chats with retries (within the
 *    dedupe window), every chat's seqs are contiguous from 1 in order of the
 *    first occurrence of each message id, a repeated id is a Duplicate that
 *    carries the earlier copy exactly when it is still in the ring, and
 *    `since` answers exactly the ring's messages after `sinceSeq` (or
 *    undefined when the ring does not reach back that far).
 * 2. Replay: restoring from any persisted prefix plus orphans above a gap (a
 *    sink that died mid-batch), then replaying the records from any offset the
 *    dedupe window covers, assigns exactly what an uninterrupted run assigned.
 */
import { assert, describe, it } from "@effect/vitest"
import { Arbitrary } from "effect"
import { Sequencer } from "../../src/sequencing/Sequencer.ts"
import type { LogEntry, Message } from "../../src/schema/Domain.ts"
import type { SendRecord } from "../../src/schema/Records.ts"
import { bool, buildRecords, checkOptions, int, sendOp } from "./generators.ts"

/** The fields of a message (these properties sequence sends only). */
const fields = (entry: LogEntry) => fieldsOfMessage(entry as Message)
const fieldsOfMessage = (message: Message) => ({
  chatId: message.chatId,
  seq: message.seq,
  id: message.id,
  authorId: message.authorId,
  body: message.body,
  clientMsgId: message.clientMsgId,
  createdAt: message.createdAt
})

/** What a message sequenced from `record` at `seq` must be. */
const expectedMessage = (record: SendRecord, seq: number) => ({
  chatId: record.chatId,
  seq,
  id: record.id,
  authorId: record.authorId,
  body: record.body,
  clientMsgId: record.clientMsgId,
  createdAt: record.sentAt
})

/**
 * Checks `since(x)` for every x from 0 to past the end against the chat's true
 * messages 1..n. Strict: the ring holds exactly the newest `ringSize`
 * messages. Lenient (a restored ring may hold fewer): any answer must still be
 * exact, and undefined only below the ring.
 */
const checkSince = (
  sequencer: Sequencer,
  messages: ReadonlyArray<LogEntry>,
  ringSize: number,
  label: string,
  strict = true
) => {
  const last = messages.length
  assert.strictEqual(sequencer.lastSeq, last, `${label}: lastSeq`)
  const oldestInRing = Math.max(1, last - ringSize + 1)
  for (let sinceSeq = 0; sinceSeq <= last + 1; sinceSeq++) {
    const answer = sequencer.since(sinceSeq)
    if (sinceSeq >= last) {
      assert.deepStrictEqual(answer, [], `${label}: since(${sinceSeq}) at the end`)
    } else if (sinceSeq + 1 < oldestInRing || (!strict && answer === undefined)) {
      assert.strictEqual(answer, undefined, `${label}: since(${sinceSeq}) must not reach below the ring`)
    } else {
      assert.isDefined(answer, `${label}: since(${sinceSeq}) is within the ring (oldest ${oldestInRing})`)
      assert.deepStrictEqual(
        answer!.map(fields),
        messages.slice(sinceSeq).map(fields),
        `${label}: since(${sinceSeq}) answers exactly the messages after it`
      )
    }
  }
}

describe("Sequencer", () => {
  it.prop(
    "seqs are contiguous per chat in first-occurrence order; duplicates are recognised; since() is exact",
    {
      ops: Arbitrary.array(sendOp(3, 3), { maxLength: 80 }),
      dedupeWindow: int(1, 12),
      ringSize: int(1, 10)
    },
    ({ ops, dedupeWindow, ringSize }) => {
      const records = buildRecords(ops, { prefix: "chat", window: dedupeWindow })
      const sequencers = new Map<string, Sequencer>()
      const sequenced = new Map<string, Array<LogEntry>>()
      for (const [index, record] of records.entries()) {
        let sequencer = sequencers.get(record.chatId)
        if (sequencer === undefined) {
          sequencer = Sequencer.empty(record.chatId, { dedupeWindow, ringSize })
          sequencers.set(record.chatId, sequencer)
        }
        const messages = sequenced.get(record.chatId) ?? []
        sequenced.set(record.chatId, messages)
        const earlier = messages.find((m) => m.id === record.id)
        const outcome = sequencer.sequence(record)
        if (earlier === undefined) {
          assert.strictEqual(outcome._tag, "New", `record ${index} is the first of its id`)
          assert.deepStrictEqual(fields(outcome.message!), expectedMessage(record, messages.length + 1))
          messages.push(outcome.message!)
        } else {
          assert.strictEqual(outcome._tag, "Duplicate", `record ${index} repeats seq ${earlier.seq}`)
          const inRing = earlier.seq > messages.length - ringSize
          if (inRing) assert.deepStrictEqual(fields(outcome.message!), fields(earlier), `record ${index}: earlier copy`)
          else assert.strictEqual(outcome.message, undefined, `record ${index}: seq ${earlier.seq} left the ring`)
        }
      }
      for (const [chatId, sequencer] of sequencers) {
        checkSince(sequencer, sequenced.get(chatId)!, ringSize, chatId)
      }
    },
    { arbitrary: checkOptions(300, 80) }
  )

  it.prop(
    "restore from a persisted prefix plus orphans above a gap, then replay, assigns what an uninterrupted run did",
    {
      ops: Arbitrary.array(sendOp(1, 3), { maxLength: 60 }),
      dedupeWindow: int(1, 10),
      ringSize: int(1, 10),
      // The largest batch a dying sink can leave half-written.
      batchSize: int(1, 6),
      persistedPercent: int(0, 100),
      orphanMask: Arbitrary.array(bool, { minLength: 6, maxLength: 6 }),
      replayPercent: int(0, 100)
    },
    ({ ops, dedupeWindow, ringSize, batchSize, persistedPercent, orphanMask, replayPercent }) => {
      const options = { dedupeWindow, ringSize }
      const records = buildRecords(ops, { prefix: "chat", window: dedupeWindow })
      if (records.length === 0) return
      const chatId = records[0]!.chatId

      // The uninterrupted run: every record's outcome, and the chat's messages.
      const reference = Sequencer.empty(chatId, options)
      const outcomes = records.map((record) => reference.sequence(record))
      const messages = outcomes.flatMap((o) => (o._tag === "New" ? [o.message] : []))
      const seqOf = new Map(messages.map((m) => [m.id as string, m.seq]))
      const n = messages.length

      // What the store holds after a crash: the contiguous prefix 1..k, and
      // any subset of the batch that was being written above a gap at k + 1
      // (at most batchSize - 1 messages: seqs k + 2 .. k + batchSize).
      const k = Math.floor((persistedPercent * n) / 100)
      const orphans = messages.filter((m) => m.seq >= k + 2 && m.seq <= k + batchSize && orphanMask[m.seq - k - 2])
      const persisted = [...messages.slice(0, k), ...orphans]
      // Activation reads the newest restoreWindow messages, newest first.
      const restoreWindow = dedupeWindow + batchSize
      const latest = [...persisted].sort((a, b) => b.seq - a.seq).slice(0, restoreWindow)
      const restored = Sequencer.restore(chatId, latest, {
        ...options,
        complete: latest.length < restoreWindow
      })
      assert.strictEqual(restored.lastSeq, k, "restore keeps only the contiguous prefix")

      // Replay from the committed offset: at or before the first record not
      // persisted (the first occurrence of seq k + 1), and late enough that
      // every replayed record refers to a message the dedupe window still
      // covers (seq > k - dedupeWindow) — the window's promise.
      const firstUnpersisted = k === n ? records.length : records.findIndex((r) => seqOf.get(r.id) === k + 1)
      let earliest = 0
      for (let p = 0; p < firstUnpersisted; p++) {
        if (seqOf.get(records[p]!.id)! <= k - dedupeWindow) earliest = p + 1
      }
      const start = earliest + Math.floor(((firstUnpersisted - earliest) * replayPercent) / 100)

      for (let p = start; p < records.length; p++) {
        const record = records[p]!
        const outcome = restored.sequence(record)
        const expected = outcomes[p]!
        const seq = seqOf.get(record.id)!
        if (seq <= k) {
          assert.strictEqual(outcome._tag, "Duplicate", `replayed record ${p} (seq ${seq}) was persisted`)
        } else {
          assert.strictEqual(outcome._tag, expected._tag, `replayed record ${p} (seq ${seq})`)
          if (expected._tag === "New") {
            assert.deepStrictEqual(fields(outcome.message!), fields(expected.message), `replayed record ${p}`)
          }
        }
      }
      // The restored ring is as deep as an uninterrupted one whenever the ring
      // is no larger than the part of the restore window the orphans leave to
      // the prefix (production: ring 256, window 1500).
      checkSince(restored, messages, ringSize, "after replay", ringSize <= dedupeWindow + 1)
    },
    { arbitrary: checkOptions(500, 60) }
  )
})
