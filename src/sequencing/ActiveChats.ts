/**
 * The chat actors active on this node, across the partitions it owns: what
 * recovery reads (their rings: `RecentMessages`), what the node's actor
 * gauges are computed from, and where a deleted chat's signal reaches its
 * actor.
 */
import { Context, Effect, Layer, Queue, Stream } from "effect"
import type { Scope } from "effect"
import { RecentMessages } from "../messages/RecentMessages.ts"
import { actorMailboxDepth, actorsActive, registerGauge, sinkBacklog } from "../Metrics.ts"
import type { CacheError } from "../ports/Cache.ts"
import { PubSub } from "../ports/PubSub.ts"
import { ControlChannel, decodeControlSignal } from "../schema/Control.ts"
import type { ChatId } from "../schema/Domain.ts"
import type { ChatActors } from "./ChatActors.ts"

export class ActiveChats extends Context.Service<
  ActiveChats,
  {
    /** Adds a partition's actors for the lifetime of the scope. */
    readonly add: (actors: ChatActors) => Effect.Effect<void, never, Scope.Scope>
  }
>()("harmony/sequencing/ActiveChats") {
  static readonly layer: Layer.Layer<ActiveChats | RecentMessages, CacheError, PubSub> = Layer.effectContext(
    Effect.gen(function* () {
      const partitions = new Set<ChatActors>()
      const find = (chatId: ChatId) => {
        for (const actors of partitions) {
          const handle = actors.get(chatId)
          if (handle !== undefined) return handle
        }
        return undefined
      }
      const sum = (f: (actors: ChatActors) => number) => () => {
        let total = 0
        for (const actors of partitions) total += f(actors)
        return total
      }
      yield* Effect.all([
        registerGauge(
          actorsActive,
          sum((actors) => actors.size())
        ),
        registerGauge(
          actorMailboxDepth,
          sum((actors) => {
            let depth = 0
            for (const handle of actors.handles()) depth += Queue.sizeUnsafe(handle.mailbox)
            return depth
          })
        ),
        registerGauge(
          sinkBacklog,
          sum((actors) => {
            let backlog = 0
            for (const handle of actors.handles()) backlog += handle.unpersisted
            return backlog
          })
        )
      ])

      // A deleted chat's actor drops what is left of it.
      const control = yield* (yield* PubSub).subscribe(ControlChannel)
      yield* control.pipe(
        Stream.map((payload) => decodeControlSignal(payload)),
        Stream.runForEach((signal) => {
          if (signal._tag === "None" || signal.value.type !== "chat_deleted") return Effect.void
          const { chatId } = signal.value
          return Effect.forEach(partitions, (actors) => actors.deleted(chatId), { discard: true })
        }),
        Effect.forkScoped
      )

      return Context.make(
        ActiveChats,
        ActiveChats.of({
          add: (actors) =>
            Effect.acquireRelease(
              Effect.sync(() => partitions.add(actors)),
              () => Effect.sync(() => partitions.delete(actors))
            )
        })
      ).pipe(
        Context.add(
          RecentMessages,
          RecentMessages.of({
            since: (chatId, sinceSeq) => find(chatId)?.sequencer?.since(sinceSeq),
            lastSeq: (chatId) => find(chatId)?.sequencer?.lastSeq,
            epoch: (chatId) => find(chatId)?.epoch
          })
        )
      )
    })
  )
}
