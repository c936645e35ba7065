/**
 * The chats the app subscribed to, and the promise that each `(chatId, seq)`
 * — a message, or a change to one (edit, delete, reaction), each with a seq
 * of its own — reaches the app exactly once, in order: every subscription remembers the
 * last seq it delivered and resubscribes from it (`sinceSeq`) on every new
 * connection and after a gap; anything at or below it is dropped. When the
 * server cannot replay a range (`recovered:false`), the `gap` event names it.
 * Each subscription keeps its chat's epoch and resubscribes with it: another
 * epoch (the server lost the history) is a `reset`.
 */
import { Deferred, type Duration, Effect } from "effect"
import { isChange, type LogEntry } from "../schema/Domain.ts"
import type { Connection } from "./Connection.ts"
import type { Events } from "./Events.ts"
import type { HarmonyError } from "./HarmonyError.ts"
import type { SubscribeResult } from "./Types.ts"

interface Subscription {
  /** The last seq handed to the app; undefined until the first `subscribed` (a subscription "from now"). */
  last: number | undefined
  /** Callers of `subscribe` waiting for the next `subscribed`. */
  readonly waiters: Array<Deferred.Deferred<SubscribeResult, HarmonyError>>
  /** The epoch `last` belongs to, once the server has said (or the app gave it). */
  epoch: string | undefined
  /** A resubscribe for a gap is in flight: later gaps wait for it. */
  resyncing: boolean
}

export interface Subscriptions {
  /** Subscribes (or, with `sinceSeq`, replays from there); resolves on the server's `subscribed`. */
  readonly subscribe: (
    chatId: string,
    sinceSeq: number | undefined,
    epoch: string | undefined
  ) => Effect.Effect<SubscribeResult, HarmonyError>
  readonly unsubscribe: (chatId: string, error: HarmonyError) => void
  /** A new connection: every subscription again, from its last seq. */
  readonly resubscribeAll: (connection: Connection) => void
  readonly onSubscribed: (chatId: string, lastSeq: number, recovered: boolean, epoch: string | undefined) => void
  /** A message, or a change frame: one seq of the chat's log. */
  readonly onEntry: (connection: Connection, entry: LogEntry) => void
  /** The server refused a subscribe. */
  readonly onError: (connection: Connection, chatId: string, error: HarmonyError) => void
  /** The subscription is over (the chat was deleted, the user removed): its waiters fail with `error`. */
  readonly drop: (chatId: string, error: HarmonyError) => void
  /** A connection ended: no resubscribe is in flight any more. */
  readonly onConnectionEnd: () => void
  /** The session ended: every subscription is dropped. */
  readonly dropAll: (error: HarmonyError) => void
}

export const makeSubscriptions = (options: {
  readonly events: Events
  readonly current: () => Connection | undefined
  /** How long to wait before asking again after a transient refusal. */
  readonly retryDelay: Duration.Duration
  readonly fork: (effect: Effect.Effect<void>) => void
}): Subscriptions => {
  const { events } = options
  const subscriptions = new Map<string, Subscription>()

  const sendSubscribe = (connection: Connection, chatId: string, subscription: Subscription) =>
    connection.request(
      {
        type: "subscribe",
        chatId,
        ...(subscription.last === undefined ? {} : { sinceSeq: subscription.last }),
        ...(subscription.last === undefined || subscription.epoch === undefined ? {} : { epoch: subscription.epoch })
      },
      { kind: "subscribe", chatId }
    )

  const failAll = (subscription: Subscription, error: HarmonyError) => {
    for (const waiter of subscription.waiters.splice(0)) Deferred.doneUnsafe(waiter, Effect.fail(error))
  }

  const drop = (chatId: string, error: HarmonyError) => {
    const subscription = subscriptions.get(chatId)
    if (subscription === undefined) return
    subscriptions.delete(chatId)
    failAll(subscription, error)
  }

  const subscribe = (chatId: string, sinceSeq: number | undefined, epoch: string | undefined) =>
    Effect.suspend(() => {
      let subscription = subscriptions.get(chatId)
      if (subscription === undefined) {
        subscription = { last: sinceSeq, epoch, waiters: [], resyncing: false }
        subscriptions.set(chatId, subscription)
      } else if (sinceSeq !== undefined) {
        // The app asks for a replay from here: it gets one.
        subscription.last = sinceSeq
        subscription.epoch = epoch
      }
      const answered = Deferred.makeUnsafe<SubscribeResult, HarmonyError>()
      subscription.waiters.push(answered)
      const connection = options.current()
      if (connection !== undefined) sendSubscribe(connection, chatId, subscription)
      return Deferred.await(answered)
    })

  const unsubscribe = (chatId: string, error: HarmonyError) => {
    if (!subscriptions.has(chatId)) return
    drop(chatId, error)
    options.current()?.send({ type: "unsubscribe", chatId })
  }

  const onSubscribed = (chatId: string, lastSeq: number, recovered: boolean, epoch: string | undefined) => {
    const subscription = subscriptions.get(chatId)
    if (subscription === undefined) return
    subscription.resyncing = false
    const otherEpoch = epoch !== undefined && subscription.epoch !== undefined && epoch !== subscription.epoch
    if (subscription.last === undefined) {
      // Subscribed "from now": the server delivers what comes after lastSeq.
      subscription.last = lastSeq
    } else if (!recovered && otherEpoch) {
      // What this client saw is not the chat's history any more: start again from the server's.
      subscription.last = lastSeq
      events.emit("reset", { chatId, lastSeq, epoch })
    } else if (!recovered) {
      // The server could not replay what was missed; it delivers what comes after lastSeq
      // (anything replayed up to it is dropped here: the app refetches that range).
      // (A lastSeq below what this client saw, in the same epoch: the server has
      // not caught up yet, and delivery goes on after the client's last seq.)
      const fromSeq = subscription.last + 1
      if (lastSeq >= fromSeq) events.emit("gap", { chatId, fromSeq, toSeq: lastSeq })
      subscription.last = Math.max(subscription.last, lastSeq)
    }
    subscription.epoch = epoch ?? subscription.epoch
    for (const waiter of subscription.waiters.splice(0)) {
      Deferred.doneUnsafe(waiter, Effect.succeed({ lastSeq, recovered, epoch }))
    }
  }

  const emit = (entry: LogEntry) => {
    if (!isChange(entry)) return events.emit("message", entry)
    switch (entry.type) {
      case "message_edited":
        return events.emit("message_edited", entry)
      case "message_deleted":
        return events.emit("message_deleted", entry)
      case "reaction":
        return events.emit("reaction", entry)
    }
  }

  const onEntry = (connection: Connection, message: LogEntry) => {
    const subscription = subscriptions.get(message.chatId)
    if (subscription === undefined || subscription.last === undefined) return
    if (message.seq <= subscription.last) return // seen already: a replay after a reconnect or a gap
    if (message.seq === subscription.last + 1) {
      subscription.last = message.seq
      emit(message)
      return
    }
    // A gap: ask for everything after the last seq seen; this and what follows come again in order.
    if (!subscription.resyncing) {
      subscription.resyncing = true
      sendSubscribe(connection, message.chatId, subscription)
    }
  }

  const onError = (connection: Connection, chatId: string, error: HarmonyError) => {
    const subscription = subscriptions.get(chatId)
    if (subscription === undefined) return
    if (error.transient) {
      options.fork(
        Effect.sleep(options.retryDelay).pipe(
          Effect.andThen(
            Effect.sync(() => {
              if (options.current() === connection && subscriptions.get(chatId) === subscription) {
                sendSubscribe(connection, chatId, subscription)
              }
            })
          )
        )
      )
      return
    }
    // No waiter (a resubscribe after a reconnect, say after removal while offline): the app hears it as an event.
    if (subscription.waiters.length === 0) events.emit("error", error)
    drop(chatId, error)
  }

  return {
    subscribe,
    unsubscribe,
    resubscribeAll: (connection) => {
      for (const [chatId, subscription] of subscriptions) sendSubscribe(connection, chatId, subscription)
    },
    onSubscribed,
    onEntry,
    onError,
    drop,
    onConnectionEnd: () => {
      for (const subscription of subscriptions.values()) subscription.resyncing = false
    },
    dropAll: (error) => {
      for (const subscription of subscriptions.values()) failAll(subscription, error)
      subscriptions.clear()
    }
  }
}
