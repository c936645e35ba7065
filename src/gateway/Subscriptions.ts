/**
 * A session's subscriptions: which chats it follows, and how each chat's
 * messages reach the socket exactly once and in seq order — recovery from
 * `sinceSeq` on subscribe, live delivery from the chat's feed, and gaps in
 * the live stream filled from history.
 */
import { Clock, Duration, Effect, Fiber, Option, Schedule } from "effect"
import type { CacheError } from "../ports/Cache.ts"
import { memberRole } from "../messages/ChatRules.ts"
import { entryFrame, Everyone, type FanoutItem } from "../messages/Fanout.ts"
import type { History } from "../messages/History.ts"
import type { ChatId, LogEntry, User } from "../schema/Domain.ts"
import { type NotFound, RateLimited, type Unavailable } from "../schema/Errors.ts"
import type { Membership } from "../state/Membership.ts"
import type { ChatFeeds } from "./ChatFeeds.ts"
import { type Connection, withRef } from "./Connection.ts"
import type { PresenceTracker } from "./PresenceTracker.ts"

export interface SubscriptionServices {
  readonly membership: Membership["Service"]
  readonly history: History["Service"]
  readonly feeds: ChatFeeds["Service"]
  readonly presence: PresenceTracker["Service"]
}

export interface Subscriptions {
  /** Subscribes (again) to a chat: `subscribed`, what was missed after `sinceSeq`, `presence`, then live. */
  readonly subscribe: (
    chatId: ChatId,
    sinceSeq: number | undefined,
    clientEpoch: string | undefined,
    ref: string | undefined
  ) => Effect.Effect<void, NotFound | RateLimited | Unavailable | CacheError>
  readonly unsubscribe: (chatId: ChatId) => Effect.Effect<void>
  /** Whether the session follows the chat now (then it gets the chat's messages, not `unread`). */
  readonly has: (chatId: ChatId) => boolean
  /** Whether the session follows the chat, or its subscription told it `chat_deleted` lately. */
  readonly tells: (chatId: ChatId) => boolean
}

/** Chats whose deletion a session remembers having told (so the user channel does not tell it again). */
const RememberedDeletions = 64

/**
 * One chat a session follows. An idle subscription is this object, its
 * listener in the chat's feed and two closures: no fiber, no scope. A gap
 * being filled from history has a fiber and a buffer, only while it lasts.
 */
interface Subscription {
  lastDelivered: number
  /** Set the moment it ends (unsubscribed, or a removal or deletion written): nothing of the chat follows. */
  ended: boolean
  /** Takes the listener out of the chat's feed, once it is in. */
  removeListener: Effect.Effect<void> | undefined
  /** The gap being filled from history, and the live items held until it is. */
  fill: { fiber: Fiber.Fiber<unknown> | undefined; readonly waiting: Array<FanoutItem> } | undefined
}

/** Stops a subscription: its gap fill (if any) and its listener. */
const stop = (subscription: Subscription): Effect.Effect<void> => {
  subscription.ended = true
  const fiber = subscription.fill?.fiber
  const removeListener = subscription.removeListener ?? Effect.void
  return fiber === undefined ? removeListener : Effect.andThen(Fiber.interrupt(fiber), removeListener)
}

/** How often recovery asks the store again while it trails the live stream. */
const PollInterval = "50 millis"

/**
 * Runs `step` until it answers true (caught up), every PollInterval, and
 * starts no new step once `deadline` has passed (a step under way finishes:
 * what it found is delivered). Answers whether it caught up.
 */
const catchUp = (step: Effect.Effect<boolean>, deadline: Duration.Input) =>
  Effect.repeat(step, {
    schedule: Schedule.spaced(PollInterval).pipe(Schedule.upTo({ duration: deadline })),
    until: (done) => done
  })

/** The session's subscriptions, for the lifetime of its scope: when the session ends, so do they. */
export const make = Effect.fnUntraced(function* (
  user: User,
  connection: Connection,
  services: SubscriptionServices,
  options: {
    /** How long recovery waits for the store to catch up with the live stream. */
    readonly recoveryDeadline: Duration.Duration
    readonly maxSubscriptions: number
  }
) {
  const { recoveryDeadline, maxSubscriptions } = options
  const runFork = Effect.runForkWith(yield* Effect.context<never>())
  const subscriptions = new Map<ChatId, Subscription>()
  const deleted = new Set<ChatId>()

  const unsubscribe = (chatId: ChatId) =>
    Effect.suspend(() => {
      const subscription = subscriptions.get(chatId)
      if (subscription === undefined) return Effect.void
      subscriptions.delete(chatId)
      return stop(subscription).pipe(Effect.andThen(services.presence.leave(user.id, chatId)))
    })
  // However the session ends, its presence in every chat ends with it.
  yield* Effect.addFinalizer(() => Effect.forEach([...subscriptions.keys()], unsubscribe, { discard: true }))

  /** Log entries after `known` up to `target`, in order from `known + 1`, each handed to `take`; answers the last taken. */
  const readContiguous = (chatId: ChatId, known: number, target: number, take: (message: LogEntry) => boolean) =>
    services.history.since(chatId, known, target).pipe(
      Effect.option,
      Effect.map((found) => {
        if (found._tag === "None") return known
        for (const message of found.value) {
          if (message.seq !== known + 1) continue
          if (!take(message)) break
          known = message.seq
        }
        return known
      })
    )

  interface Recovery {
    readonly lastSeq: number
    readonly recovered: boolean
    /** The client's seqs name nothing in this chat (another epoch): it goes on from the chat's lastSeq. */
    readonly reset: boolean
    readonly messages: ReadonlyArray<LogEntry>
  }

  /** A client whose seqs belong to another epoch starts again from the chat's lastSeq, with nothing replayed. */
  const reset = (chatId: ChatId) =>
    services.history.lastSeq(chatId).pipe(
      Effect.orElseSucceed(() => 0),
      Effect.map((lastSeq): Recovery => ({ lastSeq, recovered: false, reset: true, messages: [] }))
    )

  /** What a subscriber missed after `sinceSeq`, made contiguous with the live buffer when it can be. */
  const recover = (chatId: ChatId, sinceSeq: number | undefined, pendingLive: ReadonlyArray<FanoutItem>) =>
    Effect.gen(function* () {
      const currentLastSeq = services.history.lastSeq(chatId).pipe(Effect.orElseSucceed(() => 0))
      let lastSeq = yield* currentLastSeq
      if (sinceSeq === undefined) return { lastSeq, recovered: true, reset: false, messages: [] } satisfies Recovery
      const began = yield* Clock.currentTimeMillis
      const firstLive = () => pendingLive.find((item) => item.seq > 0)?.seq
      // A client claiming more than the chat holds here: the store may trail
      // the live stream (or a failed node's partitions have not moved yet),
      // so give it until the deadline. Past that, the answer is the truth as
      // this node knows it — recovered:false and its lastSeq, never
      // recovered:true — while delivery still goes on after sinceSeq: within
      // one epoch those seqs are the chat's, and the client must not get
      // them twice. A history that was lost has another epoch (`reset`).
      const holds = Effect.map(currentLastSeq, (seq) => {
        lastSeq = seq
        return sinceSeq <= Math.max(lastSeq, (firstLive() ?? 0) - 1)
      })
      if (!(yield* catchUp(holds, recoveryDeadline))) {
        return { lastSeq, recovered: false, reset: false, messages: [] } satisfies Recovery
      }
      const left = Duration.millis(
        Math.max(0, Duration.toMillis(recoveryDeadline) - ((yield* Clock.currentTimeMillis) - began))
      )
      const messages: Array<LogEntry> = []
      let known = sinceSeq
      const step = Effect.suspend(() => {
        // The live buffer grows meanwhile: recover up to its first message.
        const live = firstLive()
        const target = live === undefined ? lastSeq : live - 1
        if (known >= target) return Effect.succeed(true)
        const take = (message: LogEntry) => {
          messages.push(message)
          return true
        }
        return readContiguous(chatId, known, target, take).pipe(
          Effect.map((last) => {
            known = last
            return known >= target
          })
        )
      })
      const recovered = yield* catchUp(step, left)
      return { lastSeq: Math.max(lastSeq, known), recovered, reset: false, messages } satisfies Recovery
    })

  const subscribe = Effect.fnUntraced(function* (
    chatId: ChatId,
    sinceSeq: number | undefined,
    clientEpoch: string | undefined,
    ref: string | undefined
  ) {
    yield* memberRole(services.membership, chatId, user.id)
    if (!subscriptions.has(chatId) && subscriptions.size >= maxSubscriptions) {
      const message = `at most ${maxSubscriptions} subscriptions per connection`
      return yield* new RateLimited({ message, retryAfterSeconds: 0 })
    }
    yield* unsubscribe(chatId)
    // A client that has up to sinceSeq must never get those again (a new
    // owner replaying its partition re-publishes them).
    const subscription: Subscription = {
      lastDelivered: sinceSeq ?? 0,
      ended: false,
      removeListener: undefined,
      fill: undefined
    }
    subscriptions.set(chatId, subscription)
    yield* services.presence.join(user.id, chatId)

    // Delivery runs inside the chat feed's listener, synchronously: a
    // message is a dedupe check and a socket write, no hand-off.
    // A live message past the next seq means some were never seen here (a
    // partition changed hands mid-stream, or the subscription started while
    // the store lagged): the gap is filled from history before going on,
    // and live items wait meanwhile.
    const fillGap = (upTo: number) => {
      const done = () => subscription.ended || subscription.lastDelivered >= upTo
      const take = (message: LogEntry) => {
        if (subscription.ended) return false
        connection.write(entryFrame(message))
        subscription.lastDelivered = message.seq
        return true
      }
      const step = Effect.suspend(() =>
        done()
          ? Effect.succeed(true)
          : readContiguous(chatId, subscription.lastDelivered, upTo, take).pipe(Effect.map(done))
      )
      return catchUp(step, recoveryDeadline).pipe(
        Effect.ensuring(
          Effect.sync(() => {
            // Filled or not (the client can still resubscribe with sinceSeq), live delivery resumes.
            const held = subscription.fill?.waiting ?? []
            subscription.fill = undefined
            for (const item of held) deliver(item)
          })
        )
      )
    }
    const deliver = (item: FanoutItem): void => {
      if (subscription.ended) return
      if (item.seq > 0) {
        if (subscription.fill !== undefined) {
          subscription.fill.waiting.push(item)
          return
        }
        if (item.seq <= subscription.lastDelivered) return
        if (item.seq > subscription.lastDelivered + 1 && subscription.lastDelivered > 0) {
          const fill: NonNullable<Subscription["fill"]> = { fiber: undefined, waiting: [item] }
          subscription.fill = fill
          // Unsubscribing (or the session ending) interrupts the fill.
          const fiber = runFork(fillGap(item.seq - 1))
          if (subscription.fill === fill) fill.fiber = fiber
          return
        }
        subscription.lastDelivered = item.seq
        connection.writeLive(item)
        return
      }
      // Typing and read signals are for the others.
      if (item.from === user.id) return
      connection.write(item.frame)
      if (item.ends === Everyone) {
        deleted.add(chatId)
        if (deleted.size > RememberedDeletions) deleted.delete(deleted.values().next().value as ChatId)
      }
      if (item.ends === Everyone || item.ends === user.id) {
        // Removed from the chat, or the chat is gone: said, now stop — at
        // once, for the rest of this batch and anything held by a fill.
        subscription.ended = true
        runFork(unsubscribe(chatId))
      }
    }
    // Live first, buffered until recovery is done, so nothing published
    // meanwhile is missed.
    let pendingLive: Array<FanoutItem> | undefined = []
    subscription.removeListener = yield* services.feeds.listen(chatId, (items) => {
      if (pendingLive !== undefined) {
        pendingLive.push(...items)
        return
      }
      const all = () => {
        for (const item of items) deliver(item)
      }
      // A batch of frames to one socket leaves in one write.
      if (items.length > 1) connection.corked(all)
      else all()
    })
    // Unsubscribed meanwhile: the listener goes at once.
    if (subscriptions.get(chatId) !== subscription) yield* subscription.removeListener

    // Unknown when the store cannot be read: then the seqs alone decide.
    const epoch = Option.getOrUndefined(yield* Effect.option(services.history.epoch(chatId)))
    const otherEpoch =
      sinceSeq !== undefined && clientEpoch !== undefined && epoch !== undefined && clientEpoch !== epoch
    const recovery: Recovery = otherEpoch ? yield* reset(chatId) : yield* recover(chatId, sinceSeq, pendingLive)
    yield* connection.send(
      withRef(
        {
          type: "subscribed",
          chatId,
          lastSeq: recovery.lastSeq,
          recovered: recovery.recovered,
          ...(epoch === undefined ? {} : { epoch })
        },
        ref
      )
    )
    for (const message of recovery.messages) {
      if (message.seq > subscription.lastDelivered) {
        connection.write(entryFrame(message))
        subscription.lastDelivered = message.seq
      }
    }
    if (sinceSeq === undefined) subscription.lastDelivered = Math.max(subscription.lastDelivered, recovery.lastSeq)
    // What the client has is not this chat's history: it goes on from the real lastSeq.
    if (recovery.reset) subscription.lastDelivered = recovery.lastSeq
    yield* connection.send({ type: "presence", chatId, online: yield* services.presence.online(chatId) })
    const held = pendingLive
    pendingLive = undefined
    for (const item of held) deliver(item)
  })

  const has = (chatId: ChatId) => subscriptions.has(chatId)
  const tells = (chatId: ChatId) => subscriptions.has(chatId) || deleted.has(chatId)
  return { subscribe, unsubscribe, has, tells } satisfies Subscriptions as Subscriptions
})
