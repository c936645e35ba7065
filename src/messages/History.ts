/**
 * The read side of messages: history pages over HTTP, and recovery for a
 * client that resubscribes with `sinceSeq` — from the chat's actor ring when
 * the actor is on this node, else from the MessageStore, which may trail the
 * live stream by the sink's latency (the gateway waits for it to catch up).
 */
import { Clock, Context, Duration, Effect, Layer } from "effect"
import { RecentMessages } from "./RecentMessages.ts"
import { MessageStore, type MessageStoreError } from "../ports/MessageStore.ts"
import type { ChatId, LogEntry, Message, UserId } from "../schema/Domain.ts"
import { type NotFound, Unavailable } from "../schema/Errors.ts"
import { Membership } from "../state/Membership.ts"
import { memberRole } from "./ChatRules.ts"

export interface PageRequest {
  readonly before?: number | undefined
  readonly after?: number | undefined
  readonly limit: number
}

export interface Page {
  readonly messages: ReadonlyArray<Message>
  readonly nextBefore?: number | null
  readonly nextAfter?: number | null
}

const storeUnavailable = (error: MessageStoreError) =>
  Effect.logWarning("message store unavailable", error).pipe(
    Effect.andThen(Effect.fail(new Unavailable({ message: "message history is unavailable, try again" })))
  )

/** How long a read past the chat's known last seq waits for the store before it is clamped. */
const ClampWaitMillis = 2_000

export class History extends Context.Service<
  History,
  {
    readonly page: (
      callerId: UserId,
      chatId: ChatId,
      request: PageRequest
    ) => Effect.Effect<Page, NotFound | Unavailable>
    /**
     * Log entries (messages and changes) with seq in (sinceSeq, untilSeq]
     * (untilSeq absent: all known), oldest first: from the local actor's
     * ring, else the store.
     */
    readonly since: (
      chatId: ChatId,
      sinceSeq: number,
      untilSeq?: number
    ) => Effect.Effect<ReadonlyArray<LogEntry>, MessageStoreError>
    /** The chat's newest seq as far as this node can tell. */
    readonly lastSeq: (chatId: ChatId) => Effect.Effect<number, MessageStoreError>
    /**
     * `seq`, or the chat's newest seq when `seq` is past it, so a read
     * position never runs ahead of the chat. A seq just delivered live may
     * not be in the store yet: this waits (up to 2 s) for the store to catch
     * up before clamping.
     */
    readonly clampToLastSeq: (chatId: ChatId, seq: number) => Effect.Effect<number>
    /** The chat's epoch: its local actor's, else the store's. */
    readonly epoch: (chatId: ChatId) => Effect.Effect<string, MessageStoreError>
  }
>()("harmony/messages/History") {
  static readonly layer = Layer.effect(
    History,
    Effect.gen(function* () {
      const store = yield* MessageStore
      const membership = yield* Membership
      const recent = yield* RecentMessages

      const page = Effect.fn("History.page")(function* (callerId: UserId, chatId: ChatId, request: PageRequest) {
        yield* memberRole(membership, chatId, callerId)
        // `after` pages forward, oldest first; otherwise pages back from
        // `before` (or from the newest message), newest first.
        if (request.after !== undefined && request.before === undefined) {
          const messages = yield* store
            .page(chatId, { after: request.after, limit: request.limit, viewer: callerId })
            .pipe(Effect.catchTag("MessageStoreError", storeUnavailable))
          return { messages, nextAfter: messages.length === request.limit ? messages.at(-1)!.seq : null }
        }
        const messages = yield* store
          .page(chatId, { before: request.before ?? Number.MAX_SAFE_INTEGER, limit: request.limit, viewer: callerId })
          .pipe(Effect.catchTag("MessageStoreError", storeUnavailable))
        const oldest = messages.at(-1)?.seq
        return {
          messages,
          nextBefore: messages.length === request.limit && oldest !== undefined && oldest > 1 ? oldest : null
        }
      })

      const since = Effect.fn("History.since")(function* (chatId: ChatId, sinceSeq: number, untilSeq?: number) {
        const upTo = (entries: ReadonlyArray<LogEntry>) =>
          untilSeq === undefined ? entries : entries.filter((m) => m.seq <= untilSeq)
        const ring = recent.since(chatId, sinceSeq)
        if (ring !== undefined) return upTo(ring)
        const found: Array<LogEntry> = []
        let after = sinceSeq
        while (true) {
          const batch = yield* store.entries(chatId, after, 100)
          found.push(...batch)
          if (batch.length < 100 || (untilSeq !== undefined && batch.at(-1)!.seq >= untilSeq)) break
          after = batch.at(-1)!.seq
        }
        return upTo(found)
      })

      const lastSeq = Effect.fn("History.lastSeq")(function* (chatId: ChatId) {
        const known = recent.lastSeq(chatId)
        if (known !== undefined) return known
        const latest = yield* store.latest(chatId, 1)
        return latest[0]?.seq ?? 0
      })

      const clampToLastSeq = Effect.fn("History.clampToLastSeq")(function* (chatId: ChatId, seq: number) {
        const deadline = (yield* Clock.currentTimeMillis) + ClampWaitMillis
        let known = 0
        while (true) {
          known = Math.max(known, yield* lastSeq(chatId).pipe(Effect.orElseSucceed(() => 0)))
          if (seq <= known || (yield* Clock.currentTimeMillis) >= deadline) return Math.min(seq, known)
          yield* Effect.sleep(Duration.millis(100))
        }
      })

      const epoch = Effect.fn("History.epoch")(function* (chatId: ChatId) {
        return recent.epoch(chatId) ?? (yield* store.epoch(chatId))
      })

      return History.of({ page, since, lastSeq, clampToLastSeq, epoch })
    })
  )
}
