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
 * The actor's state is its own: what reaches it from outside (records, the
 * chat's deletion) arrives through its mailbox, in order.
 *
 * When tracing, each record's sequencing is a span (`ChatActor.sequence`)
 * under its receipt from the log, and its fanout publish a child of that.
 */
import { Cause, Clock, type Context, Duration, Effect, Metric, Queue, type Tracer } from "effect"
import { messagesSequenced, observeStage, stampNow } from "../Metrics.ts"
import { MessageStore } from "../ports/MessageStore.ts"
import type { ChatId, LogEntry } from "../schema/Domain.ts"
import type { ChatRecord } from "../schema/Records.ts"
import type { Fanout } from "../messages/Fanout.ts"
import type { OffsetTracker } from "./OffsetTracker.ts"
import type { PersistenceSink, SinkItem } from "./PersistenceSink.ts"
import type { SyncSpans } from "../Tracing.ts"
import { Sequencer, type SequencerOptions } from "./Sequencer.ts"
import { retryForever } from "../Retry.ts"
import { recordLastSeq } from "../state/Chats.ts"

export interface Envelope {
  readonly _tag: "Record"
  readonly record: ChatRecord
  readonly offset: number
  /** When its partition runner got it from the log (`stampNow`). */
  readonly receivedAt: number
  /** The record's receipt from the log, when tracing. */
  readonly span?: Tracer.AnySpan | undefined
}

/** The chat was deleted: the records still to come are dropped, not sequenced. */
export interface Deleted {
  readonly _tag: "Deleted"
}

/** Nothing came for a while (its host's idle sweep): the actor passivates if it is still idle. */
export interface Idle {
  readonly _tag: "Idle"
}

export type Mail = Envelope | Deleted | Idle

export interface ActorOptions extends SequencerOptions {
  readonly mailboxSize: number
  /** How long an actor with nothing to do stays active. */
  readonly idleTimeout: Duration.Duration
  /** How many persisted messages activation reads back (the dedupe window plus a partial batch). */
  readonly restoreWindow: number
}

/**
 * What the actor's host and the node see of it. Only the actor writes these
 * fields; its supervisor reads them to restart it (see ChatActors.ts).
 */
export interface ChatActorHandle {
  readonly chatId: ChatId
  readonly mailbox: Queue.Queue<Mail, Cause.Done>
  /** Undefined until the actor has restored its state. */
  sequencer: Sequencer | undefined
  /** The chat's epoch (MessageStore.epoch), known once the actor has restored. */
  epoch: string | undefined
  /** Messages sequenced but not yet persisted. */
  unpersisted: number
  deleted: boolean
  /** When the actor last took a record or signal from its mailbox (the Clock's milliseconds). */
  lastActive: number
  /** An `Idle` mail is waiting in the mailbox. */
  idleQueued: boolean
  /** The batch being processed: if the actor dies on it, its successor processes it again. */
  inFlight: ReadonlyArray<Mail>
}

export interface ActorContext {
  readonly options: ActorOptions
  readonly fanout: Fanout["Service"]
  readonly sink: PersistenceSink
  readonly tracker: OffsetTracker
  readonly partition: number
  /** Per-message spans, when tracing. */
  readonly spans: SyncSpans | undefined
  /** Where the stage metrics are updated. */
  readonly metrics: Context.Context<never>
  /** Removes the actor from its registry if it may passivate now (synchronously, so no record slips in between). */
  readonly passivate: (handle: ChatActorHandle) => boolean
}

const restore = Effect.fn("ChatActor.restore")(function* (chatId: ChatId, options: ActorOptions) {
  const store = yield* MessageStore
  const retried = <A, E>(read: Effect.Effect<A, E>) =>
    read.pipe(
      Effect.tapError((error) => Effect.logWarning(`chat ${chatId}: cannot restore its actor yet, retrying`, error)),
      Effect.retry(retryForever),
      Effect.orDie
    )
  // The epoch first: it is created (when missing) before this actor persists anything, so it goes with the history.
  const epoch = yield* retried(store.epoch(chatId))
  const latest = yield* retried(store.latest(chatId, options.restoreWindow))
  return {
    epoch,
    sequencer: Sequencer.restore(chatId, latest, { ...options, complete: latest.length < options.restoreWindow })
  }
})

/**
 * The actor's life: restore, process the batch a dead predecessor left (if
 * any), then its mailbox until it ends or the actor passivates.
 */
export const run = Effect.fnUntraced(function* (handle: ChatActorHandle, context: ActorContext) {
  const { epoch, sequencer } = yield* restore(handle.chatId, context.options)
  handle.epoch = epoch
  handle.sequencer = sequencer
  // Records can outlive their chat (sent just before it was deleted, or
  // replayed after): a deleted chat gets no new messages in the store. The
  // same statement brings `chats.last_seq` up to what the store holds, in
  // case the node that persisted the last messages died before recording it.
  const exists = yield* recordLastSeq(handle.chatId, sequencer.lastSeq).pipe(Effect.retry(retryForever), Effect.orDie)
  if (!exists) handle.deleted = true
  if (handle.inFlight.length > 0) yield* process(handle, sequencer, handle.inFlight, context)
  const idleMillis = Duration.toMillis(context.options.idleTimeout)
  // No timer per take: the host's sweep mails an idle actor `Idle` (ChatActors.ts).
  while (true) {
    const batch = yield* Queue.takeBetween(handle.mailbox, 1, context.options.mailboxSize).pipe(
      Effect.catchIf(Cause.isDone, () => Effect.succeed(undefined))
    )
    if (batch === undefined) return
    const now = yield* Clock.currentTimeMillis
    handle.idleQueued = false
    if (batch.every((mail) => mail._tag === "Idle")) {
      if (now - handle.lastActive >= idleMillis && context.passivate(handle)) return
      continue
    }
    handle.lastActive = now
    yield* process(handle, sequencer, batch, context)
  }
})

const process = Effect.fnUntraced(function* (
  handle: ChatActorHandle,
  sequencer: Sequencer,
  mail: ReadonlyArray<Mail>,
  context: ActorContext
) {
  handle.inFlight = mail
  const batch: Array<Envelope> = []
  for (const item of mail) {
    if (item._tag === "Idle") continue
    if (item._tag === "Deleted") handle.deleted = true
    else if (handle.deleted) context.tracker.complete(item.offset)
    else batch.push(item)
  }
  yield* sequence(handle, sequencer, batch, context)
  handle.inFlight = []
})

const sequence = Effect.fnUntraced(function* (
  handle: ChatActorHandle,
  sequencer: Sequencer,
  batch: ReadonlyArray<Envelope>,
  context: ActorContext
) {
  if (batch.length === 0) return
  const spans = context.spans
  const published: Array<LogEntry> = []
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
      persist.push({ message: outcome.message, offset, onPersisted, span, sequencedAt: 0 })
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
  const sequencedAt = stampNow()
  for (const envelope of batch) observeStage("route", envelope.receivedAt, sequencedAt, context.metrics)
  for (const item of persist) item.sequencedAt = sequencedAt
  yield* context.fanout.publishMessages(published, parents, sequencedAt).pipe(
    // A failed publish (pub/sub unreachable) is left to history recovery; a
    // defect kills the actor, and its successor publishes the batch again.
    Effect.catch((error) =>
      Effect.logWarning(
        `chat ${handle.chatId}: fanout of ${published.length} messages failed; subscribers recover from history`,
        error
      )
    )
  )
  if (spans !== undefined) for (const span of started) spans.end(span)
  yield* Metric.update(messagesSequenced, persist.length)
  // Counted as they are handed over: what was sequenced but never reached
  // the sink (the actor died first) is sequenced again by its successor.
  handle.unpersisted += persist.length
  yield* context.sink.offer(persist)
})
