/**
 * The chat actors of one partition: the first record of a chat activates
 * its actor, later records are routed to its mailbox, and a revoked
 * partition drains every actor. Each actor is one fiber of a `FiberMap`
 * keyed by chat, under a supervisor: an actor that dies by a defect is
 * logged, counted (`harmony_actor_restarts_total`) and restarted from the
 * store once what it handed to the sink is persisted, with the batch it died
 * on and its mailbox intact — so its records are neither lost nor doubled
 * and the partition keeps committing.
 */
import { Cause, Clock, Duration, Effect, FiberMap, Metric, Queue, Schedule } from "effect"
import type { Scope, Tracer } from "effect"
import type { SqlClient } from "effect/sql"
import { actorRestarts } from "../Metrics.ts"
import type { MessageStore } from "../ports/MessageStore.ts"
import type { ChatId } from "../schema/Domain.ts"
import type { ChatRecord } from "../schema/Records.ts"
import { backoff } from "../Retry.ts"
import { ActiveChats } from "./ActiveChats.ts"
import * as ChatActor from "./ChatActor.ts"

export interface ChatActors {
  /**
   * Routes a record to its chat's actor, activating it; waits while the mailbox is full.
   * `receivedAt`: when the runner got it (`stampNow`); `span`: its receipt, when tracing.
   */
  readonly route: (record: ChatRecord, offset: number, receivedAt: number, span?: Tracer.AnySpan) => Effect.Effect<void>
  /**
   * Hands a record to its chat's active actor at once, when its mailbox has
   * room; answers false otherwise (then `route` it).
   */
  readonly routeNow: (record: ChatRecord, offset: number, receivedAt: number) => boolean
  /** Tells the chat's actor, if active, that its chat was deleted. */
  readonly deleted: (chatId: ChatId) => Effect.Effect<void>
  /** Ends every mailbox and waits for the actors to process what they hold. */
  readonly drain: Effect.Effect<void>
  readonly get: (chatId: ChatId) => ChatActor.ChatActorHandle | undefined
  readonly handles: () => Iterable<ChatActor.ChatActorHandle>
  readonly size: () => number
}

const idle: ChatActor.Idle = { _tag: "Idle" }

/** A dying actor is restarted after a pause that grows while it keeps dying. */
const restartDelay = backoff("50 millis", "5 seconds")
const poisonLimit = 3

export const make = Effect.fnUntraced(function* (
  context: Omit<ChatActor.ActorContext, "passivate">
): Effect.fn.Return<ChatActors, never, Scope.Scope | MessageStore | SqlClient.SqlClient | ActiveChats> {
  const scope = yield* Effect.scope
  const fibers = yield* FiberMap.make<ChatId, void, never>()
  const run = yield* FiberMap.runtime(fibers)<MessageStore | SqlClient.SqlClient>()
  const handles = new Map<ChatId, ChatActor.ChatActorHandle>()

  const passivate = (handle: ChatActor.ChatActorHandle) => {
    // Ending the mailbox makes any later offer to it fail, so a record routed
    // at the same moment goes to a fresh actor — which restores from the store,
    // where everything of this one already is.
    if (handle.unpersisted > 0 || Queue.sizeUnsafe(handle.mailbox) > 0) return false
    Queue.endUnsafe(handle.mailbox)
    if (handles.get(handle.chatId) === handle) handles.delete(handle.chatId)
    return true
  }
  const actorContext: ChatActor.ActorContext = { ...context, passivate }

  /** Waits until the sink has persisted everything the actor handed it. */
  const persisted = (handle: ChatActor.ChatActorHandle) =>
    Effect.void.pipe(Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: () => handle.unpersisted === 0 }))

  /**
   * A batch that keeps killing its actor would hold the partition's commit
   * back for good: after `poisonLimit` deaths on the same batch its records
   * are skipped, loudly.
   */
  const died = (handle: ChatActor.ChatActorHandle, deaths: { batch: ReadonlyArray<ChatActor.Mail>; count: number }) =>
    Effect.gen(function* () {
      if (handle.inFlight.length === 0) return // it died restoring: that is retried as long as it takes
      deaths.count = deaths.batch === handle.inFlight ? deaths.count + 1 : 1
      deaths.batch = handle.inFlight
      if (deaths.count < poisonLimit) return
      const offsets: Array<number> = []
      for (const mail of handle.inFlight) if (mail._tag === "Record") offsets.push(mail.offset)
      yield* Effect.logError(
        `chat ${handle.chatId}: skipping the records at offsets ${offsets.join(", ")}: they killed its actor ${deaths.count} times`
      )
      for (const offset of offsets) context.tracker.complete(offset)
      handle.inFlight = []
    })

  const supervised = (handle: ChatActor.ChatActorHandle) => {
    const deaths = { batch: handle.inFlight, count: 0 }
    return ChatActor.run(handle, actorContext).pipe(
      Effect.catchCause((cause) =>
        Cause.hasInterruptsOnly(cause)
          ? Effect.failCause(cause)
          : Effect.logError(`chat ${handle.chatId}: its actor died; restarting it from the store`, cause).pipe(
              Effect.andThen(Metric.update(actorRestarts, 1)),
              Effect.andThen(persisted(handle)),
              Effect.andThen(died(handle, deaths)),
              Effect.andThen(Effect.fail(cause))
            )
      ),
      Effect.retry(restartDelay),
      // The schedule never ends: a dying actor is restarted, never given up on.
      Effect.orDie,
      Effect.ensuring(
        Effect.sync(() => {
          if (handles.get(handle.chatId) === handle) handles.delete(handle.chatId)
        })
      )
    )
  }

  const activate = Effect.fnUntraced(function* (chatId: ChatId) {
    const handle: ChatActor.ChatActorHandle = {
      chatId,
      mailbox: yield* Queue.bounded<ChatActor.Mail, Cause.Done>(context.options.mailboxSize),
      sequencer: undefined,
      epoch: undefined,
      unpersisted: 0,
      deleted: false,
      lastActive: yield* Clock.currentTimeMillis,
      idleQueued: false,
      inFlight: []
    }
    handles.set(chatId, handle)
    // A passivated predecessor may still be finishing: it has nothing left to do.
    run(chatId, supervised(handle))
    return handle
  })

  const route = Effect.fnUntraced(function* (
    record: ChatRecord,
    offset: number,
    receivedAt: number,
    span?: Tracer.AnySpan
  ) {
    const envelope: ChatActor.Envelope = { _tag: "Record", record, offset, receivedAt, span }
    const current = handles.get(record.chatId)
    if (current !== undefined && (yield* Queue.offer(current.mailbox, envelope))) return
    // No actor, or it passivated just now: a fresh one takes the record.
    const handle = yield* activate(record.chatId)
    yield* Queue.offer(handle.mailbox, envelope)
  })

  const routeNow = (record: ChatRecord, offset: number, receivedAt: number) => {
    const current = handles.get(record.chatId)
    return current !== undefined && Queue.offerUnsafe(current.mailbox, { _tag: "Record", record, offset, receivedAt })
  }

  const actors: ChatActors = {
    route,
    routeNow,
    deleted: (chatId) => {
      const handle = handles.get(chatId)
      // Forked: a full mailbox must not hold up the signals of other chats.
      return handle === undefined
        ? Effect.void
        : Queue.offer(handle.mailbox, { _tag: "Deleted" }).pipe(Effect.forkIn(scope), Effect.asVoid)
    },
    drain: Effect.suspend(() => {
      for (const handle of handles.values()) Queue.endUnsafe(handle.mailbox)
      return FiberMap.awaitEmpty(fibers)
    }),
    get: (chatId) => handles.get(chatId),
    handles: () => handles.values(),
    size: () => handles.size
  }
  // One sweep for the partition's actors instead of a timer per mailbox take:
  // an actor idle for its timeout is mailed `Idle`, and decides itself.
  const idleMillis = Duration.toMillis(context.options.idleTimeout)
  const sweep = Effect.flatMap(Clock.currentTimeMillis, (now) =>
    Effect.sync(() => {
      for (const handle of handles.values()) {
        if (handle.idleQueued || now - handle.lastActive < idleMillis) continue
        if (Queue.sizeUnsafe(handle.mailbox) === 0) handle.idleQueued = Queue.offerUnsafe(handle.mailbox, idle)
      }
    })
  )
  yield* sweep.pipe(Effect.repeat(Schedule.spaced(Duration.millis(Math.max(1, idleMillis / 2)))), Effect.forkIn(scope))
  yield* (yield* ActiveChats).add(actors)
  return actors
})
