/**
 * Actors by chat: each partition runner has a registry that activates a
 * chat's actor on its first record, routes records to it, and drains every
 * actor when the partition is revoked. `LocalActors` is the node-wide view
 * that reconnecting clients use to recover from an actor's ring, and what
 * the node's actor gauges (active actors, mailbox depth, unpersisted
 * backlog) are read from when metrics are collected.
 */
import { type Cause, Context, Effect, FiberSet, Layer, Queue, Schema, Stream } from "effect"
import { actorMailboxDepth, actorsActive, registerGauge, sinkBacklog } from "../Metrics.ts"
import type { Scope, Tracer } from "effect"
import type { SqlClient } from "effect/sql"
import type { MessageStore } from "../ports/MessageStore.ts"
import { PubSub } from "../ports/PubSub.ts"
import { ControlChannel } from "../relay/EventConsumers.ts"
import type { ChatId, Message } from "../schema/Domain.ts"
import type { SendRecord } from "../schema/Records.ts"
import * as ChatActor from "./ChatActor.ts"

export class LocalActors extends Context.Service<
  LocalActors,
  {
    readonly register: (handle: ChatActor.ChatActorHandle) => void
    readonly unregister: (handle: ChatActor.ChatActorHandle) => void
    /** Messages with seq > sinceSeq from the chat's actor ring, if the actor is active here and reaches back that far. */
    readonly since: (chatId: ChatId, sinceSeq: number) => ReadonlyArray<Message> | undefined
    /** The chat's last seq as its local actor knows it. */
    readonly lastSeq: (chatId: ChatId) => number | undefined
    readonly active: () => number
  }
>()("harmony/sequencing/LocalActors") {
  static readonly layer = Layer.effect(
    LocalActors,
    Effect.gen(function* () {
      const actors = new Map<ChatId, ChatActor.ChatActorHandle>()
      yield* registerGauges(actors)
      // A deleted chat's actor drops what is left in its mailbox.
      const pubsub = yield* PubSub
      const control = yield* pubsub.subscribe(ControlChannel)
      yield* control.pipe(
        Stream.map((payload) => decodeControl(payload)),
        Stream.runForEach((signal) =>
          Effect.sync(() => {
            if (signal._tag === "Some") {
              const handle = actors.get(signal.value.chatId as ChatId)
              if (handle !== undefined) handle.deleted = true
            }
          })
        ),
        Effect.forkScoped
      )
      return LocalActors.of({
        register: (handle) => {
          actors.set(handle.chatId, handle)
        },
        unregister: (handle) => {
          if (actors.get(handle.chatId) === handle) actors.delete(handle.chatId)
        },
        since: (chatId, sinceSeq) => actors.get(chatId)?.sequencer?.since(sinceSeq),
        lastSeq: (chatId) => actors.get(chatId)?.sequencer?.lastSeq,
        active: () => actors.size
      })
    })
  )
}

/** The node's actor gauges, computed from the active actors when metrics are collected. */
const registerGauges = (actors: ReadonlyMap<ChatId, ChatActor.ChatActorHandle>) =>
  Effect.all([
    registerGauge(actorsActive, () => actors.size),
    registerGauge(actorMailboxDepth, () => {
      let depth = 0
      for (const handle of actors.values()) depth += Queue.sizeUnsafe(handle.mailbox)
      return depth
    }),
    registerGauge(sinkBacklog, () => {
      let backlog = 0
      for (const handle of actors.values()) backlog += handle.unpersisted
      return backlog
    })
  ])

const decodeControl = Schema.decodeUnknownOption(
  Schema.fromJsonString(Schema.Struct({ type: Schema.Literal("chat_deleted"), chatId: Schema.String }))
)

export interface ActorRegistry {
  /** Routes a record to its chat's actor, activating it; waits while the mailbox is full. `span`: its receipt, when tracing. */
  readonly route: (record: SendRecord, offset: number, span?: Tracer.AnySpan) => Effect.Effect<void>
  /** Ends every mailbox and waits for the actors to process what they hold. */
  readonly drain: Effect.Effect<void>
  readonly size: () => number
}

export const make = Effect.fnUntraced(function* (
  context: Omit<ChatActor.ActorContext, "passivate">
): Effect.fn.Return<ActorRegistry, never, Scope.Scope | MessageStore | SqlClient.SqlClient | LocalActors> {
  const local = yield* LocalActors
  const fibers = yield* FiberSet.make<void>()
  const actors = new Map<ChatId, ChatActor.ChatActorHandle>()
  const runFork = yield* FiberSet.runtime(fibers)<MessageStore | SqlClient.SqlClient>()

  const passivate = (handle: ChatActor.ChatActorHandle) => {
    // Ending the mailbox makes any later offer to it fail, so a record routed
    // at the same moment goes to a fresh actor — which restores from the store,
    // where everything of this one already is.
    if (handle.unpersisted > 0 || Queue.sizeUnsafe(handle.mailbox) > 0) return false
    Queue.endUnsafe(handle.mailbox)
    if (actors.get(handle.chatId) === handle) actors.delete(handle.chatId)
    local.unregister(handle)
    return true
  }
  const actorContext: ChatActor.ActorContext = { ...context, passivate }

  const activate = Effect.fnUntraced(function* (chatId: ChatId) {
    const handle: ChatActor.ChatActorHandle = {
      chatId,
      mailbox: yield* Queue.bounded<ChatActor.Envelope, Cause.Done>(context.options.mailboxSize),
      sequencer: undefined,
      unpersisted: 0,
      deleted: false
    }
    actors.set(chatId, handle)
    local.register(handle)
    runFork(
      ChatActor.run(handle, actorContext).pipe(
        Effect.ensuring(
          Effect.sync(() => {
            if (actors.get(chatId) === handle) actors.delete(chatId)
            local.unregister(handle)
          })
        )
      )
    )
    return handle
  })

  const route = Effect.fnUntraced(function* (record: SendRecord, offset: number, span?: Tracer.AnySpan) {
    const envelope: ChatActor.Envelope = { record, offset, span }
    const current = actors.get(record.chatId)
    if (current !== undefined && (yield* Queue.offer(current.mailbox, envelope))) return
    // No actor, or it passivated just now: a fresh one takes the record.
    const handle = yield* activate(record.chatId)
    yield* Queue.offer(handle.mailbox, envelope)
  })

  return {
    route,
    drain: Effect.suspend(() => {
      for (const handle of actors.values()) Queue.endUnsafe(handle.mailbox)
      return FiberSet.awaitEmpty(fibers)
    }),
    size: () => actors.size
  }
})
