/**
 * The gateway side of fanout: one live feed per chat per node, shared by
 * every local session subscribed to it. Items reach the sessions' listeners
 * synchronously, in order — a delivery is a socket write, not a queue hand-off
 * and a fiber wake-up per subscriber. The feed's PubSub subscription is held
 * while the chat has local listeners and dropped with the last one.
 *
 * When tracing, each message's delivery on this node is a span
 * (`ChatFeeds.deliver`) continuing the trace its envelope carries; the
 * sessions' socket writes are its children (the first `MaxTracedWrites`
 * of them: a big group's fanout would otherwise be a thousand spans).
 */
import { Context, Deferred, Effect, Fiber, FiberSet, Layer, Stream } from "effect"
import type { CacheError } from "../ports/Cache.ts"
import type { ChatId } from "../schema/Domain.ts"
import { observeStage, stampNow } from "../Metrics.ts"
import { parseTraceparent, sampled, type SyncSpans, syncSpans } from "../Tracing.ts"
import { Fanout, type FanoutItem } from "../messages/Fanout.ts"

export type Listener = (items: ReadonlyArray<FanoutItem>) => void

/** Sessions per node whose socket writes of a traced message are spans of their own. */
export const MaxTracedWrites = 32

interface Feed {
  readonly listeners: Set<Listener>
  readonly ready: Deferred.Deferred<void, CacheError>
  fiber: Fiber.Fiber<void, CacheError> | undefined
}

export class ChatFeeds extends Context.Service<
  ChatFeeds,
  {
    /**
     * Adds a listener to the chat's feed; answers once the feed is live (so
     * nothing published after it returns is missed) with the way to remove it.
     */
    readonly listen: (chatId: ChatId, listener: Listener) => Effect.Effect<Effect.Effect<void>, CacheError>
  }
>()("harmony/gateway/ChatFeeds") {
  static readonly layer = Layer.effect(
    ChatFeeds,
    Effect.gen(function* () {
      const fanout = yield* Fanout
      const fibers = yield* FiberSet.make<void, CacheError>()
      const runFork = yield* FiberSet.runtime(fibers)()
      const feeds = new Map<ChatId, Feed>()
      const spans = yield* syncSpans

      const context = yield* Effect.context<never>()
      const dispatch = (feed: Feed, batch: ReadonlyArray<FanoutItem>) => {
        for (const listener of feed.listeners) listener(batch)
        observeDelivered(batch)
      }
      /** The `fanout` and `deliver` stages of each message, once per node: its sockets are all written now. */
      const observeDelivered = (batch: ReadonlyArray<FanoutItem>) => {
        const now = stampNow()
        for (const item of batch) {
          if (item.seq === 0) continue
          observeStage("fanout", item.publishedAt, item.receivedAt ?? now, context)
          observeStage("deliver", item.receivedAt, now, context)
        }
      }
      const dispatchTraced = (spans: SyncSpans, chatId: ChatId, feed: Feed, batch: ReadonlyArray<FanoutItem>) => {
        const started: Array<ReturnType<SyncSpans["start"]>> = []
        const traced = batch.map((item) => {
          const parent = sampled(parseTraceparent(item.traceparent))
          if (parent === undefined) return item
          const span = spans.start("ChatFeeds.deliver", {
            parent,
            kind: "consumer",
            attributes: { "harmony.chat.id": chatId, "harmony.seq": item.seq, "harmony.sessions": feed.listeners.size }
          })
          started.push(span)
          return { ...item, span }
        })
        if (started.length === 0) return dispatch(feed, batch)
        try {
          let index = 0
          for (const listener of feed.listeners) listener(index++ < MaxTracedWrites ? traced : batch)
        } finally {
          for (const span of started) spans.end(span)
        }
        observeDelivered(batch)
      }

      const open = (chatId: ChatId, feed: Feed) =>
        Effect.scoped(
          Effect.gen(function* () {
            const items = yield* fanout.subscribe(chatId)
            yield* Deferred.succeed(feed.ready, undefined)
            yield* items.pipe(
              Stream.runForEachArray((batch) =>
                Effect.sync(() =>
                  spans?.active() ? dispatchTraced(spans, chatId, feed, batch) : dispatch(feed, batch)
                )
              )
            )
          })
        ).pipe(Effect.tapError((error) => Deferred.fail(feed.ready, error)))

      const remove = (chatId: ChatId, feed: Feed, listener: Listener) =>
        Effect.suspend(() => {
          feed.listeners.delete(listener)
          if (feed.listeners.size > 0 || feeds.get(chatId) !== feed) return Effect.void
          feeds.delete(chatId)
          return feed.fiber === undefined ? Effect.void : Fiber.interrupt(feed.fiber)
        })

      const listen = (chatId: ChatId, listener: Listener) =>
        Effect.gen(function* () {
          let feed = feeds.get(chatId)
          if (feed === undefined) {
            const created: Feed = {
              listeners: new Set(),
              ready: yield* Deferred.make<void, CacheError>(),
              fiber: undefined
            }
            feeds.set(chatId, created)
            created.fiber = runFork(open(chatId, created))
            feed = created
          }
          feed.listeners.add(listener)
          const joined = feed
          yield* Deferred.await(joined.ready).pipe(
            Effect.tapError(() =>
              Effect.sync(() => {
                if (feeds.get(chatId) === joined) feeds.delete(chatId)
              })
            )
          )
          return remove(chatId, joined, listener)
        })

      return ChatFeeds.of({ listen })
    })
  )
}
