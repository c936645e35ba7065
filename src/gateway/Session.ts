/**
 * A session: one WebSocket connection, as an Effect fiber (Discord's
 * "sessions as processes"). It authenticates the first frame, decodes every
 * frame with the protocol schema, and owns the connection's subscriptions.
 *
 * Outbound frames go straight to the socket; the socket's send buffer is the
 * session's bounded queue. A client too slow to drain it is disconnected
 * with 4008 (like Centrifugo's 3008) — it never holds up fanout to others.
 *
 * When tracing, every inbound frame is a root span (`Session.frame`, with its
 * decode as a child); a send's trace goes on from there through the ingest,
 * Kafka and the actor. Each live message written to the socket is a span
 * (`Session.write`) under its delivery on this node.
 */
import {
  Cause,
  Clock,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Metric,
  Option,
  Queue,
  Schema,
  Scope,
  Semaphore
} from "effect"
import { errorsOf, messagesDelivered, sendToDeliver, sessionsOpen, slowConsumerDisconnects } from "../Metrics.ts"
import { randomUUID } from "node:crypto"
import type { WebSocket } from "ws"
import type { ChatId, Message, User, UserId } from "../schema/Domain.ts"
import { type ApiError, errorCode, Unavailable } from "../schema/Errors.ts"
import { type ClientFrame, CloseCode, decodeClientFrame, type ServerFrame } from "../schema/Protocol.ts"
import type { Accounts } from "../state/Accounts.ts"
import type { Chats } from "../state/Chats.ts"
import type { Membership } from "../state/Membership.ts"
import type { ChatFeeds } from "./ChatFeeds.ts"
import { type Fanout, type FanoutItem, messageFrame } from "../messages/Fanout.ts"
import type { History } from "../messages/History.ts"
import type { PresenceTracker } from "./PresenceTracker.ts"
import type { Ingest } from "../messages/Ingest.ts"
import { syncSpans } from "../Tracing.ts"
import { closeSocket } from "./closeSocket.ts"
import { defaultFrameLimits, defaultGatewayLimits, type FrameLimits, frameBucketsOf } from "./Limits.ts"

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
  /**
   * Tells the gateway whose session this is and of which login, so it can
   * end a closed account's or an ended login's sessions; answers how to
   * forget it, or undefined when the user has too many sockets already.
   */
  readonly register: (userId: UserId, familyId: string | undefined, socket: WebSocket) => (() => void) | undefined
}

/** What the gateway feeds a session: text frames, or a protocol violation it already saw. */
export type Inbound = { readonly _tag: "Text"; readonly text: string } | { readonly _tag: "Binary" }

interface Subscription {
  readonly scope: Scope.Closeable
  lastDelivered: number
  /** Set the moment a removal or deletion is written: nothing of the chat follows it, even before the scope closes. */
  ended: boolean
}

export class Closed {
  readonly code: number
  readonly reason: string
  constructor(code: number, reason: string) {
    this.code = code
    this.reason = reason
  }
}

/** Runs a session until the socket closes or the session closes it. */
export const run = Effect.fnUntraced(function* (
  socket: WebSocket,
  inbound: Queue.Dequeue<Inbound, Cause.Done>,
  services: SessionServices,
  options: SessionOptions
) {
  const sessionId = randomUUID()
  yield* Metric.modify(sessionsOpen, 1)
  yield* Effect.addFinalizer(() => Metric.modify(sessionsOpen, -1))
  const subscriptions = new Map<ChatId, Subscription>()
  const closed = yield* Deferred.make<Closed>()
  const sessionScope = yield* Effect.scope

  const close = (code: number, reason: string) =>
    Effect.sync(() => closeSocket(socket, code, reason)).pipe(
      Effect.andThen(Deferred.succeed(closed, new Closed(code, reason)))
    )

  /** Sends a text frame; a client that lets its buffer fill is closed with 4008. */
  const sendText = (text: string) =>
    Effect.suspend(() => {
      if (socket.readyState !== socket.OPEN) return Effect.void
      if (socket.bufferedAmount > options.maxBufferedBytes) {
        return Metric.update(slowConsumerDisconnects, 1).pipe(
          Effect.andThen(close(CloseCode.tooSlow, "too slow: outbound queue overflowed"))
        )
      }
      socket.send(text)
      return Effect.void
    })
  const send = (frame: ServerFrame) => sendText(JSON.stringify(frame))
  const context = yield* Effect.context<never>()
  const runFork = Effect.runForkWith(context)
  const spans = yield* syncSpans
  /** `sendText` for the synchronous delivery path; answers whether the frame was written. */
  const sendTextUnsafe = (text: string): boolean => {
    if (socket.readyState !== socket.OPEN) return false
    if (socket.bufferedAmount > options.maxBufferedBytes) {
      runFork(sendText(text))
      return false
    }
    socket.send(text)
    return true
  }
  /** A live message to the socket: counted, its send→deliver latency observed, traced under its delivery. */
  const writeLive = (item: FanoutItem) => {
    const span =
      spans === undefined || item.span === undefined
        ? undefined
        : spans.start("Session.write", {
            parent: item.span,
            attributes: { "harmony.session.id": sessionId, "harmony.seq": item.seq }
          })
    const written = sendTextUnsafe(item.frame)
    if (span !== undefined) spans!.end(span)
    if (!written) return
    messagesDelivered.updateUnsafe(1, context)
    if (item.sentAt !== undefined && Number.isFinite(item.sentAt)) {
      sendToDeliver.updateUnsafe(Math.max(0, Date.now() - item.sentAt) / 1000, context)
    }
  }

  const withRef = <F extends object>(frame: F, ref: string | undefined): F =>
    ref === undefined ? frame : { ...frame, ref }
  /** An error frame to the client, counted by its contract code. */
  const sendErrorFrame = (code: string, message: string, ref: string | undefined) =>
    Effect.suspend(() => {
      errorsOf(code, "ws").updateUnsafe(1, context)
      return send(withRef({ type: "error", code, message } as ServerFrame, ref))
    })
  const sendError = (error: ApiError, ref: string | undefined) => sendErrorFrame(errorCode(error), error.message, ref)
  /** Frames refused over a limit since the last one that was not (sends: since the last accepted). */
  let rateLimitedInARow = 0
  /** A frame over a limit: `rate_limited`, and after `maxRateLimited` of them in a row, close 4029. */
  const limited = (message: string, ref: string | undefined) =>
    Effect.suspend(() =>
      ++rateLimitedInARow >= options.maxRateLimited
        ? close(CloseCode.rateLimited, "rate limited too long")
        : sendErrorFrame("rate_limited", message, ref)
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
  const user: User = authenticated.value.user
  let expiresAt = authenticated.value.expiresAt
  let familyId = authenticated.value.familyId
  let unregister = services.register(user.id, familyId, socket)
  if (unregister === undefined) {
    yield* sendErrorFrame("rate_limited", "too many connections for this user", authFrame.value.ref)
    return yield* close(CloseCode.rateLimited, "too many connections")
  }
  yield* Effect.addFinalizer(() => Effect.sync(() => unregister?.()))
  yield* send(withRef({ type: "ready", userId: user.id, sessionId }, authFrame.value.ref))

  // The access token's expiry ends the session unless the client re-authenticates.
  yield* Effect.forkIn(
    Effect.gen(function* () {
      while (true) {
        const now = yield* Clock.currentTimeMillis
        if (now >= expiresAt) return yield* close(CloseCode.unauthorized, "token expired")
        yield* Effect.sleep(Duration.millis(Math.min(expiresAt - now, 60_000)))
      }
    }),
    sessionScope
  )

  // --- subscriptions --------------------------------------------------------
  const unsubscribe = (chatId: ChatId) =>
    Effect.suspend(() => {
      const subscription = subscriptions.get(chatId)
      if (subscription === undefined) return Effect.void
      subscriptions.delete(chatId)
      return Scope.close(subscription.scope, Exit.void).pipe(Effect.andThen(services.presence.leave(user.id, chatId)))
    })

  const subscribe = Effect.fnUntraced(function* (
    chatId: ChatId,
    sinceSeq: number | undefined,
    clientEpoch: string | undefined,
    ref: string | undefined
  ) {
    const role = yield* services.membership.roleOf(chatId, user.id)
    if (role._tag === "None") {
      return yield* sendErrorFrame("not_found", `chat ${chatId} not found`, ref)
    }
    if (!subscriptions.has(chatId) && subscriptions.size >= options.maxSubscriptions) {
      return yield* limited(`at most ${options.maxSubscriptions} subscriptions per connection`, ref)
    }
    yield* unsubscribe(chatId)
    const scope = yield* Scope.fork(sessionScope, "sequential")
    // A client that has up to sinceSeq must never get those again (a new
    // owner replaying its partition re-publishes them).
    const subscription: Subscription = { scope, lastDelivered: sinceSeq ?? 0, ended: false }
    subscriptions.set(chatId, subscription)
    yield* services.presence.join(user.id, chatId)

    // Delivery runs inside the chat feed's listener, synchronously: a
    // message is a dedupe check and a socket write, no hand-off.
    // A live message past the next seq means some were never seen here (a
    // partition changed hands mid-stream, or the subscription started while
    // the store lagged): the gap is filled from history before going on,
    // and live items wait meanwhile.
    let filling = false
    const waiting: Array<FanoutItem> = []
    const fillGap = (upTo: number) =>
      Effect.gen(function* () {
        const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(options.recoveryDeadline)
        while (subscription.lastDelivered < upTo) {
          const found = yield* services.history.since(chatId, subscription.lastDelivered, upTo).pipe(Effect.option)
          if (found._tag === "Some") {
            for (const message of found.value) {
              if (subscription.ended) return
              if (message.seq !== subscription.lastDelivered + 1) continue
              sendTextUnsafe(messageFrame(message))
              subscription.lastDelivered = message.seq
            }
          }
          if (subscription.lastDelivered >= upTo || (yield* Clock.currentTimeMillis) >= deadline) break
          yield* Effect.sleep(Duration.millis(50))
        }
      }).pipe(
        Effect.ensuring(
          Effect.sync(() => {
            // Filled or not (the client can still resubscribe with sinceSeq), live delivery resumes.
            filling = false
            const held = waiting.splice(0)
            if (subscriptions.get(chatId) === subscription) for (const item of held) deliver(item)
          })
        )
      )
    const deliver = (item: FanoutItem): void => {
      if (subscription.ended) return
      if (item.seq > 0) {
        if (filling) {
          waiting.push(item)
          return
        }
        if (item.seq <= subscription.lastDelivered) return
        if (item.seq > subscription.lastDelivered + 1 && subscription.lastDelivered > 0) {
          filling = true
          waiting.push(item)
          // In the subscription's scope: unsubscribing stops the fill.
          runFork(Effect.forkIn(fillGap(item.seq - 1), scope))
          return
        }
        subscription.lastDelivered = item.seq
        writeLive(item)
        return
      } else if (item.from === user.id) {
        // Typing and read signals are for the others.
        return
      } else if (item.from === undefined && endsSubscription(item.frame, user.id)) {
        // Removed from the chat, or the chat is gone: say so, then stop —
        // at once, for the rest of this batch and anything held by a fill.
        subscription.ended = true
        sendTextUnsafe(item.frame)
        runFork(unsubscribe(chatId))
        return
      }
      sendTextUnsafe(item.frame)
    }
    // Live first, buffered until recovery is done, so nothing published
    // meanwhile is missed.
    const pendingLive: Array<FanoutItem> = []
    let recovering = true
    const removeListener = yield* services.feeds.listen(chatId, (items) => {
      if (recovering) {
        pendingLive.push(...items)
        return
      }
      for (const item of items) deliver(item)
    })
    yield* Scope.addFinalizer(scope, removeListener)

    // Unknown when the store cannot be read: then the seqs alone decide.
    const epoch = Option.getOrUndefined(yield* Effect.option(services.history.epoch(chatId)))
    const otherEpoch =
      sinceSeq !== undefined && clientEpoch !== undefined && epoch !== undefined && clientEpoch !== epoch
    const recovery = otherEpoch ? yield* reset(chatId) : yield* recover(chatId, sinceSeq, pendingLive)
    yield* send(
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
        yield* sendText(messageFrame(message))
        subscription.lastDelivered = message.seq
      }
    }
    if (sinceSeq === undefined) subscription.lastDelivered = Math.max(subscription.lastDelivered, recovery.lastSeq)
    // What the client has is not this chat's history: it goes on from the real lastSeq.
    if (recovery.reset) subscription.lastDelivered = recovery.lastSeq
    yield* send({ type: "presence", chatId, online: yield* services.presence.online(chatId) })
    for (const item of pendingLive) deliver(item)
    pendingLive.length = 0
    recovering = false
  })

  /** A client whose seqs name nothing in this chat (another epoch): it starts again from the chat's lastSeq. */
  const reset = (chatId: ChatId) =>
    services.history.lastSeq(chatId).pipe(
      Effect.orElseSucceed(() => 0),
      Effect.map((lastSeq) => ({ lastSeq, recovered: false, reset: true, messages: [] as Array<Message> }))
    )

  /** What a subscriber missed after `sinceSeq`, made contiguous with the live buffer when it can be. */
  const recover = (chatId: ChatId, sinceSeq: number | undefined, pendingLive: ReadonlyArray<FanoutItem>) =>
    Effect.gen(function* () {
      const currentLastSeq = services.history.lastSeq(chatId).pipe(Effect.orElseSucceed(() => 0))
      let lastSeq = yield* currentLastSeq
      if (sinceSeq === undefined) return { lastSeq, recovered: true, reset: false, messages: [] }
      const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(options.recoveryDeadline)
      const firstLive = () => pendingLive.find((item) => item.seq > 0)?.seq
      // A client claiming more than the chat holds here: the store may trail
      // the live stream (or a failed node's partitions have not moved yet),
      // so give it until the deadline. Past that, the answer is the truth as
      // this node knows it — recovered:false and its lastSeq, never
      // recovered:true — while delivery still goes on after sinceSeq: within
      // one epoch those seqs are the chat's, and the client must not get
      // them twice. A history that was lost has another epoch (`reset`).
      while (sinceSeq > Math.max(lastSeq, (firstLive() ?? 0) - 1)) {
        if ((yield* Clock.currentTimeMillis) >= deadline)
          return { lastSeq, recovered: false, reset: false, messages: [] }
        yield* Effect.sleep(Duration.millis(50))
        lastSeq = yield* currentLastSeq
      }
      const messages: Array<Message> = []
      let known = sinceSeq
      while (true) {
        const live = firstLive()
        const target = live === undefined ? lastSeq : live - 1
        if (known >= target) break
        const found = yield* services.history.since(chatId, known, target).pipe(Effect.option)
        if (found._tag === "Some") {
          for (const message of found.value) {
            if (message.seq === known + 1) {
              messages.push(message)
              known = message.seq
            }
          }
        }
        if (known >= target) break
        if ((yield* Clock.currentTimeMillis) >= deadline) {
          return { lastSeq: Math.max(lastSeq, known), recovered: false, reset: false, messages }
        }
        yield* Effect.sleep(Duration.millis(50))
      }
      return { lastSeq: Math.max(lastSeq, known), recovered: true, reset: false, messages }
    })

  // --- frames ---------------------------------------------------------------
  const handle = (frame: ClientFrame, traced: boolean): Effect.Effect<void> => {
    switch (frame.type) {
      case "auth":
        return services.accounts.authenticateSession(frame.token).pipe(
          Effect.flatMap((again) =>
            again.user.id === user.id
              ? Effect.sync(() => {
                  expiresAt = again.expiresAt
                  if (again.familyId !== familyId) {
                    // A token of another login: the session now ends with that one.
                    unregister?.()
                    familyId = again.familyId
                    unregister = services.register(user.id, familyId, socket)
                  }
                }).pipe(Effect.andThen(send(withRef({ type: "ready", userId: user.id, sessionId }, frame.ref))))
              : close(CloseCode.unauthorized, "a session cannot change user")
          ),
          Effect.catch(() => close(CloseCode.unauthorized, "unauthorized"))
        )
      case "ping":
        return send(withRef({ type: "pong" }, frame.ref))
      case "subscribe":
        return subscribe(frame.chatId, frame.sinceSeq, frame.epoch, frame.ref).pipe(
          Effect.catchTags({
            Unavailable: (error) => sendError(error, frame.ref),
            CacheError: (error) =>
              Effect.logWarning("subscribe failed: fanout unavailable", error).pipe(
                Effect.andThen(
                  sendError(new Unavailable({ message: "live delivery is unavailable, try again" }), frame.ref)
                )
              )
          })
        )
      case "unsubscribe":
        return unsubscribe(frame.chatId).pipe(
          Effect.andThen(send(withRef({ type: "unsubscribed", chatId: frame.chatId }, frame.ref)))
        )
      case "send":
        // Sends run concurrently (the ingest batches them); each answers on its own.
        // At most `maxInFlightSends` sends wait for the log at once; past that
        // the reader waits, the inbound queue fills, and the socket is paused
        // (TCP back-pressure to the client) until it drains.
        return sendPermits.take(1).pipe(
          Effect.andThen(
            services.ingest.send(user.id, frame.chatId, frame.clientMsgId, frame.body).pipe(
              Effect.tap(() =>
                Effect.sync(() => {
                  rateLimitedInARow = 0
                })
              ),
              Effect.flatMap((accepted) =>
                send(withRef({ type: "ack", clientMsgId: accepted.clientMsgId, id: accepted.id }, frame.ref))
              ),
              Effect.catch((error) =>
                error._tag === "RateLimited" ? limited(error.message, frame.ref) : sendError(error, frame.ref)
              ),
              Effect.ensuring(sendPermits.release(1)),
              (effect) =>
                !traced
                  ? effect
                  : effect.pipe(
                      Effect.withSpan(
                        "Session.send",
                        { attributes: { "harmony.chat.id": frame.chatId, "harmony.client_msg_id": frame.clientMsgId } },
                        noStackTrace
                      )
                    ),
              Effect.forkIn(sessionScope),
              Effect.asVoid
            )
          )
        )
      case "typing": {
        // Typing is ephemeral: at most one signal per chat per interval.
        const now = Date.now()
        const interval = Duration.toMillis(options.typingInterval)
        if ((lastTyping.get(frame.chatId) ?? 0) + interval > now) return Effect.void
        // Chats typed in more than an interval ago are forgotten: the map stays small.
        if (lastTyping.size >= 256)
          for (const [chat, at] of lastTyping) if (at + interval <= now) lastTyping.delete(chat)
        lastTyping.set(frame.chatId, now)
        return services.membership.roleOf(frame.chatId, user.id).pipe(
          Effect.flatMap((role) =>
            role._tag === "None"
              ? sendErrorFrame("not_found", `chat ${frame.chatId} not found`, frame.ref)
              : services.fanout.publishFrame(frame.chatId, user.id, {
                  type: "typing",
                  chatId: frame.chatId,
                  userId: user.id
                })
          ),
          Effect.catchTags({
            Unavailable: (error) => sendError(error, frame.ref),
            CacheError: (error) => Effect.logWarning("typing not published", error)
          })
        )
      }
      case "read":
        // Membership first (cached), so a stranger's read costs no store lookup.
        return services.membership.roleOf(frame.chatId, user.id).pipe(
          Effect.flatMap((role) =>
            role._tag === "None"
              ? sendErrorFrame("not_found", `chat ${frame.chatId} not found`, frame.ref)
              : Effect.gen(function* () {
                  const seq = yield* services.history.clampToLastSeq(frame.chatId, frame.seq)
                  yield* services.chats.markRead(user.id, frame.chatId, seq)
                  yield* services.fanout.publishFrame(frame.chatId, user.id, {
                    type: "read",
                    chatId: frame.chatId,
                    userId: user.id,
                    seq
                  })
                })
          ),
          Effect.catchTags({
            CacheError: (error) => Effect.logWarning("read not published", error),
            NotFound: (error) => sendError(error, frame.ref),
            Unavailable: (error) => sendError(error, frame.ref)
          })
        )
    }
  }

  const sendPermits = yield* Semaphore.make(options.maxInFlightSends)
  let malformed = 0
  const frameBuckets = frameBucketsOf(options.frameLimits)
  const lastTyping = new Map<ChatId, number>()
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
        return yield* sendErrorFrame(
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
  const loop = Queue.take(inbound).pipe(
    Effect.flatMap((input) => {
      const traced = tracing()
      return !traced
        ? onInput(input, false)
        : onInput(input, true).pipe(
            Effect.withSpan(
              "Session.frame",
              { kind: "server", root: true, attributes: { "harmony.session.id": sessionId } },
              noStackTrace
            )
          )
    }),
    Effect.forever,
    Effect.catchIf(Cause.isDone, () => Effect.void)
  )
  // However the session ends, its presence in every chat ends with it.
  yield* Effect.addFinalizer(() => Effect.forEach([...subscriptions.keys()], unsubscribe, { discard: true }))
  const reader = yield* Effect.forkIn(loop, sessionScope)
  yield* Effect.raceFirst(Fiber.await(reader), Deferred.await(closed))
})

const Signal = Schema.fromJsonString(
  Schema.Struct({ type: Schema.Literals(["member_removed", "chat_deleted"]), userId: Schema.optional(Schema.String) })
)
const decodeSignal = Schema.decodeUnknownOption(Signal)

/** Whether a membership signal ends this user's subscription to the chat. */
const endsSubscription = (frame: string, userId: string) => {
  const signal = Option.getOrUndefined(decodeSignal(frame))
  return signal !== undefined && (signal.type === "chat_deleted" || signal.userId === userId)
}

/** The `ref` of a frame that failed to decode, so its error can still answer it. */
const decodeRef = Schema.decodeUnknownOption(Schema.fromJsonString(Schema.Struct({ ref: Schema.String })))
const refOf = (text: string): string | undefined => Option.getOrUndefined(decodeRef(text))?.ref

const oneLine = (text: string) => text.replace(/\s*\n\s*/g, " ").trim()

/** Spans of the hot path skip capturing a call site. */
const noStackTrace = { captureStackTrace: false } as const
