/**
 * Harmony's typed client for Node and browsers: the HTTP calls and one
 * WebSocket that survives everything a real network does to it.
 *
 * Everything the server answers is decoded with the schemas the server
 * encodes with (src/schema, and the HTTP calls are derived from the server's
 * `HttpApi`), and every failure is a `HarmonyError` carrying the contract's
 * `code`. Inside it is Effect; `createClient` puts a plain Promise/callback
 * face on it, and `client.effect` keeps the Effect one. This module puts the
 * parts together:
 * - Http.ts: the calls derived from src/http/Api.ts; Auth.ts: the tokens,
 *   refreshed at 80 % of their life (one refresh in flight), a 401 refreshes
 *   and retries once;
 * - Connection.ts: the WebSocket, opened lazily on the first `subscribe`,
 *   `send` or `connect`, reconnected with a jittered exponential backoff;
 * - Subscriptions.ts: every chat resubscribed with `sinceSeq` after a drop or
 *   a gap, so nothing is missed or doubled;
 * - PendingSends.ts: a send keeps its `clientMsgId` and is (re)sent on every
 *   connection until its `ack`;
 * - Events.ts: the `on` handlers and the status.
 * The background work runs in fibers of one scope that `close()` ends.
 */
import { Duration, Effect, Exit, Schedule, Schema, Scope } from "effect"
import * as Retry from "../Retry.ts"
import { type ChatId, Session, type UserId } from "../schema/Domain.ts"
import { ClientFrame, SendFrame, SubscribeFrame } from "../schema/Protocol.ts"
import type { ServerFrame } from "../schema/ServerFrames.ts"
import { closed, jwtExpiry, makeAuth, notLoggedIn } from "./Auth.ts"
import { type Connection, makeSocket } from "./Connection.ts"
import { makeEvents, reportAppError } from "./Events.ts"
import { fromWire, HarmonyError } from "./HarmonyError.ts"
import { promiseFacade } from "./Facade.ts"
import { type ApiClient, makeHttp } from "./Http.ts"
import { makePendingSends, newClientMsgId } from "./PendingSends.ts"
import { makeSubscriptions } from "./Subscriptions.ts"
import type {
  ChangeAccepted,
  ClientOptions,
  HarmonyClient,
  HarmonyClientEffect,
  HistoryPage,
  StoredSession
} from "./Types.ts"

const decodeClientFrame = Schema.decodeUnknownExit(ClientFrame)
/** Attempts of a change after a transient failure (with the reconnect backoff between them). */
const ChangeRetries = 8
const badRequest = (message: string) => new HarmonyError({ code: "bad_request", message })

/*
 * Ids go to the server as the app gave them: the server judges them (a
 * malformed one answers `not_found` or `bad_request`, as for any client).
 */
const asChatId = (id: string) => id as ChatId
const asUserId = (id: string) => id as UserId

/** Builds the client (nothing happens on the network until it is used). */
export const makeClient = (options: ClientOptions): { effect: HarmonyClientEffect; facade: HarmonyClient } => {
  const baseUrl = options.baseUrl.replace(/\/+$/, "")
  const initialDelay = Duration.millis(options.reconnect?.initialDelayMs ?? 250)
  /** The one retry policy (capped exponential, jittered: a fleet of clients does not reconnect in lockstep). */
  const backoff = Retry.backoff(initialDelay, Duration.millis(options.reconnect?.maxDelayMs ?? 10_000))

  // Background work (the connection, the refresh timer, retries) runs in fibers of this scope.
  const scope = Scope.makeUnsafe()
  const fork = (effect: Effect.Effect<void>) => {
    Effect.runSync(Effect.forkIn(effect, scope))
  }
  let isClosed = false
  /** The app's `onSession`; if it throws, the tokens are still taken. */
  const tellApp = (session: Session | null) => {
    try {
      options.onSession?.(session)
    } catch (error) {
      reportAppError(error)
    }
  }

  const events = makeEvents()
  const http = makeHttp(options.fetch ?? ((input, init) => globalThis.fetch(input, init)), baseUrl)
  const auth = makeAuth({
    http,
    scope,
    backoff,
    onTokens: (session) => {
      tellApp(session)
      socket.current()?.send({ type: "auth", token: session.accessToken })
    },
    onDead: (error) => endSession(error, true)
  })
  const subscriptions = makeSubscriptions({
    events,
    current: () => socket.current(),
    retryDelay: Duration.max(initialDelay, Duration.seconds(1)),
    fork
  })
  const sends = makePendingSends({ current: () => socket.current(), backoff, fork })
  const socket = makeSocket({
    url: `${baseUrl.replace(/^http/, "ws")}/v1/ws`,
    WebSocket: options.WebSocket ?? globalThis.WebSocket,
    backoff,
    firstDelay: Schedule.spaced(initialDelay).pipe(Schedule.jittered),
    scope,
    auth,
    events,
    onReady: (connection) => {
      // Everything the app wants, again: every subscription from its last seq, every unacked send.
      subscriptions.resubscribeAll(connection)
      sends.resendAll(connection)
    },
    onFrame: (connection, frame) => onFrame(connection, frame),
    onEnd: () => subscriptions.onConnectionEnd()
  })

  const onFrame = (connection: Connection, frame: ServerFrame) => {
    switch (frame.type) {
      case "subscribed":
        connection.answered(frame.ref)
        return subscriptions.onSubscribed(frame.chatId, frame.lastSeq, frame.recovered, frame.epoch)
      case "message":
        return subscriptions.onEntry(connection, frame.message)
      // Changes are entries of the chat's log too: each has its seq, in order among the messages.
      case "message_edited":
      case "message_deleted":
      case "reaction":
        return subscriptions.onEntry(connection, frame)
      case "ack":
        connection.answered(frame.ref)
        return sends.onAck(frame.clientMsgId, frame.id)
      case "error": {
        const request = connection.answered(frame.ref)
        const error = fromWire(frame.code, frame.message)
        if (request?.kind === "subscribe") return subscriptions.onError(connection, request.chatId, error)
        if (request?.kind === "send") return sends.onError(connection, request.clientMsgId, error)
        return events.emit("error", error)
      }
      case "ready":
      case "unsubscribed":
      case "pong":
        return
      case "chat_deleted":
        subscriptions.drop(frame.chatId, new HarmonyError({ code: "not_found", message: "the chat was deleted" }))
        return events.emit("chat_deleted", { chatId: frame.chatId })
      case "member_removed":
        // Removed: the server ended the subscription; resubscribing would only answer not_found.
        if (frame.userId === auth.session()?.user.id) {
          subscriptions.drop(frame.chatId, new HarmonyError({ code: "not_found", message: "removed from the chat" }))
        }
        return events.emit("member_removed", { chatId: frame.chatId, userId: frame.userId })
      // The user's own channel (docs/protocol.md "The user's own channel").
      case "chat_added":
        return events.emit("chat_added", { chat: frame.chat, lastSeq: frame.lastSeq, lastReadSeq: frame.lastReadSeq })
      case "chat_removed":
        subscriptions.drop(frame.chatId, new HarmonyError({ code: "not_found", message: "removed from the chat" }))
        return events.emit("chat_removed", { chatId: frame.chatId })
      case "chat_updated":
        return events.emit("chat_updated", { chat: frame.chat })
      case "unread":
        return events.emit("unread", { chatId: frame.chatId, lastSeq: frame.lastSeq })
      case "member_added":
      case "join":
      case "leave":
        return events.emit(frame.type, { chatId: frame.chatId, userId: frame.userId })
      case "typing":
        return events.emit("typing", { chatId: frame.chatId, userId: frame.userId })
      case "read":
        return events.emit("read", { chatId: frame.chatId, userId: frame.userId, seq: frame.seq })
      case "presence":
        return events.emit("presence", { chatId: frame.chatId, online: frame.online })
    }
  }

  // --- the session ----------------------------------------------------------------------------

  /**
   * Forgets the session: the socket closes, waiting calls fail with `error`,
   * and (when `tell`) the app learns the tokens are gone.
   */
  const endSession = (error: HarmonyError, tell: boolean): Effect.Effect<void> =>
    Effect.gen(function* () {
      const hadTokens = yield* auth.clear
      if (hadTokens && tell) tellApp(null)
      yield* socket.stop(error)
      subscriptions.dropAll(error)
      sends.failAll(error)
      if (!isClosed) events.setStatus("idle")
      if (error.code === "unauthorized" && hadTokens) events.emit("error", error)
    })

  /** Starts a session from login/register/resume; another user's state is dropped first. */
  const begin = (session: Session, expiresAt: number) =>
    Effect.gen(function* () {
      if (isClosed) return yield* closed("login")
      const before = auth.session()
      if (before !== undefined && before.user.id !== session.user.id) {
        yield* endSession(closed("a different user logged in"), false)
      }
      auth.set(session, expiresAt)
      return session
    })

  /** Starts the connection if it is not running. */
  const ensureConnection = Effect.suspend(() => {
    if (isClosed) return Effect.fail(closed("connect"))
    if (auth.session() === undefined) return Effect.fail(notLoggedIn())
    socket.start()
    return Effect.void
  })

  // --- the calls ------------------------------------------------------------------------------

  const expiresIn = (session: Session) => Date.now() + session.expiresIn * 1000

  const register: HarmonyClientEffect["register"] = Effect.fn("Harmony.register")(function* (input) {
    const session = yield* http.call(http.api.auth.register({ payload: input }))
    return yield* begin(session, expiresIn(session))
  })

  const login: HarmonyClientEffect["login"] = Effect.fn("Harmony.login")(function* (input) {
    const session = yield* http.call(http.api.auth.login({ payload: input }))
    return yield* begin(session, expiresIn(session))
  })

  const resume: HarmonyClientEffect["resume"] = Effect.fn("Harmony.resume")(function* (stored: StoredSession) {
    const session = yield* Schema.decodeUnknownEffect(Session)(stored).pipe(
      Effect.mapError((error) => badRequest(`not a stored session: ${error.message}`))
    )
    // A stored session's expiresIn counted from when it was issued: the token's own expiry is better.
    yield* begin(session, jwtExpiry(session.accessToken) ?? expiresIn(session))
    return yield* me().pipe(
      Effect.tapError((error) =>
        error.code === "unauthorized" && auth.session() === session ? endSession(error, true) : Effect.void
      )
    )
  })

  const logout: HarmonyClientEffect["logout"] = Effect.fn("Harmony.logout")(function* () {
    const before = auth.session()
    yield* endSession(closed("logout"), true)
    if (before !== undefined) {
      // Best effort: the local session is gone either way.
      yield* http.call(http.api.auth.logout({ payload: { refreshToken: before.refreshToken } })).pipe(Effect.ignore)
    }
  })

  const me = () => auth.authed((api) => api.me.get())
  const chatParams = (chatId: string) => ({ params: { chatId: asChatId(chatId) } })

  /**
   * A change (edit, delete, reaction): one Idempotency-Key for every attempt,
   * so transient failures are retried without making the change twice.
   */
  const change = (
    idempotencyKey: string | undefined,
    call: (
      api: ApiClient,
      headers: { readonly "idempotency-key": string }
    ) => Effect.Effect<{ readonly id: string }, unknown>
  ): Effect.Effect<ChangeAccepted, HarmonyError> =>
    Effect.suspend(() => {
      const headers = { "idempotency-key": idempotencyKey ?? newClientMsgId() }
      return auth
        .authed((api) => call(api, headers))
        .pipe(
          Effect.retry({ schedule: backoff, while: (error) => error.transient, times: ChangeRetries }),
          Effect.map(({ id }) => ({ id }))
        )
    })
  const messageParams = (chatId: string, seq: number) => ({ params: { chatId: asChatId(chatId), seq } })

  const effect: HarmonyClientEffect = {
    register,
    login,
    resume,
    logout,
    me,
    chats: () => auth.authed((api) => api.me.chats()).pipe(Effect.map((answer) => answer.chats)),
    searchUsers: (prefix) =>
      auth.authed((api) => api.me.searchUsers({ query: { q: prefix } })).pipe(Effect.map((answer) => answer.users)),
    getUser: (userId) => auth.authed((api) => api.me.getUser({ params: { userId: asUserId(userId) } })),
    createChat: (input) =>
      auth.authed((api) => api.chats.create({ payload: { ...input, memberIds: input.memberIds.map(asUserId) } })),
    chat: (chatId) => auth.authed((api) => api.chats.get(chatParams(chatId))),
    renameChat: (chatId, name) => auth.authed((api) => api.chats.rename({ ...chatParams(chatId), payload: { name } })),
    deleteChat: (chatId) => auth.authed((api) => api.chats.delete(chatParams(chatId))).pipe(Effect.asVoid),
    addMembers: (chatId, userIds) =>
      auth.authed((api) =>
        api.chats.addMembers({ ...chatParams(chatId), payload: { userIds: userIds.map(asUserId) } })
      ),
    removeMember: (chatId, userId) =>
      auth
        .authed((api) => api.chats.removeMember({ params: { chatId: asChatId(chatId), userId: asUserId(userId) } }))
        .pipe(Effect.asVoid),
    setRole: (chatId, userId, role) =>
      auth.authed((api) =>
        api.chats.setRole({ params: { chatId: asChatId(chatId), userId: asUserId(userId) }, payload: { role } })
      ),
    history: (chatId, page) =>
      auth
        .authed((api) => api.messages.history({ ...chatParams(chatId), query: page }))
        .pipe(
          Effect.map(
            (answer): HistoryPage => ({
              messages: answer.messages,
              next: answer.nextBefore ?? answer.nextAfter ?? null
            })
          )
        ),
    search: ({ chatId, ...rest }) =>
      auth
        .authed((api) =>
          api.search.search({ query: chatId === undefined ? rest : { ...rest, chatId: asChatId(chatId) } })
        )
        .pipe(Effect.map((answer) => ({ hits: answer.hits, next: answer.nextBefore }))),
    // Over HTTP only: the server stores the position and itself tells the other
    // members' sessions (a `read` frame), so a socket frame too would tell them twice.
    markRead: (chatId, seq) =>
      auth.authed((api) => api.messages.read({ ...chatParams(chatId), payload: { seq } })).pipe(Effect.asVoid),
    readPositions: (chatId) =>
      auth.authed((api) => api.messages.readPositions(chatParams(chatId))).pipe(Effect.map((answer) => answer.reads)),
    editMessage: (chatId, seq, body, changeOptions) =>
      change(changeOptions?.idempotencyKey, (api, headers) =>
        api.messages.edit({ ...messageParams(chatId, seq), headers, payload: { body } })
      ),
    deleteMessage: (chatId, seq, changeOptions) =>
      change(changeOptions?.idempotencyKey, (api, headers) =>
        api.messages.deleteMessage({ ...messageParams(chatId, seq), headers })
      ),
    react: (chatId, seq, emoji, changeOptions) =>
      change(changeOptions?.idempotencyKey, (api, headers) =>
        api.messages.react({ params: { ...messageParams(chatId, seq).params, emoji }, headers })
      ),
    unreact: (chatId, seq, emoji, changeOptions) =>
      change(changeOptions?.idempotencyKey, (api, headers) =>
        api.messages.unreact({ params: { ...messageParams(chatId, seq).params, emoji }, headers })
      ),

    connect: Effect.fn("Harmony.connect")(function* () {
      yield* ensureConnection
      yield* socket.ready
    }),

    subscribe: Effect.fn("Harmony.subscribe")(function* (chatId, subscribeOptions) {
      const since = subscribeOptions?.sinceSeq
      const epoch = since === undefined ? undefined : subscribeOptions?.epoch
      const frame = {
        type: "subscribe",
        chatId,
        ...(since === undefined ? {} : { sinceSeq: since }),
        ...(epoch === undefined ? {} : { epoch })
      }
      if (Exit.isFailure(Schema.decodeUnknownExit(SubscribeFrame)(frame))) {
        return yield* badRequest(`not a valid subscription: ${JSON.stringify(frame)}`)
      }
      yield* ensureConnection
      return yield* subscriptions.subscribe(chatId, since, epoch)
    }),

    unsubscribe: (chatId) => Effect.sync(() => subscriptions.unsubscribe(chatId, closed("unsubscribed"))),

    send: Effect.fn("Harmony.send")(function* (chatId, body, sendOptions) {
      const clientMsgId = sendOptions?.clientMsgId ?? newClientMsgId()
      // The server counts malformed frames and closes after five: reject them here, with the server's own rules.
      const valid = Schema.decodeUnknownExit(SendFrame)({ type: "send", chatId, clientMsgId, body })
      if (Exit.isFailure(valid)) return yield* badRequest(`invalid send: ${valid.cause}`)
      yield* ensureConnection
      return yield* sends.send(chatId, body, clientMsgId)
    }),

    close: Effect.fn("Harmony.close")(function* () {
      if (isClosed) return
      isClosed = true
      yield* endSession(closed("close"), false)
      yield* Scope.close(scope, Exit.void)
      events.setStatus("closed")
    })
  }

  const typing = (chatId: string) => {
    const frame = { type: "typing", chatId }
    if (Exit.isSuccess(decodeClientFrame(frame))) socket.current()?.send(frame)
  }

  return { effect, facade: promiseFacade(effect, { auth, events, typing }) }
}

/** The Promise/callback client (see `HarmonyClient`); `client.effect` has the same calls as Effects. */
export const createClient = (options: ClientOptions): HarmonyClient => makeClient(options).facade
