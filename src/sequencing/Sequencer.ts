/**
 * The heart of a ChatActor, as pure state: it gives each new message of a
 * chat the next seq, recognises a message it has already sequenced (a
 * retried send, or a record replayed after a crash or a rebalance), and keeps
 * a ring of recent messages for reconnecting clients.
 *
 * Sequencing is deterministic: the same records in the same order, from the
 * same restored state, get the same seqs. That is what makes replay safe.
 */
import { Message } from "../schema/Domain.ts"
import type { SendRecord } from "../schema/Records.ts"

export interface SequencerOptions {
  /** How many recent message ids are remembered for duplicate detection. */
  readonly dedupeWindow: number
  /** How many recent messages are kept for recovery. */
  readonly ringSize: number
}

export type Outcome =
  | { readonly _tag: "New"; readonly message: Message }
  /** Already sequenced; `message` is the earlier copy when it is still in the ring. */
  | { readonly _tag: "Duplicate"; readonly message: Message | undefined }

export class Sequencer {
  private lastSeqValue: number
  private readonly ids = new Set<string>()
  private readonly idOrder: Array<string> = []
  private readonly ring: Array<Message> = []

  readonly chatId: string
  private readonly options: SequencerOptions

  private constructor(chatId: string, options: SequencerOptions, restored: ReadonlyArray<Message>) {
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
    latest: ReadonlyArray<Message>,
    options: SequencerOptions & { readonly complete: boolean }
  ): Sequencer {
    const ascending = [...latest].sort((a, b) => a.seq - b.seq)
    const prefix: Array<Message> = []
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

  sequence(record: SendRecord): Outcome {
    if (this.ids.has(record.id)) {
      return { _tag: "Duplicate", message: this.ring.find((m) => m.id === record.id) }
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

  /** Ring messages with seq > sinceSeq, oldest first; undefined when the ring no longer reaches back that far. */
  since(sinceSeq: number): ReadonlyArray<Message> | undefined {
    if (sinceSeq >= this.lastSeqValue) return []
    const oldest = this.ring[0]
    if (oldest === undefined || oldest.seq > sinceSeq + 1) return undefined
    return this.ring.filter((m) => m.seq > sinceSeq)
  }

  private remember(message: Message) {
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
