/**
 * Sends waiting for their `ack`. Each keeps its `clientMsgId` and goes out
 * again on every new connection until acked (the server stores
 * `(chat, author, clientMsgId)` once, so a resend after a lost ack is not a
 * second message); a transient refusal is retried after a per-send backoff.
 */
import { Deferred, Effect, Schedule } from "effect"
import type { Connection } from "./Connection.ts"
import type { HarmonyError } from "./HarmonyError.ts"
import type { Accepted } from "./Types.ts"

/** A v4 UUID; `crypto.randomUUID` is missing on plain-http pages (not a secure context), `getRandomValues` is not. */
export const newClientMsgId = (): string => {
  if (typeof globalThis.crypto?.randomUUID === "function") return globalThis.crypto.randomUUID()
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16))
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

interface PendingSend {
  readonly chatId: string
  readonly body: string
  readonly clientMsgId: string
  readonly done: Deferred.Deferred<Accepted, HarmonyError>
  /** This send's backoff: each call sleeps for its next delay. */
  retry: ((input: unknown) => Effect.Effect<unknown, unknown>) | undefined
}

export interface PendingSends {
  /** Sends (or joins the send with the same `clientMsgId`); resolves on the ack. */
  readonly send: (chatId: string, body: string, clientMsgId: string) => Effect.Effect<Accepted, HarmonyError>
  /** A new connection: every unacked send again. */
  readonly resendAll: (connection: Connection) => void
  readonly onAck: (clientMsgId: string, id: string) => void
  /** The server refused a send: transient refusals are retried, others fail the send. */
  readonly onError: (connection: Connection, clientMsgId: string, error: HarmonyError) => void
  /** The session ended: every waiting send fails with `error`. */
  readonly failAll: (error: HarmonyError) => void
}

export const makePendingSends = (options: {
  readonly current: () => Connection | undefined
  readonly backoff: Schedule.Schedule<unknown>
  readonly fork: (effect: Effect.Effect<void>) => void
}): PendingSends => {
  const pending = new Map<string, PendingSend>()

  const sendOn = (connection: Connection, send: PendingSend) =>
    connection.request(
      { type: "send", chatId: send.chatId, clientMsgId: send.clientMsgId, body: send.body },
      { kind: "send", clientMsgId: send.clientMsgId }
    )

  const send = (chatId: string, body: string, clientMsgId: string) =>
    Effect.suspend(() => {
      const existing = pending.get(clientMsgId)
      if (existing !== undefined) return Deferred.await(existing.done)
      const waiting: PendingSend = {
        chatId,
        body,
        clientMsgId,
        done: Deferred.makeUnsafe<Accepted, HarmonyError>(),
        retry: undefined
      }
      pending.set(clientMsgId, waiting)
      const connection = options.current()
      if (connection !== undefined) sendOn(connection, waiting)
      return Deferred.await(waiting.done)
    })

  const onError = (connection: Connection, clientMsgId: string, error: HarmonyError) => {
    const waiting = pending.get(clientMsgId)
    if (waiting === undefined) return
    if (!error.transient) {
      pending.delete(clientMsgId)
      Deferred.doneUnsafe(waiting.done, Effect.fail(error))
      return
    }
    options.fork(
      Effect.gen(function* () {
        waiting.retry ??= yield* Schedule.toStepWithSleep(options.backoff)
        yield* waiting.retry(undefined).pipe(Effect.ignore)
        // A reconnect meanwhile resent it already.
        if (options.current() === connection && pending.get(clientMsgId) === waiting) sendOn(connection, waiting)
      })
    )
  }

  return {
    send,
    resendAll: (connection) => {
      for (const waiting of pending.values()) sendOn(connection, waiting)
    },
    onAck: (clientMsgId, id) => {
      const waiting = pending.get(clientMsgId)
      if (waiting === undefined) return
      pending.delete(clientMsgId)
      Deferred.doneUnsafe(waiting.done, Effect.succeed({ id, clientMsgId }))
    },
    onError,
    failAll: (error) => {
      for (const waiting of pending.values()) Deferred.doneUnsafe(waiting.done, Effect.fail(error))
      pending.clear()
    }
  }
}
