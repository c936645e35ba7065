/**
 * A session: one WebSocket connection, as an Effect fiber (Discord's
 * "sessions as processes"). It authenticates the first frame, decodes every
 * frame with the protocol schema and answers it; its socket side is a
 * Connection (the one send path, slow-consumer close) and the chats it
 * follows are its Subscriptions.
 *
 * When tracing, every inbound frame is a root span (`Session.frame`, with its
 * decode as a child); a send's trace goes on from there through the ingest,
 * Kafka and the actor. Each live message written to the socket is a span
 * (`Session.write`) under its delivery on this node.
 */
import { Cause, Clock, Duration, Effect, Metric, Option, Queue, Schema, Semaphore } from "effect"
import { randomUUID } from "node:crypto"
import type { WebSocket } from "ws"
import { markRead, memberRole } from "../messages/ChatRules.ts"
import type { Fanout } from "../messages/Fanout.ts"
import type { History } from "../messages/History.ts"
import type { Ingest } from "../messages/Ingest.ts"
import { sessionsOpen } from "../Metrics.ts"
import type { PubSub } from "../ports/PubSub.ts"
import type { ChatId, UserId } from "../schema/Domain.ts"
import { Unavailable } from "../schema/Errors.ts"
import { type ClientFrame, CloseCode, decodeClientFrame } from "../schema/Protocol.ts"
import type { Accounts } from "../state/Accounts.ts"
import type { Chats } from "../state/Chats.ts"
import type { Membership } from "../state/Membership.ts"
import { syncSpans } from "../Tracing.ts"
import type { ChatFeeds } from "./ChatFeeds.ts"
import * as Connection from "./Connection.ts"
import type { PresenceTracker } from "./PresenceTracker.ts"
import * as Subscriptions from "./Subscriptions.ts"
import * as UserChannel from "./UserChannel.ts"
import type { UnreadFeeds } from "./UnreadFeeds.ts"
import { defaultFrameLimits, defaultGatewayLimits, type FrameLimits, frameBucketsOf } from "./Limits.ts"

export { Closed } from "./Connection.ts"

export interface SessionOptions {
  /** The first frame must authenticate within this time (docs/protocol.md: 5 s). */
  readonly authTimeout: Duration.Duration
  /** Bytes the socket may hold unsent before the client counts as too slow. */
  readonly maxBufferedBytes: number
  /** Consecutive malformed frames tolerated before closing with 4400. */
  readonly maxMalformed: number
  /** How long recovery waits for the store to catch up with the live stream. */
  readonly recoveryDeadline: Duration.Duration
  /** Consecutive rate-limited sends before closing with 4029. */
  readonly maxRateLimited: number
  /** At most one typing signal per chat in this interval. */
  readonly typingInterval: Duration.Duration
  /** Sends of one session waiting for the log at once. */
  readonly maxInFlightSends: number
  /** This connection's budget for each kind of frame other than `send`. */
  readonly frameLimits: FrameLimits
  readonly maxSubscriptions: number
}

/** Inbound frames queued before the gateway pauses reading the socket, and when reading resumes. */
export const InboundHighWater = 256
export const InboundLowWater = 64

export const defaultSessionOptions: SessionOptions = {
  authTimeout: Duration.seconds(5),
  maxBufferedBytes: 1024 * 1024,
  maxMalformed: 5,
  recoveryDeadline: Duration.seconds(3),
  maxRateLimited: 10,
  typingInterval: Duration.seconds(2),
  maxInFlightSends: 64,
  frameLimits: defaultFrameLimits,
  maxSubscriptions: defaultGatewayLimits.maxSubscriptionsPerSocket
}

export interface SessionServices {
  readonly accounts: Accounts["Service"]
  readonly chats: Chats["Service"]
  readonly membership: Membership["Service"]
  readonly ingest: Ingest["Service"]
  readonly history: History["Service"]
  readonly fanout: Fanout["Service"]
  readonly feeds: ChatFeeds["Service"]
  readonly presence: PresenceTracker["Service"]
  readonly pubsub: PubSub["Service"]
  readonly unread: UnreadFeeds["Service"]
  /**
   * Tells the gateway whose session this is and of which login, so it can
   * end a closed account's or an ended login's sessions; answers how to
   * forget it, or undefined when the user has too many sockets already.
   */
  readonly register: (userId: UserId, familyId: string | undefined, socket: WebSocket) => (() => void) | undefined
}

/** What the gateway feeds a session: text frames, or a protocol violation it already saw. */
export type Inbound = { readonly _tag: "Text"; readonly text: string } | { readonly _tag: "Binary" }

/** Node's timers take at most this many milliseconds (~24.8 days); a later expiry is waited for in steps. */
const MaxTimerDelay = 2 ** 31 - 1

/**
 * Runs a session until the socket closes or the session closes it.
 *
 * A session is one fiber, whatever it follows: it reads its frames itself,
 * its token's expiry is a timer, live delivery runs in the chat feeds'
 * listeners, and only a `send` waiting for the log has a fiber of its own.
 * Closing the socket interrupts the session (its finalizers end its
 * subscriptions and presence) without waiting for the close handshake.
 */
export const run = Effect.fnUntraced(function* (
  socket: WebSocket,
  inbound: Queue.Dequeue<Inbound, Cause.Done>,
  services: SessionServices,
  options: SessionOptions
) {
  const sessionId = randomUUID()
  yield* Metric.modify(sessionsOpen, 1)
  yield* Effect.addFinalizer(() => Metric.modify(sessionsOpen, -1))
  const sessionScope = yield* Effect.scope
  const self = yield* Effect.fiber
  const connection = yield* Connection.make(socket, sessionId, options.maxBufferedBytes, () =>
    self.interruptUnsafe(self.id)
  )
  const { close, send, sendApiError, sendError } = connection
  const withRef = Connection.withRef
  /** Frames refused over a limit since the last one that was not (sends: since the last accepted). */
  let rateLimitedInARow = 0
  /** A frame over a limit: `rate_limited`, and after `maxRateLimited` of them in a row, close 4029. */
  const limited = (message: string, ref: string | undefined) =>
    Effect.suspend(() =>
      ++rateLimitedInARow >= options.maxRateLimited
        ? close(CloseCode.rateLimited, "rate limited too long")
        : sendError("rate_limited", message, ref)
    )

  // --- authentication -------------------------------------------------------
  const first = yield* Queue.take(inbound).pipe(
    Effect.timeoutOption(options.authTimeout),
    Effect.catchIf(Cause.isDone, () => Effect.succeed(Option.none<Inbound>()))
  )
  if (first._tag === "None") return yield* close(CloseCode.unauthorized, "authentication timed out")
  const authFrame =
    first.value._tag === "Text" ? yield* Effect.option(decodeClientFrame(first.value.text)) : Option.none()
  if (authFrame._tag === "None" || authFrame.value.type !== "auth") {
    return yield* close(CloseCode.unauthorized, "the first frame must be auth")
  }
  const authenticated = yield* services.accounts.authenticateSession(authFrame.value.token).pipe(Effect.option)
  if (authenticated._tag === "None") return yield* close(CloseCode.unauthorized, "unauthorized")
  const user = authenticated.value.user
  let familyId = authenticated.value.familyId
  let unregister = services.register(user.id, familyId, socket)
  if (unregister === undefined) {
    yield* sendError("rate_limited", "too many connections for this user", authFrame.value.ref)
    return yield* close(CloseCode.rateLimited, "too many connections")
  }
  yield* Effect.addFinalizer(() => Effect.sync(() => unregister?.()))
  /** Re-authenticated with a token of another login: the session now ends with that one. */
  const changeLogin = (again: string | undefined) =>
    Effect.sync(() => {
      if (again === familyId) return
      unregister?.()
      familyId = again
      unregister = services.register(user.id, familyId, socket)
    })

  // The access token's expiry ends the session; re-authenticating starts the wait again.
  const clock = yield* Clock.Clock
  let expiry: ReturnType<typeof setTimeout> | undefined
  const expireAt = (expiresAt: number) =>
    Effect.sync(() => {
      clearTimeout(expiry)
      const wait = () => {
        const left = expiresAt - clock.currentTimeMillisUnsafe()
        if (left > 0) expiry = setTimeout(wait, Math.min(left, MaxTimerDelay))
        else connection.closeUnsafe(CloseCode.unauthorized, "token expired")
      }
      wait()
    })
  yield* Effect.addFinalizer(() => Effect.sync(() => clearTimeout(expiry)))
  yield* expireAt(authenticated.value.expiresAt)
  const subscriptions = yield* Subscriptions.make(user, connection, services, options)
  // Live before `ready`: everything of the user's own channel after it reaches this session.
  yield* UserChannel.start(user, connection, services, subscriptions)
  yield* send(withRef({ type: "ready", userId: user.id, sessionId }, authFrame.value.ref))

  // --- frames ---------------------------------------------------------------
  const sendPermits = yield* Semaphore.make(options.maxInFlightSends)
  let malformed = 0
  const frameBuckets = frameBucketsOf(options.frameLimits)
  const lastTyping = new Map<ChatId, number>()

  /** Sends run concurrently (the ingest batches them); each answers on its own. */
  const sendMessage = (frame: Extract<ClientFrame, { type: "send" }>, traced: boolean) =>
    services.ingest.send(user.id, frame.chatId, frame.clientMsgId, frame.body).pipe(
      Effect.flatMap((accepted) => {
        rateLimitedInARow = 0
        return send(withRef({ type: "ack", clientMsgId: accepted.clientMsgId, id: accepted.id }, frame.ref))
      }),
      Effect.catch((error) =>
        error._tag === "RateLimited" ? limited(error.message, frame.ref) : sendApiError(error, frame.ref)
      ),
      (effect) =>
        !traced
          ? effect
          : effect.pipe(
              Effect.withSpan(
                "Session.send",
                { attributes: { "harmony.chat.id": frame.chatId, "harmony.client_msg_id": frame.clientMsgId } },
                noStackTrace
              )
            )
    )

  /** Typing is ephemeral: at most one signal per chat per interval, and only a member's. */
  const typing = (frame: Extract<ClientFrame, { type: "typing" }>) =>
    Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const interval = Duration.toMillis(options.typingInterval)
      if ((lastTyping.get(frame.chatId) ?? 0) + interval > now) return
      // Chats typed in more than an interval ago are forgotten: the map stays small.
      if (lastTyping.size >= 256) for (const [chat, at] of lastTyping) if (at + interval <= now) lastTyping.delete(chat)
      lastTyping.set(frame.chatId, now)
      yield* memberRole(services.membership, frame.chatId, user.id)
      yield* services.fanout.publishFrame(frame.chatId, user.id, {
        type: "typing",
        chatId: frame.chatId,
        userId: user.id
      })
    }).pipe(
      Effect.catchTags({
        NotFound: (error) => sendApiError(error, frame.ref),
        Unavailable: (error) => sendApiError(error, frame.ref),
        CacheError: (error) => Effect.logWarning("typing not published", error)
      })
    )

  const handle = (frame: ClientFrame, traced: boolean): Effect.Effect<void> => {
    switch (frame.type) {
      case "auth":
        return services.accounts.authenticateSession(frame.token).pipe(
          Effect.flatMap((again) =>
            again.user.id === user.id
              ? expireAt(again.expiresAt).pipe(
                  Effect.andThen(changeLogin(again.familyId)),
                  Effect.andThen(send(withRef({ type: "ready", userId: user.id, sessionId }, frame.ref)))
                )
              : close(CloseCode.unauthorized, "a session cannot change user")
          ),
          Effect.catch(() => close(CloseCode.unauthorized, "unauthorized"))
        )
      case "ping":
        return send(withRef({ type: "pong" }, frame.ref))
      case "subscribe":
        return subscriptions.subscribe(frame.chatId, frame.sinceSeq, frame.epoch, frame.ref).pipe(
          Effect.catchTags({
            NotFound: (error) => sendApiError(error, frame.ref),
            RateLimited: (error) => limited(error.message, frame.ref),
            Unavailable: (error) => sendApiError(error, frame.ref),
            CacheError: (error) =>
              Effect.logWarning("subscribe failed: fanout unavailable", error).pipe(
                Effect.andThen(
                  sendApiError(new Unavailable({ message: "live delivery is unavailable, try again" }), frame.ref)
                )
              )
          })
        )
      case "unsubscribe":
        return subscriptions
          .unsubscribe(frame.chatId)
          .pipe(Effect.andThen(send(withRef({ type: "unsubscribed", chatId: frame.chatId }, frame.ref))))
      case "send":
        // At most `maxInFlightSends` sends wait for the log at once; past that
        // the reader waits, the inbound queue fills, and the socket is paused
        // (TCP back-pressure to the client) until it drains.
        return sendPermits
          .take(1)
          .pipe(
            Effect.andThen(
              sendMessage(frame, traced).pipe(Effect.ensuring(sendPermits.release(1)), Effect.forkIn(sessionScope))
            ),
            Effect.asVoid
          )
      case "typing":
        return typing(frame)
      case "read":
        return markRead(services, user.id, frame.chatId, frame.seq).pipe(
          Effect.catchTags({
            NotFound: (error) => sendApiError(error, frame.ref),
            Unavailable: (error) => sendApiError(error, frame.ref)
          })
        )
    }
  }

  // --- reading --------------------------------------------------------------
  const spans = yield* syncSpans
  /** Whether this frame is traced: OTLP is configured and its collector up. */
  const tracing = () => spans?.active() === true
  const decode = (text: string, traced: boolean) =>
    !traced
      ? decodeClientFrame(text).pipe(Effect.result)
      : decodeClientFrame(text).pipe(
          Effect.result,
          Effect.withSpan("Session.decode", { attributes: { "harmony.frame.bytes": text.length } }, noStackTrace)
        )
  const onInput = (input: Inbound, traced: boolean) =>
    Effect.gen(function* () {
      if (socket.isPaused && Queue.sizeUnsafe(inbound) <= InboundLowWater) socket.resume()
      const frame = input._tag === "Text" ? yield* decode(input.text, traced) : undefined
      if (frame === undefined || frame._tag === "Failure") {
        malformed++
        if (malformed >= options.maxMalformed) return yield* close(CloseCode.malformed, "malformed frames")
        const ref = input._tag === "Text" ? refOf(input.text) : undefined
        return yield* sendError(
          "bad_request",
          frame === undefined ? "frames are JSON text" : `malformed frame: ${oneLine(frame.failure.message)}`,
          ref
        )
      }
      malformed = 0
      if (traced) yield* Effect.annotateCurrentSpan("harmony.frame.type", frame.success.type)
      const bucket = frameBuckets[frame.success.type]
      if (bucket !== undefined && !bucket.take()) {
        return yield* limited(`too many ${frame.success.type} frames`, frame.success.ref)
      }
      const refusedBefore = rateLimitedInARow
      yield* handle(frame.success, traced)
      // A send answers later, on its own fiber; any other frame has been answered.
      if (frame.success.type !== "send" && rateLimitedInARow === refusedBefore) rateLimitedInARow = 0
    })
  while (connection.closed() === undefined) {
    // Done: the socket closed.
    const input = yield* Effect.option(Queue.take(inbound))
    if (input._tag === "None") return
    const traced = tracing()
    yield* !traced
      ? onInput(input.value, false)
      : onInput(input.value, true).pipe(
          Effect.withSpan(
            "Session.frame",
            { kind: "server", root: true, attributes: { "harmony.session.id": sessionId } },
            noStackTrace
          )
        )
  }
})

/** The `ref` of a frame that failed to decode, so its error can still answer it. */
const decodeRef = Schema.decodeUnknownOption(Schema.fromJsonString(Schema.Struct({ ref: Schema.String })))
const refOf = (text: string): string | undefined => Option.getOrUndefined(decodeRef(text))?.ref

const oneLine = (text: string) => text.replace(/\s*\n\s*/g, " ").trim()

/** Spans of the hot path skip capturing a call site. */
const noStackTrace = { captureStackTrace: false } as const
