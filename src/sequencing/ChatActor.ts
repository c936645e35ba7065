/**
 * A ChatActor: one fiber per active chat on the node that owns the chat's
 * partition, with a bounded mailbox of records and a Sequencer for state.
 * On activation it restores the chat's last seq and recent ids from the
 * MessageStore; then, for each batch from its mailbox, it sequences the
 * records, publishes the messages for fanout (never waiting for the store)
 * and hands the new ones to the partition's persistence sink. Idle, with
 * nothing left to persist, it passivates: its memory goes, its state is in
 * the store.
 *
 * When tracing, each record's sequencing is a span (`ChatActor.sequence`)
 * under its receipt from the log, and its fanout publish a child of that.
 */
import { Cause, type Duration, Effect, Metric, Queue, Schedule, type Tracer } from "effect"
import { messagesSequenced } from "../Metrics.ts"
import { SqlClient } from "effect/sql"
import { MessageStore } from "../ports/MessageStore.ts"
import type { ChatId, Message } from "../schema/Domain.ts"
import type { SendRecord } from "../schema/Records.ts"
import type { Fanout } from "../messages/Fanout.ts"
import type { OffsetTracker } from "./OffsetTracker.ts"
import type { PersistenceSink, SinkItem } from "./PersistenceSink.ts"
import type { SyncSpans } from "../Tracing.ts"
import { Sequencer, type SequencerOptions } from "./Sequencer.ts"

export interface Envelope {
  readonly record: SendRecord
  readonly offset: number
  /** The record's receipt from the log, when tracing. */
  readonly span?: Tracer.AnySpan | undefined
}

export interface ActorOptions extends SequencerOptions {
  readonly mailboxSize: number
  /** How long an actor with nothing to do stays active. */
  readonly idleTimeout: Duration.Duration
  /** How many persisted messages activation reads back (the dedupe window plus a partial batch). */
  readonly restoreWindow: number
}

export interface ChatActorHandle {
  readonly chatId: ChatId
  readonly mailbox: Queue.Queue<Envelope, Cause.Done>
  /** Undefined until the actor has restored its state. */
  sequencer: Sequencer | undefined
  /** Messages sequenced but not yet persisted. */
  unpersisted: number
  /** The chat was deleted: its remaining records are dropped, not sequenced. */
  deleted: boolean
}

export interface ActorContext {
  readonly options: ActorOptions
  readonly fanout: Fanout["Service"]
  readonly sink: PersistenceSink
  readonly tracker: OffsetTracker
  readonly partition: number
  /** Per-message spans, when tracing. */
  readonly spans: SyncSpans | undefined
  /** Removes the actor from its registry if it may passivate now (synchronously, so no record slips in between). */
  readonly passivate: (handle: ChatActorHandle) => boolean
}

const restoreRetry = Schedule.min([Schedule.exponential("100 millis"), Schedule.spaced("5 seconds")]).pipe(
  Schedule.jittered
)

const restore = Effect.fn("ChatActor.restore")(function* (chatId: ChatId, options: ActorOptions) {
  const store = yield* MessageStore
  const latest = yield* store.latest(chatId, options.restoreWindow).pipe(
    Effect.tapError((error) => Effect.logWarning(`chat ${chatId}: cannot restore its actor yet, retrying`, error)),
    Effect.retry(restoreRetry),
    Effect.orDie
  )
  return Sequencer.restore(chatId, latest, { ...options, complete: latest.length < options.restoreWindow })
})

/** The actor's life: restore, then process its mailbox until it ends or the actor passivates. */
export const run = Effect.fnUntraced(function* (handle: ChatActorHandle, context: ActorContext) {
  const sequencer = yield* restore(handle.chatId, context.options)
  handle.sequencer = sequencer
  // Records can outlive their chat (sent just before it was deleted, or
  // replayed after): a deleted chat gets no new messages in the store. The
  // same statement brings `chats.last_seq` up to what the store holds, in
  // case the node that persisted the last messages died before recording it.
  const sql = yield* SqlClient.SqlClient
  const exists = yield* sql`
    UPDATE chats SET last_seq = GREATEST(last_seq, ${sequencer.lastSeq}) WHERE id = ${handle.chatId} RETURNING id`.pipe(
    Effect.retry(restoreRetry),
    Effect.orDie
  )
  if (exists.length === 0) handle.deleted = true
  while (true) {
    const batch = yield* Queue.takeBetween(handle.mailbox, 1, context.options.mailboxSize).pipe(
      Effect.timeoutOption(context.options.idleTimeout),
      Effect.catchIf(Cause.isDone, () => Effect.succeed(undefined))
    )
    if (batch === undefined) return
    if (batch._tag === "None") {
      if (context.passivate(handle)) return
      continue
    }
    yield* process(handle, sequencer, batch.value, context)
  }
})

const process = Effect.fnUntraced(function* (
  handle: ChatActorHandle,
  sequencer: Sequencer,
  batch: ReadonlyArray<Envelope>,
  context: ActorContext
) {
  if (handle.deleted) {
    for (const { offset } of batch) context.tracker.complete(offset)
    return
  }
  const spans = context.spans
  const published: Array<Message> = []
  const persist: Array<SinkItem> = []
  /** Traced: the sequencing span of each published message (same index), and every span started. */
  const parents: Array<Tracer.Span | undefined> | undefined = spans === undefined ? undefined : []
  const started: Array<Tracer.Span> = []
  const onPersisted = () => {
    handle.unpersisted--
  }
  for (const { record, offset, span: received } of batch) {
    const span =
      spans === undefined || received === undefined
        ? undefined
        : spans.start("ChatActor.sequence", {
            parent: received,
            attributes: { "harmony.chat.id": record.chatId, "harmony.message.id": record.id }
          })
    if (span !== undefined) started.push(span)
    const outcome = sequencer.sequence(record)
    span?.attribute("harmony.seq", outcome.message?.seq ?? 0)
    if (outcome._tag === "New") {
      published.push(outcome.message)
      parents?.push(span)
      persist.push({ message: outcome.message, offset, onPersisted, span })
      handle.unpersisted++
    } else {
      // Already sequenced (a retried send or a replayed record): publish the
      // earlier copy again — sessions drop seqs they delivered — so a message
      // whose fanout was lost in a crash still reaches live subscribers.
      span?.attribute("harmony.duplicate", true)
      if (outcome.message !== undefined) {
        published.push(outcome.message)
        parents?.push(span)
      }
      context.tracker.complete(offset)
    }
  }
  yield* context.fanout
    .publishMessages(published, parents)
    .pipe(
      Effect.catchCause((cause) =>
        Effect.logWarning(
          `chat ${handle.chatId}: fanout of ${published.length} messages failed; subscribers recover from history`,
          cause
        )
      )
    )
  if (spans !== undefined) for (const span of started) spans.end(span)
  yield* Metric.update(messagesSequenced, persist.length)
  yield* context.sink.offer(persist)
})
