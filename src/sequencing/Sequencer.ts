/**
 * The heart of a ChatActor, as pure state: it gives each new entry of a
 * chat's log (a message, or a change to one: edit, delete, reaction) the next
 * seq, recognises one it has already sequenced (a retried send or change, or
 * a record replayed after a crash or a rebalance), and keeps a ring of recent
 * entries for reconnecting clients — its messages as they are now (a change
 * sequenced here is applied to its target in the ring too).
 *
 * Sequencing is deterministic: the same records in the same order, from the
 * same restored state, get the same seqs. That is what makes replay safe.
 */
import { applyChange, type Change, isChange, type LogEntry, Message } from "../schema/Domain.ts"
import { type ChatRecord, isChangeRecord } from "../schema/Records.ts"

export interface SequencerOptions {
  /** How many recent message ids are remembered for duplicate detection. */
  readonly dedupeWindow: number
  /** How many recent messages are kept for recovery. */
  readonly ringSize: number
}

export type Outcome =
  | { readonly _tag: "New"; readonly message: LogEntry }
  /** Already sequenced; `message` is the earlier copy when it is still in the ring. */
  | { readonly _tag: "Duplicate"; readonly message: LogEntry | undefined }

export class Sequencer {
  private lastSeqValue: number
  private readonly ids = new Set<string>()
  private readonly idOrder: Array<string> = []
  private readonly ring: Array<LogEntry> = []

  readonly chatId: string
  private readonly options: SequencerOptions

  private constructor(chatId: string, options: SequencerOptions, restored: ReadonlyArray<LogEntry>) {
    this.chatId = chatId
    this.options = options
    this.lastSeqValue = 0
    for (const message of restored) this.remember(message)
  }

  /**
   * Restores from the newest persisted messages of the chat (any order).
   * Only their contiguous prefix counts: a message above a gap was written
   * by a sink that died mid-batch and will be sequenced again, identically,
   * when its record is replayed. `complete` says whether `latest` reaches
   * back to seq 1 (fewer messages than were asked for).
   */
  static restore(
    chatId: string,
    latest: ReadonlyArray<LogEntry>,
    options: SequencerOptions & { readonly complete: boolean }
  ): Sequencer {
    const ascending = [...latest].sort((a, b) => a.seq - b.seq)
    const prefix: Array<LogEntry> = []
    let expected = options.complete ? 1 : (ascending[0]?.seq ?? 1)
    for (const message of ascending) {
      if (message.seq !== expected) break
      prefix.push(message)
      expected++
    }
    return new Sequencer(chatId, options, prefix)
  }

  static empty(chatId: string, options: SequencerOptions): Sequencer {
    return new Sequencer(chatId, options, [])
  }

  get lastSeq(): number {
    return this.lastSeqValue
  }

  sequence(record: ChatRecord): Outcome {
    if (this.ids.has(record.id)) {
      return { _tag: "Duplicate", message: this.ring.find((m) => m.id === record.id) }
    }
    if (isChangeRecord(record)) {
      const change = { ...record, seq: this.lastSeqValue + 1 } as Change
      this.applyToRing(change)
      this.remember(change)
      return { _tag: "New", message: change }
    }
    const message = new Message({
      chatId: record.chatId,
      seq: this.lastSeqValue + 1,
      id: record.id,
      authorId: record.authorId,
      body: record.body,
      clientMsgId: record.clientMsgId,
      createdAt: record.sentAt
    })
    this.remember(message)
    return { _tag: "New", message }
  }

  /** Ring entries with seq > sinceSeq, oldest first; undefined when the ring no longer reaches back that far. */
  since(sinceSeq: number): ReadonlyArray<LogEntry> | undefined {
    if (sinceSeq >= this.lastSeqValue) return []
    const oldest = this.ring[0]
    if (oldest === undefined || oldest.seq > sinceSeq + 1) return undefined
    return this.ring.filter((m) => m.seq > sinceSeq)
  }

  /** The ring's copy of a change's target becomes what the change makes of it. */
  private applyToRing(change: Change) {
    if (change.type === "reaction") return
    const index = this.ring.findIndex((entry) => entry.seq === change.targetSeq)
    const target = this.ring[index]
    if (target !== undefined && !isChange(target)) this.ring[index] = applyChange(target, change)
  }

  private remember(message: LogEntry) {
    this.lastSeqValue = message.seq
    this.ids.add(message.id)
    this.idOrder.push(message.id)
    if (this.idOrder.length > this.options.dedupeWindow) {
      const forgotten = this.idOrder.shift()
      if (forgotten !== undefined) this.ids.delete(forgotten)
    }
    this.ring.push(message)
    if (this.ring.length > this.options.ringSize) this.ring.shift()
  }
}
