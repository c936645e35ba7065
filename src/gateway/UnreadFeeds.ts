/**
 * `unread` on one node (docs/protocol.md "The user's own channel"): per chat,
 * the set of local sessions of its members that watch it, behind one
 * listener on the chat's feed (ChatFeeds: one pub/sub subscription per chat
 * per node, shared with subscribed sessions).
 *
 * It stays off the hot path: the feed's listener only notes the newest seq
 * of the batch and schedules the chat once (setImmediate), so the sessions
 * subscribed to the chat get their messages without waiting for the watchers.
 * The watchers are told later in the same turn of the event loop, with
 * every batch that arrived meanwhile coalesced into one seq.
 */
import { Context, Deferred, Effect, Layer } from "effect"
import type { CacheError } from "../ports/Cache.ts"
import type { ChatId } from "../schema/Domain.ts"
import { ChatFeeds } from "./ChatFeeds.ts"

/** Told the chat's newest seq; it decides whether its session writes `unread`. */
export type Watcher = (seq: number) => void

interface Entry {
  readonly watchers: Set<Watcher>
  readonly ready: Deferred.Deferred<Effect.Effect<void>, CacheError>
  pending: number
  scheduled: boolean
}

export class UnreadFeeds extends Context.Service<
  UnreadFeeds,
  {
    /** Adds a watcher of the chat; answers once the chat's feed is live, with the way to remove it. */
    readonly watch: (chatId: ChatId, watcher: Watcher) => Effect.Effect<Effect.Effect<void>, CacheError>
  }
>()("harmony/gateway/UnreadFeeds") {
  static readonly layer = Layer.effect(
    UnreadFeeds,
    Effect.gen(function* () {
      const feeds = yield* ChatFeeds
      const entries = new Map<ChatId, Entry>()

      const flush = (entry: Entry) => () => {
        entry.scheduled = false
        const seq = entry.pending
        for (const watcher of entry.watchers) watcher(seq)
      }

      const open = (chatId: ChatId, entry: Entry) =>
        feeds
          .listen(chatId, (items) => {
            let seq = entry.pending
            for (const item of items) if (item.seq > seq) seq = item.seq
            if (seq === entry.pending) return
            entry.pending = seq
            if (entry.scheduled) return
            entry.scheduled = true
            setImmediate(flush(entry))
          })
          .pipe(
            Effect.exit,
            Effect.flatMap((exit) => Deferred.done(entry.ready, exit)),
            // Other watchers of the chat wait for this: it finishes whoever asked first.
            Effect.uninterruptible
          )

      const remove = (chatId: ChatId, entry: Entry, watcher: Watcher) =>
        Effect.suspend(() => {
          entry.watchers.delete(watcher)
          if (entry.watchers.size > 0 || entries.get(chatId) !== entry) return Effect.void
          entries.delete(chatId)
          return Deferred.await(entry.ready).pipe(Effect.flatten, Effect.ignore)
        })

      const watch = (chatId: ChatId, watcher: Watcher) =>
        Effect.gen(function* () {
          let entry = entries.get(chatId)
          if (entry === undefined) {
            const created: Entry = {
              watchers: new Set(),
              ready: yield* Deferred.make<Effect.Effect<void>, CacheError>(),
              pending: 0,
              scheduled: false
            }
            entries.set(chatId, created)
            entry = created
            yield* open(chatId, created)
          }
          const joined = entry
          joined.watchers.add(watcher)
          yield* Deferred.await(joined.ready).pipe(
            Effect.tapError(() =>
              Effect.sync(() => {
                joined.watchers.delete(watcher)
                if (entries.get(chatId) === joined) entries.delete(chatId)
              })
            )
          )
          return remove(chatId, joined, watcher)
        })

      return UnreadFeeds.of({ watch })
    })
  )
}
