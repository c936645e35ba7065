/**
 * Harmony's typed client for Node and browsers: the HTTP calls and one
 * WebSocket that survives everything a real network does to it.
 *
 * Everything the server answers is decoded with the schemas the server
 * encodes with (src/schema), and every failure is a `HarmonyError` carrying
 * the contract's `code`. Inside it is Effect (the calls are `Effect.fn`s, the
 * backoff is a jittered exponential `Schedule`, the background work runs in
 * fibers of one scope that `close()` ends); `createClient` puts a plain
 * Promise/callback face on it, and `client.effect` keeps the Effect one.
 *
 * The connection's promises, and how it keeps them:
 * - The WebSocket opens lazily, on the first `subscribe`, `send` or
 *   `connect`, and authenticates with the access token.
 * - After any drop it reconnects with exponential backoff and jitter, then
 *   resubscribes every chat with `sinceSeq` = the last seq the app saw, so
 *   nothing is missed; messages at or below it are dropped, so nothing is
 *   doubled. A message past the next seq (a gap) resubscribes the same way.
 * - A send keeps its `clientMsgId` and is (re)sent on every connection until
 *   its `ack`; the server stores `(chat, author, clientMsgId)` once.
 * - The access token is refreshed at 80 % of its life (one refresh in flight,
 *   however many callers need it: a refresh token reused after the server's
 *   grace period revokes the whole login) and the open socket re-authenticates
 *   with the new one.
 */
import { Deferred, Duration, Effect, Exit, Fiber, Option, Schedule, Schema, Scope } from "effect"
import { Chat, ChatSummary, Message, ReadPosition, Session, User } from "../schema/Domain.ts"
import { ErrorBody } from "../schema/Errors.ts"
import { ClientFrame, SendFrame, SubscribeFrame } from "../schema/Protocol.ts"
import { decodeServerFrame, type ServerFrame } from "../schema/ServerFrames.ts"
import { fromWire, HarmonyError } from "./HarmonyError.ts"

// --- the public shape ------------------------------------------------------------------------

/**
 * The WebSocket's state: `idle` (not wanted yet, or logged out), `connecting`
 * (until the first connection opens), `open` (authenticated), `reconnecting`
 * (an open connection was lost; trying again), `closed` (after `close()`).
 */
export type Status = "idle" | "connecting" | "open" | "reconnecting" | "closed"

export interface ClientOptions {
  /** `"http://host:port"`; the WebSocket URL is derived from it (http → ws, + "/v1/ws"). */
  readonly baseUrl: string
  /** Defaults to `globalThis.fetch`. */
  readonly fetch?: typeof fetch
  /** Defaults to `globalThis.WebSocket`. */
  readonly WebSocket?: typeof WebSocket
  /** Reconnect backoff: exponential from `initialDelayMs` (250) to `maxDelayMs` (10 000), each delay jittered ±20 %. */
  readonly reconnect?: { readonly initialDelayMs?: number; readonly maxDelayMs?: number }
  /** Called whenever the tokens change (login, refresh, logout → null), so apps can persist them. */
  readonly onSession?: (session: Session | null) => void
}

export interface SubscribeResult {
  readonly lastSeq: number
  readonly recovered: boolean
}

export interface Accepted {
  readonly id: string
  readonly clientMsgId: string
}

export interface HistoryPage {
  readonly messages: ReadonlyArray<Message>
  /** The cursor for the next page the same way (`before` or `after`), or null at the end. */
  readonly next: number | null
}

export interface ClientEvents {
  /** Decoded; each (chatId, seq) exactly once, in seq order per chat. */
  readonly message: Message
  readonly typing: { readonly chatId: string; readonly userId: string }
  readonly read: { readonly chatId: string; readonly userId: string; readonly seq: number }
  readonly presence: { readonly chatId: string; readonly online: ReadonlyArray<string> }
  readonly join: { readonly chatId: string; readonly userId: string }
  readonly leave: { readonly chatId: string; readonly userId: string }
  readonly member_added: { readonly chatId: string; readonly userId: string }
  readonly member_removed: { readonly chatId: string; readonly userId: string }
  readonly chat_deleted: { readonly chatId: string }
  readonly status: Status
  /** Server error frames not tied to a pending call, and connection problems. */
  readonly error: HarmonyError
  /**
   * The server could not replay what this client missed (`recovered:false`):
   * messages `fromSeq..toSeq` will not arrive live — fetch them with
   * `history(chatId, { after: fromSeq - 1 })`. Live delivery goes on after `toSeq`.
   */
  readonly gap: { readonly chatId: string; readonly fromSeq: number; readonly toSeq: number }
}

export interface RegisterInput {
  readonly username: string
  readonly password: string
  readonly displayName?: string
}
export interface LoginInput {
  readonly username: string
  readonly password: string
}
export interface CreateChatInput {
  readonly name?: string
  readonly kind: "group" | "direct"
  readonly memberIds: ReadonlyArray<string>
}
export interface HistoryQuery {
  readonly before?: number
  readonly after?: number
  readonly limit?: number
}

/** A stored session: a `Session` or its JSON (e.g. from localStorage). */
export type StoredSession = Session | typeof Session.Encoded

/** The client as Effects: every call fails with `HarmonyError` only. */
export interface HarmonyClientEffect {
  register(input: RegisterInput): Effect.Effect<Session, HarmonyError>
  login(input: LoginInput): Effect.Effect<Session, HarmonyError>
  resume(session: StoredSession): Effect.Effect<User, HarmonyError>
  logout(): Effect.Effect<void>
  me(): Effect.Effect<User, HarmonyError>
  chats(): Effect.Effect<ReadonlyArray<ChatSummary>, HarmonyError>
  searchUsers(prefix: string): Effect.Effect<ReadonlyArray<User>, HarmonyError>
  /** One user by id (a message's author, a chat member); a closed account answers as "Deleted user". */
  getUser(userId: string): Effect.Effect<User, HarmonyError>
  createChat(input: CreateChatInput): Effect.Effect<Chat, HarmonyError>
  chat(chatId: string): Effect.Effect<Chat, HarmonyError>
  renameChat(chatId: string, name: string): Effect.Effect<Chat, HarmonyError>
  deleteChat(chatId: string): Effect.Effect<void, HarmonyError>
  addMembers(chatId: string, userIds: ReadonlyArray<string>): Effect.Effect<Chat, HarmonyError>
  removeMember(chatId: string, userId: string): Effect.Effect<void, HarmonyError>
  history(chatId: string, page: HistoryQuery): Effect.Effect<HistoryPage, HarmonyError>
  markRead(chatId: string, seq: number): Effect.Effect<void, HarmonyError>
  /** Every member's read position (read receipts that survive a reload; live ones arrive as `read` events). */
  readPositions(chatId: string): Effect.Effect<ReadonlyArray<ReadPosition>, HarmonyError>
  connect(): Effect.Effect<void, HarmonyError>
  subscribe(chatId: string, options?: { readonly sinceSeq?: number }): Effect.Effect<SubscribeResult, HarmonyError>
  unsubscribe(chatId: string): Effect.Effect<void>
  send(chatId: string, body: string, options?: { readonly clientMsgId?: string }): Effect.Effect<Accepted, HarmonyError>
  close(): Effect.Effect<void>
}

export interface HarmonyClient {
  /** The logged-in user, if any. */
  readonly user: User | undefined
  readonly status: Status
  /** The same client as Effects, for Effect programs. */
  readonly effect: HarmonyClientEffect
  register(input: RegisterInput): Promise<Session>
  login(input: LoginInput): Promise<Session>
  /** Starts from stored tokens: refreshes if the access token expired; rejects with `unauthorized` if the refresh token is dead. */
  resume(session: StoredSession): Promise<User>
  /** Revokes the tokens (best effort: local state is cleared even if the server cannot be reached). */
  logout(): Promise<void>
  me(): Promise<User>
  chats(): Promise<ReadonlyArray<ChatSummary>>
  searchUsers(prefix: string): Promise<ReadonlyArray<User>>
  /** One user by id (a message's author, a chat member); a closed account answers as "Deleted user". */
  getUser(userId: string): Promise<User>
  createChat(input: CreateChatInput): Promise<Chat>
  chat(chatId: string): Promise<Chat>
  renameChat(chatId: string, name: string): Promise<Chat>
  deleteChat(chatId: string): Promise<void>
  addMembers(chatId: string, userIds: ReadonlyArray<string>): Promise<Chat>
  removeMember(chatId: string, userId: string): Promise<void>
  history(chatId: string, page: HistoryQuery): Promise<HistoryPage>
  /** HTTP `POST /read`: stores the position; the server sends the other members a `read` frame. */
  markRead(chatId: string, seq: number): Promise<void>
  /** Every member's read position (read receipts that survive a reload; live ones arrive as `read` events). */
  readPositions(chatId: string): Promise<ReadonlyArray<ReadPosition>>
  /** Opens the WebSocket now instead of on the first subscribe/send; resolves once it is authenticated. */
  connect(): Promise<void>
  subscribe(chatId: string, options?: { readonly sinceSeq?: number }): Promise<SubscribeResult>
  unsubscribe(chatId: string): Promise<void>
  /** Resolves on the ack; retries across reconnects with the same clientMsgId; rejects only on a non-transient error. */
  send(chatId: string, body: string, options?: { readonly clientMsgId?: string }): Promise<Accepted>
  /** Ephemeral: sent only if the socket is open right now. */
  typing(chatId: string): void
  /** Returns a function that removes the handler. */
  on<K extends keyof ClientEvents>(event: K, handler: (payload: ClientEvents[K]) => void): () => void
  /** Ends the client for good: the socket closes, pending calls reject with `closed`. The tokens stay valid. */
  close(): Promise<void>
}

// --- wire schemas of the HTTP answers that are not domain types ----------------------------------

const ChatsAnswer = Schema.Struct({ chats: Schema.Array(ChatSummary) })
const UsersAnswer = Schema.Struct({ users: Schema.Array(User) })
const ReadsAnswer = Schema.Struct({ reads: Schema.Array(ReadPosition) })
const HistoryAnswer = Schema.Struct({
  messages: Schema.Array(Message),
  nextBefore: Schema.optionalKey(Schema.NullOr(Schema.Int)),
  nextAfter: Schema.optionalKey(Schema.NullOr(Schema.Int))
})
const decodeErrorBody = Schema.decodeUnknownOption(Schema.fromJsonString(ErrorBody))
const decodeClientFrame = Schema.decodeUnknownExit(ClientFrame)
/** The `exp` claim of a JWT access token (the server's tokens are JWTs; anything else has no known expiry). */
const decodeJwtClaims = Schema.decodeUnknownOption(Schema.fromJsonString(Schema.Struct({ exp: Schema.Number })))

// --- small helpers -------------------------------------------------------------------------------

/** How long a connection attempt may take to open and authenticate before it counts as failed. */
const ConnectTimeoutMs = 15_000
/** With no frame for this long the socket is pinged; with none for 3× this long it is presumed dead. */
const HeartbeatMs = 15_000
/** Refresh at this fraction of the access token's life. */
const RefreshAt = 0.8
/** An access token this close to its expiry is refreshed before use. */
const ExpirySlackMs = 5_000

const closed = (what: string) => new HarmonyError({ code: "closed", message: `${what}: the client was closed` })
const notLoggedIn = () => new HarmonyError({ code: "unauthorized", message: "not logged in" })
const badRequest = (message: string) => new HarmonyError({ code: "bad_request", message })

/** A v4 UUID; `crypto.randomUUID` is missing on plain-http pages (not a secure context), `getRandomValues` is not. */
export const newClientMsgId = (): string => {
  if (typeof globalThis.crypto?.randomUUID === "function") return globalThis.crypto.randomUUID()
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16))
  bytes[6] = (bytes[6]! & 0x0f) | 0x40
  bytes[8] = (bytes[8]! & 0x3f) | 0x80
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

const jwtExpiry = (token: string): number | undefined => {
  const payload = token.split(".")[1]
  if (payload === undefined) return undefined
  try {
    const claims = decodeJwtClaims(atob(payload.replace(/-/g, "+").replace(/_/g, "/")))
    return Option.isSome(claims) ? claims.value.exp * 1000 : undefined
  } catch {
    return undefined
  }
}

// --- internal state ------------------------------------------------------------------------------

interface Tokens {
  readonly session: Session
  /** When the access token stops working (client clock). */
  readonly expiresAt: number
  /** When to refresh it. */
  readonly refreshAt: number
}

interface Subscription {
  /** The last seq handed to the app; undefined until the first `subscribed` (a subscription "from now"). */
  last: number | undefined
  /** Callers of `subscribe` waiting for the next `subscribed`. */
  waiters: Array<Deferred.Deferred<SubscribeResult, HarmonyError>>
  /** A resubscribe for a gap is in flight: later gaps wait for it. */
  resyncing: boolean
}

interface PendingSend {
  readonly chatId: string
  readonly body: string
  readonly clientMsgId: string
  readonly done: Deferred.Deferred<Accepted, HarmonyError>
  /** Retries after transient errors back off, per send. */
  retry: ((input: unknown) => Effect.Effect<unknown, unknown>) | undefined
}

/**
 * What a `ref` asked for, so an error finds its caller. Only frames with an
 * answer carry a ref; signals (typing, read, ping, re-auth, unsubscribe) do
 * not, so an error about one of those is an `error` event.
 */
type Request =
  | { readonly kind: "subscribe"; readonly chatId: string }
  | { readonly kind: "send"; readonly clientMsgId: string }

interface Connection {
  readonly socket: WebSocket
  /** The token it authenticated with (a 4001 with a newer token in hand needs no refresh). */
  readonly token: string
  ready: boolean
  ended: boolean
  lastFrameAt: number
  readonly requests: Map<string, Request>
}

interface Outcome {
  readonly code: number
  readonly reason: string
  readonly wasReady: boolean
  readonly token: string
}

// --- the client ----------------------------------------------------------------------------------

/** Builds the client (nothing happens on the network until it is used). */
export const makeClient = (options: ClientOptions): { effect: HarmonyClientEffect; facade: HarmonyClient } => {
  const baseUrl = options.baseUrl.replace(/\/+$/, "")
  const wsUrl = `${baseUrl.replace(/^http/, "ws")}/v1/ws`
  const fetchImpl: typeof fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init))
  const WebSocketImpl: typeof WebSocket = options.WebSocket ?? globalThis.WebSocket
  const initialDelayMs = options.reconnect?.initialDelayMs ?? 250
  const maxDelayMs = options.reconnect?.maxDelayMs ?? 10_000
  /** Capped exponential backoff, then jitter, so a fleet of clients does not reconnect in lockstep. */
  const backoff = Schedule.min([
    Schedule.exponential(Duration.millis(initialDelayMs)),
    Schedule.spaced(Duration.millis(maxDelayMs))
  ]).pipe(Schedule.jittered)
  /** A fresh backoff: each call of the result sleeps for the next delay. */
  const backoffStepper = Schedule.toStepWithSleep(backoff)

  // Background work (the connection, the refresh timer, retries) runs in fibers of this scope.
  const scope = Scope.makeUnsafe()
  const fork = <A, E>(effect: Effect.Effect<A, E>): Fiber.Fiber<A, E> => Effect.runSync(Effect.forkIn(effect, scope))

  let tokens: Tokens | undefined
  let status: Status = "idle"
  let isClosed = false
  let connectionFiber: Fiber.Fiber<void> | undefined
  let refreshTimer: Fiber.Fiber<void> | undefined
  let refreshing: Deferred.Deferred<Session, HarmonyError> | undefined
  let current: Connection | undefined
  let nextRef = 0
  const subscriptions = new Map<string, Subscription>()
  const pendingSends = new Map<string, PendingSend>()
  const readyWaiters: Array<Deferred.Deferred<void, HarmonyError>> = []
  const handlers = new Map<keyof ClientEvents, Set<(payload: any) => void>>()

  // --- events --------------------------------------------------------------------------------

  const emit = <K extends keyof ClientEvents>(event: K, payload: ClientEvents[K]) => {
    for (const handler of [...(handlers.get(event) ?? [])]) {
      // One broken handler must not break the client or the other handlers.
      try {
        handler(payload)
      } catch (error) {
        if (typeof globalThis.reportError === "function") globalThis.reportError(error)
        else console.error(error)
      }
    }
  }

  const on = <K extends keyof ClientEvents>(event: K, handler: (payload: ClientEvents[K]) => void) => {
    const set = handlers.get(event) ?? new Set()
    handlers.set(event, set)
    set.add(handler)
    return () => {
      set.delete(handler)
    }
  }

  /** The app's `onSession`; if it throws, the tokens are still taken. */
  const tellApp = (session: Session | null) => {
    try {
      options.onSession?.(session)
    } catch (error) {
      if (typeof globalThis.reportError === "function") globalThis.reportError(error)
      else console.error(error)
    }
  }

  const setStatus = (next: Status) => {
    if (status === next) return
    status = next
    emit("status", next)
  }

  // --- HTTP ----------------------------------------------------------------------------------

  /** One HTTP exchange: the answer's text on 2xx, else the contract's error. */
  const exchange = Effect.fnUntraced(function* (
    method: string,
    path: string,
    body: unknown,
    token: string | undefined
  ): Effect.fn.Return<string, HarmonyError> {
    const headers: Record<string, string> = {}
    if (body !== undefined) headers["content-type"] = "application/json"
    if (token !== undefined) headers.authorization = `Bearer ${token}`
    const response = yield* Effect.tryPromise({
      try: (signal) =>
        fetchImpl(`${baseUrl}${path}`, {
          method,
          headers,
          signal,
          ...(body === undefined ? {} : { body: JSON.stringify(body) })
        }),
      catch: (error) =>
        new HarmonyError({
          code: "network",
          message: `${method} ${path} failed: ${error instanceof Error ? error.message : String(error)}`
        })
    })
    const text = yield* Effect.tryPromise({
      try: () => response.text(),
      catch: () => new HarmonyError({ code: "network", message: `${method} ${path}: the answer broke off` })
    })
    if (response.ok) return text
    const wire = decodeErrorBody(text)
    const retryAfter = Number(response.headers.get("retry-after"))
    return yield* Option.isSome(wire)
      ? fromWire(
          wire.value.error.code,
          wire.value.error.message,
          response.status,
          retryAfter > 0 ? retryAfter : undefined
        )
      : new HarmonyError({
          code: response.status === 503 ? "unavailable" : "internal",
          message: `${method} ${path} answered ${response.status}`,
          status: response.status
        })
  })

  /** Decodes an answer with its schema; an answer off the contract is `internal`. */
  const decodeAnswer =
    <A>(schema: Schema.Codec<A, any>, what: string) =>
    (text: string): Effect.Effect<A, HarmonyError> =>
      Schema.decodeUnknownEffect(Schema.fromJsonString(schema))(text).pipe(
        Effect.mapError(
          (error) => new HarmonyError({ code: "internal", message: `unexpected answer to ${what}: ${error.message}` })
        )
      ) as Effect.Effect<A, HarmonyError>

  const anonymous = <A>(method: string, path: string, body: unknown, schema: Schema.Codec<A, any>) =>
    exchange(method, path, body, undefined).pipe(Effect.flatMap(decodeAnswer(schema, `${method} ${path}`)))

  /**
   * An authenticated call: a token that is about to expire is refreshed
   * first, and a 401 (it expired anyway, e.g. the machine slept) refreshes
   * once and tries again.
   */
  const authed = (method: string, path: string, body?: unknown): Effect.Effect<string, HarmonyError> =>
    Effect.gen(function* () {
      const token = yield* accessToken
      return yield* exchange(method, path, body, token).pipe(
        Effect.catchIf(
          (error) => error.code === "unauthorized",
          () => refreshAfter(token).pipe(Effect.flatMap((fresh) => exchange(method, path, body, fresh)))
        )
      )
    })

  const authedAs = <A>(schema: Schema.Codec<A, any>, method: string, path: string, body?: unknown) =>
    authed(method, path, body).pipe(Effect.flatMap(decodeAnswer(schema, `${method} ${path}`)))

  // --- tokens --------------------------------------------------------------------------------

  /** Takes new tokens: tells the app, re-authenticates the open socket, arms the refresh timer. */
  const setTokens = (session: Session, expiresAt: number) => {
    const lifeMs = session.expiresIn * 1000
    tokens = { session, expiresAt, refreshAt: expiresAt - (1 - RefreshAt) * lifeMs }
    tellApp(session)
    if (current?.ready) sendRaw(current, { type: "auth", token: session.accessToken })
    if (refreshTimer === undefined) {
      const fiber = fork(refreshLoop)
      refreshTimer = fiber
      fiber.addObserver(() => {
        if (refreshTimer === fiber) refreshTimer = undefined
      })
    }
  }

  /**
   * Sleeps until the current tokens' refresh time, refreshes, and again —
   * until there are no tokens. Transient failures are retried with backoff;
   * a dead refresh token ends the session (in `refresh`).
   */
  const refreshLoop: Effect.Effect<void> = Effect.gen(function* () {
    while (tokens !== undefined) {
      const wait = tokens.refreshAt - Date.now()
      if (wait > 0) {
        // Woken at least every minute: new tokens (a login, a refresh by a 401) move the time.
        yield* Effect.sleep(Duration.millis(Math.min(wait, 60_000)))
        continue
      }
      const outcome = yield* refresh.pipe(
        Effect.retry({ schedule: backoff, while: (error) => error.transient }),
        Effect.result
      )
      if (outcome._tag === "Failure") return
    }
  })

  /**
   * Refreshes the tokens. Concurrent callers share one request: the server
   * rotates the refresh token and, after a 5 s grace, treats a second use of
   * the old one as theft and revokes the whole login.
   */
  const refresh: Effect.Effect<Session, HarmonyError> = Effect.suspend(() => {
    if (refreshing !== undefined) return Deferred.await(refreshing)
    const done = Deferred.makeUnsafe<Session, HarmonyError>()
    refreshing = done
    fork(
      runRefresh().pipe(
        Effect.onExit((exit) =>
          Effect.sync(() => {
            refreshing = undefined
            Deferred.doneUnsafe(
              done,
              Exit.isSuccess(exit) || Exit.hasFails(exit) ? exit : Effect.fail(closed("refresh"))
            )
          })
        )
      )
    )
    return Deferred.await(done)
  })

  const runRefresh = Effect.fn("Harmony.refresh")(function* () {
    const before = tokens
    if (before === undefined) return yield* notLoggedIn()
    const answer = yield* anonymous(
      "POST",
      "/v1/auth/refresh",
      { refreshToken: before.session.refreshToken },
      Session
    ).pipe(
      // A lost answer is retried quickly, well inside the server's 5 s grace for the old token.
      Effect.retry({
        schedule: Schedule.exponential(Duration.millis(200)).pipe(Schedule.jittered, Schedule.upTo({ times: 3 })),
        while: (error) => error.code === "network"
      }),
      Effect.tapError((error) =>
        error.code === "unauthorized" && tokens === before ? endSession(error, true) : Effect.void
      )
    )
    // Logged out (or in as someone else) meanwhile: these tokens are not wanted any more.
    if (tokens !== before) return yield* notLoggedIn()
    setTokens(answer, Date.now() + answer.expiresIn * 1000)
    return answer
  })

  /** Refreshes unless someone already replaced `stale`; answers the token to use now. */
  const refreshAfter = (stale: string): Effect.Effect<string, HarmonyError> =>
    Effect.suspend(() =>
      tokens !== undefined && tokens.session.accessToken !== stale
        ? Effect.succeed(tokens.session.accessToken)
        : refresh.pipe(Effect.map((session) => session.accessToken))
    )

  /** The access token, refreshed first when it is (nearly) expired. */
  const accessToken: Effect.Effect<string, HarmonyError> = Effect.suspend(() => {
    if (tokens === undefined) return Effect.fail(notLoggedIn())
    if (Date.now() < tokens.expiresAt - ExpirySlackMs) return Effect.succeed(tokens.session.accessToken)
    return refreshAfter(tokens.session.accessToken)
  })

  /**
   * Forgets the session: the socket closes, waiting calls fail with `error`,
   * and (when `tell`) the app learns the tokens are gone.
   */
  const endSession = (error: HarmonyError, tell: boolean): Effect.Effect<void> =>
    Effect.gen(function* () {
      const hadTokens = tokens !== undefined
      tokens = undefined
      if (hadTokens && tell) tellApp(null)
      if (refreshTimer !== undefined) {
        const timer = refreshTimer
        refreshTimer = undefined
        yield* Fiber.interrupt(timer).pipe(Effect.forkIn(scope))
      }
      yield* stopConnection(error)
      for (const subscription of subscriptions.values()) failAll(subscription.waiters, error)
      subscriptions.clear()
      for (const pending of pendingSends.values()) Deferred.doneUnsafe(pending.done, Effect.fail(error))
      pendingSends.clear()
      if (!isClosed) setStatus("idle")
      if (error.code === "unauthorized" && hadTokens) emit("error", error)
    })

  const failAll = <A>(waiters: Array<Deferred.Deferred<A, HarmonyError>>, error: HarmonyError) => {
    for (const waiter of waiters.splice(0)) Deferred.doneUnsafe(waiter, Effect.fail(error))
  }

  /** Starts a session from login/register/refresh answers; another user's state is dropped first. */
  const begin = (session: Session, expiresAt: number) =>
    Effect.gen(function* () {
      if (isClosed) return yield* closed("login")
      if (tokens !== undefined && tokens.session.user.id !== session.user.id) {
        yield* endSession(closed("a different user logged in"), false)
      }
      setTokens(session, expiresAt)
      return session
    })

  // --- the WebSocket -------------------------------------------------------------------------

  /** Starts the connection loop if it is not running. */
  const ensureConnection = Effect.suspend(() => {
    if (isClosed) return Effect.fail(closed("connect"))
    if (tokens === undefined) return Effect.fail(notLoggedIn())
    if (connectionFiber === undefined) {
      const fiber = fork(connectionLoop)
      connectionFiber = fiber
      fiber.addObserver(() => {
        if (connectionFiber === fiber) connectionFiber = undefined
      })
    }
    return Effect.void
  })

  const stopConnection = (error: HarmonyError) =>
    Effect.gen(function* () {
      failAll(readyWaiters, error)
      const fiber = connectionFiber
      connectionFiber = undefined
      if (fiber !== undefined) yield* Fiber.interrupt(fiber)
    })

  /**
   * Connects, runs until the socket drops, and again, with backoff between
   * attempts. The backoff starts over after a connection that worked, so a
   * server restart costs ~initialDelay, not the delay of the last outage.
   */
  const connectionLoop: Effect.Effect<void> = Effect.gen(function* () {
    let step = yield* backoffStepper
    let everOpen = false
    while (true) {
      setStatus(everOpen ? "reconnecting" : "connecting")
      const token = yield* accessToken.pipe(Effect.result)
      if (token._tag === "Failure") {
        // No session any more (refresh said so and ended it), or the refresh could not get through.
        if (token.failure.code === "unauthorized" || token.failure.code === "closed") return
        emit("error", token.failure)
        yield* step(undefined).pipe(Effect.ignore)
        continue
      }
      const outcome = yield* openSocket(token.success)
      everOpen ||= outcome.wasReady
      switch (outcome.code) {
        case 4001: {
          // Unauthorized or expired: a refresh, unless newer tokens already arrived.
          const fresh = yield* refreshAfter(outcome.token).pipe(Effect.result)
          if (fresh._tag === "Failure" && (fresh.failure.code === "unauthorized" || fresh.failure.code === "closed")) {
            return
          }
          break
        }
        case 4029:
          // Rate limited for too long: going straight back would only be limited again.
          emit("error", new HarmonyError({ code: "rate_limited", message: "the server closed the connection (4029)" }))
          yield* step(undefined).pipe(Effect.ignore)
          continue
        case 4400:
        case 1009:
          // The server says this client sent bad frames: a bug here. Say so, and do not hammer it.
          emit(
            "error",
            new HarmonyError({
              code: "protocol",
              message: `the server closed the connection (${outcome.code} ${outcome.reason})`
            })
          )
          yield* step(undefined).pipe(Effect.ignore)
          continue
      }
      if (outcome.wasReady) step = yield* backoffStepper
      yield* step(undefined).pipe(Effect.ignore)
    }
  })

  /** One connection: open, authenticate, serve frames; answers how it ended. */
  const openSocket = (token: string): Effect.Effect<Outcome> =>
    Effect.callback<Outcome>((resume) => {
      let socket: WebSocket
      try {
        socket = new WebSocketImpl(wsUrl)
      } catch (error) {
        resume(Effect.succeed({ code: 1006, reason: String(error), wasReady: false, token }))
        return
      }
      const connection: Connection = {
        socket,
        token,
        ready: false,
        ended: false,
        lastFrameAt: Date.now(),
        requests: new Map()
      }
      const end = (code: number, reason: string) => {
        if (connection.ended) return
        connection.ended = true
        clearTimeout(connectTimer)
        clearInterval(heartbeat)
        if (current === connection) current = undefined
        for (const subscription of subscriptions.values()) subscription.resyncing = false
        try {
          if (socket.readyState === WebSocketImpl.CONNECTING || socket.readyState === WebSocketImpl.OPEN) {
            socket.close(1000)
          }
        } catch {
          // closing a broken socket: nothing more to do
        }
        resume(Effect.succeed({ code, reason, wasReady: connection.ready, token }))
      }
      const connectTimer = setTimeout(() => {
        if (!connection.ready) end(1006, "connecting timed out")
      }, ConnectTimeoutMs)
      // A half-open TCP connection (a sleeping laptop, a dead NAT entry) never closes by itself.
      const heartbeat = setInterval(() => {
        if (!connection.ready) return
        const silent = Date.now() - connection.lastFrameAt
        if (silent > 3 * HeartbeatMs) end(1006, "no answer to pings")
        else if (silent >= HeartbeatMs) sendRaw(connection, { type: "ping" })
      }, HeartbeatMs)
      socket.addEventListener("open", () => {
        if (connection.ended) return
        sendRaw(connection, { type: "auth", token })
      })
      socket.addEventListener("message", (event) => {
        if (connection.ended) return
        connection.lastFrameAt = Date.now()
        if (typeof event.data !== "string") {
          emit("error", new HarmonyError({ code: "internal", message: "the server sent a binary frame" }))
          return
        }
        const frame = decodeServerFrame(event.data)
        if (Exit.isFailure(frame)) {
          emit(
            "error",
            new HarmonyError({ code: "internal", message: `undecodable frame: ${event.data.slice(0, 200)}` })
          )
          return
        }
        onFrame(connection, frame.value)
      })
      socket.addEventListener("close", (event) => end(event.code, event.reason))
      // An error is always followed by a close; the close says how it ended.
      socket.addEventListener("error", () => {})
      // Interrupted (logout, close): hang up.
      return Effect.sync(() => end(1000, "client closed"))
    })

  /** Sends a frame as is (the caller validated it). */
  const sendRaw = (connection: Connection, frame: object) => {
    try {
      connection.socket.send(JSON.stringify(frame))
    } catch {
      // The socket is closing: its close event reconnects, and whatever waits on an answer is resent then.
    }
  }

  /** Sends a frame with a fresh ref, remembering what it asked for. */
  const sendFrame = (connection: Connection, frame: object, request: Request) => {
    const ref = `r${++nextRef}`
    connection.requests.set(ref, request)
    sendRaw(connection, { ...frame, ref })
  }

  const onReady = (connection: Connection) => {
    connection.ready = true
    current = connection
    setStatus("open")
    // Tokens refreshed while it was connecting: the server must know the new expiry.
    if (tokens !== undefined && tokens.session.accessToken !== connection.token) {
      sendRaw(connection, { type: "auth", token: tokens.session.accessToken })
    }
    for (const waiter of readyWaiters.splice(0)) Deferred.doneUnsafe(waiter, Effect.void)
    // Everything the app wants, again: every subscription from its last seq, every unacked send.
    for (const [chatId, subscription] of subscriptions) sendSubscribe(connection, chatId, subscription)
    for (const pending of pendingSends.values()) sendFrame(connection, sendFrameOf(pending), sendRequest(pending))
  }

  const sendSubscribe = (connection: Connection, chatId: string, subscription: Subscription) =>
    sendFrame(
      connection,
      { type: "subscribe", chatId, ...(subscription.last === undefined ? {} : { sinceSeq: subscription.last }) },
      { kind: "subscribe", chatId }
    )

  const sendFrameOf = (pending: PendingSend) => ({
    type: "send",
    chatId: pending.chatId,
    clientMsgId: pending.clientMsgId,
    body: pending.body
  })
  const sendRequest = (pending: PendingSend): Request => ({ kind: "send", clientMsgId: pending.clientMsgId })

  const onFrame = (connection: Connection, frame: ServerFrame) => {
    switch (frame.type) {
      case "ready":
        // A second `ready` answers a re-authentication: nothing to do.
        if (!connection.ready) onReady(connection)
        return
      case "subscribed":
        if (frame.ref !== undefined) connection.requests.delete(frame.ref)
        return onSubscribed(frame.chatId, frame.lastSeq, frame.recovered)
      case "message":
        return onMessage(connection, frame.message)
      case "ack": {
        if (frame.ref !== undefined) connection.requests.delete(frame.ref)
        const pending = pendingSends.get(frame.clientMsgId)
        if (pending === undefined) return
        pendingSends.delete(frame.clientMsgId)
        Deferred.doneUnsafe(pending.done, Effect.succeed({ id: frame.id, clientMsgId: frame.clientMsgId }))
        return
      }
      case "error":
        return onError(connection, frame.ref, fromWire(frame.code, frame.message))
      case "unsubscribed":
      case "pong":
        return
      case "chat_deleted":
        dropSubscription(frame.chatId, new HarmonyError({ code: "not_found", message: "the chat was deleted" }))
        return emit("chat_deleted", { chatId: frame.chatId })
      case "member_removed":
        // Removed: the server ended the subscription; resubscribing would only answer not_found.
        if (frame.userId === tokens?.session.user.id) {
          dropSubscription(frame.chatId, new HarmonyError({ code: "not_found", message: "removed from the chat" }))
        }
        return emit("member_removed", { chatId: frame.chatId, userId: frame.userId })
      case "member_added":
      case "join":
      case "leave":
        return emit(frame.type, { chatId: frame.chatId, userId: frame.userId })
      case "typing":
        return emit("typing", { chatId: frame.chatId, userId: frame.userId })
      case "read":
        return emit("read", { chatId: frame.chatId, userId: frame.userId, seq: frame.seq })
      case "presence":
        return emit("presence", { chatId: frame.chatId, online: frame.online })
    }
  }

  const onSubscribed = (chatId: string, lastSeq: number, recovered: boolean) => {
    const subscription = subscriptions.get(chatId)
    if (subscription === undefined) return
    subscription.resyncing = false
    if (subscription.last === undefined) {
      // Subscribed "from now": the server delivers what comes after lastSeq.
      subscription.last = lastSeq
    } else if (!recovered) {
      // The server could not replay what was missed; it delivers what comes after lastSeq
      // (anything replayed up to it is dropped here: the app refetches that range).
      const fromSeq = subscription.last + 1
      if (lastSeq >= fromSeq) emit("gap", { chatId, fromSeq, toSeq: lastSeq })
      subscription.last = Math.max(subscription.last, lastSeq)
    }
    for (const waiter of subscription.waiters.splice(0)) {
      Deferred.doneUnsafe(waiter, Effect.succeed({ lastSeq, recovered }))
    }
  }

  const onMessage = (connection: Connection, message: Message) => {
    const subscription = subscriptions.get(message.chatId)
    if (subscription === undefined || subscription.last === undefined) return
    if (message.seq <= subscription.last) return // seen already: a replay after a reconnect or a gap
    if (message.seq === subscription.last + 1) {
      subscription.last = message.seq
      emit("message", message)
      return
    }
    // A gap: ask for everything after the last seq seen; this and what follows come again in order.
    if (!subscription.resyncing) {
      subscription.resyncing = true
      sendSubscribe(connection, message.chatId, subscription)
    }
  }

  const onError = (connection: Connection, ref: string | undefined, error: HarmonyError) => {
    const request = ref === undefined ? undefined : connection.requests.get(ref)
    if (ref !== undefined) connection.requests.delete(ref)
    switch (request?.kind) {
      case "subscribe": {
        const subscription = subscriptions.get(request.chatId)
        if (subscription === undefined) return
        if (error.transient) {
          fork(
            Effect.sleep(Duration.millis(Math.max(initialDelayMs, 1000))).pipe(
              Effect.andThen(
                Effect.sync(() => {
                  if (current === connection && subscriptions.get(request.chatId) === subscription) {
                    sendSubscribe(connection, request.chatId, subscription)
                  }
                })
              )
            )
          )
          return
        }
        // No waiter (a resubscribe after a reconnect, say after removal while offline): the app hears it as an event.
        if (subscription.waiters.length === 0) emit("error", error)
        dropSubscription(request.chatId, error)
        return
      }
      case "send": {
        const pending = pendingSends.get(request.clientMsgId)
        if (pending === undefined) return
        if (!error.transient) {
          pendingSends.delete(request.clientMsgId)
          Deferred.doneUnsafe(pending.done, Effect.fail(error))
          return
        }
        fork(
          Effect.gen(function* () {
            pending.retry ??= yield* backoffStepper
            yield* pending.retry(undefined).pipe(Effect.ignore)
            // A reconnect meanwhile resent it already.
            if (current === connection && pendingSends.get(pending.clientMsgId) === pending) {
              sendFrame(connection, sendFrameOf(pending), sendRequest(pending))
            }
          })
        )
        return
      }
      default:
        emit("error", error)
    }
  }

  const dropSubscription = (chatId: string, error: HarmonyError) => {
    const subscription = subscriptions.get(chatId)
    if (subscription === undefined) return
    subscriptions.delete(chatId)
    failAll(subscription.waiters, error)
  }

  // --- the calls -----------------------------------------------------------------------------

  const register = Effect.fn("Harmony.register")(function* (input: RegisterInput) {
    const session = yield* anonymous("POST", "/v1/auth/register", input, Session)
    return yield* begin(session, Date.now() + session.expiresIn * 1000)
  })

  const login = Effect.fn("Harmony.login")(function* (input: LoginInput) {
    const session = yield* anonymous("POST", "/v1/auth/login", input, Session)
    return yield* begin(session, Date.now() + session.expiresIn * 1000)
  })

  const resume = Effect.fn("Harmony.resume")(function* (stored: StoredSession) {
    const session = yield* Schema.decodeUnknownEffect(Session)(stored).pipe(
      Effect.mapError((error) => badRequest(`not a stored session: ${error.message}`))
    )
    // A stored session's expiresIn counted from when it was issued: the token's own expiry is better.
    yield* begin(session, jwtExpiry(session.accessToken) ?? Date.now() + session.expiresIn * 1000)
    return yield* me().pipe(
      Effect.tapError((error) =>
        error.code === "unauthorized" && tokens?.session === session ? endSession(error, true) : Effect.void
      )
    )
  })

  const logout = Effect.fn("Harmony.logout")(function* () {
    const before = tokens
    yield* endSession(closed("logout"), true)
    if (before !== undefined) {
      // Best effort: the local session is gone either way.
      yield* exchange("POST", "/v1/auth/logout", { refreshToken: before.session.refreshToken }, undefined).pipe(
        Effect.ignore
      )
    }
  })

  const me = () => authedAs(User, "GET", "/v1/me")
  const chats = () => authedAs(ChatsAnswer, "GET", "/v1/me/chats").pipe(Effect.map((answer) => answer.chats))
  const searchUsers = (prefix: string) =>
    authedAs(UsersAnswer, "GET", `/v1/users?q=${encodeURIComponent(prefix)}`).pipe(Effect.map((answer) => answer.users))
  const getUser = (userId: string) => authedAs(User, "GET", `/v1/users/${encodeURIComponent(userId)}`)
  const chatPath = (chatId: string) => `/v1/chats/${encodeURIComponent(chatId)}`
  const createChat = (input: CreateChatInput) => authedAs(Chat, "POST", "/v1/chats", input)
  const chat = (chatId: string) => authedAs(Chat, "GET", chatPath(chatId))
  const renameChat = (chatId: string, name: string) => authedAs(Chat, "PATCH", chatPath(chatId), { name })
  const deleteChat = (chatId: string) => authed("DELETE", chatPath(chatId)).pipe(Effect.asVoid)
  const addMembers = (chatId: string, userIds: ReadonlyArray<string>) =>
    authedAs(Chat, "POST", `${chatPath(chatId)}/members`, { userIds })
  const removeMember = (chatId: string, userId: string) =>
    authed("DELETE", `${chatPath(chatId)}/members/${encodeURIComponent(userId)}`).pipe(Effect.asVoid)

  const history = (chatId: string, page: HistoryQuery) => {
    const query = new URLSearchParams()
    if (page.before !== undefined) query.set("before", String(page.before))
    if (page.after !== undefined) query.set("after", String(page.after))
    if (page.limit !== undefined) query.set("limit", String(page.limit))
    const search = query.toString() === "" ? "" : `?${query}`
    return authedAs(HistoryAnswer, "GET", `${chatPath(chatId)}/messages${search}`).pipe(
      Effect.map(
        (answer): HistoryPage => ({ messages: answer.messages, next: answer.nextBefore ?? answer.nextAfter ?? null })
      )
    )
  }

  // Over HTTP only: the server stores the position and itself tells the other
  // members' sessions (a `read` frame), so a socket frame too would tell them twice.
  const markRead = Effect.fn("Harmony.markRead")(function* (chatId: string, seq: number) {
    yield* authed("POST", `${chatPath(chatId)}/read`, { seq })
  })

  const readPositions = (chatId: string) =>
    authedAs(ReadsAnswer, "GET", `${chatPath(chatId)}/read`).pipe(Effect.map((answer) => answer.reads))

  const connect = Effect.fn("Harmony.connect")(function* () {
    yield* ensureConnection
    if (current?.ready) return
    const ready = Deferred.makeUnsafe<void, HarmonyError>()
    readyWaiters.push(ready)
    yield* Deferred.await(ready)
  })

  const subscribe = Effect.fn("Harmony.subscribe")(function* (
    chatId: string,
    subscribeOptions?: { readonly sinceSeq?: number }
  ) {
    const since = subscribeOptions?.sinceSeq
    const frame = { type: "subscribe", chatId, ...(since === undefined ? {} : { sinceSeq: since }) }
    if (Exit.isFailure(Schema.decodeUnknownExit(SubscribeFrame)(frame))) {
      return yield* badRequest(`not a valid subscription: ${JSON.stringify(frame)}`)
    }
    yield* ensureConnection
    let subscription = subscriptions.get(chatId)
    if (subscription === undefined) {
      subscription = { last: since, waiters: [], resyncing: false }
      subscriptions.set(chatId, subscription)
    } else if (since !== undefined) {
      // The app asks for a replay from here: it gets one.
      subscription.last = since
    }
    const answered = Deferred.makeUnsafe<SubscribeResult, HarmonyError>()
    subscription.waiters.push(answered)
    if (current?.ready) sendSubscribe(current, chatId, subscription)
    return yield* Deferred.await(answered)
  })

  const unsubscribe = (chatId: string) =>
    Effect.sync(() => {
      if (!subscriptions.has(chatId)) return
      dropSubscription(chatId, closed("unsubscribed"))
      if (current?.ready) sendRaw(current, { type: "unsubscribe", chatId })
    })

  const send = Effect.fn("Harmony.send")(function* (
    chatId: string,
    body: string,
    sendOptions?: { readonly clientMsgId?: string }
  ) {
    const clientMsgId = sendOptions?.clientMsgId ?? newClientMsgId()
    const frame = { type: "send", chatId, clientMsgId, body }
    // The server counts malformed frames and closes after five: reject them here, with the server's own rules.
    const valid = Schema.decodeUnknownExit(SendFrame)(frame)
    if (Exit.isFailure(valid)) return yield* badRequest(`invalid send: ${valid.cause}`)
    yield* ensureConnection
    const existing = pendingSends.get(clientMsgId)
    if (existing !== undefined) return yield* Deferred.await(existing.done)
    const pending: PendingSend = {
      chatId,
      body,
      clientMsgId,
      done: Deferred.makeUnsafe<Accepted, HarmonyError>(),
      retry: undefined
    }
    pendingSends.set(clientMsgId, pending)
    if (current?.ready) sendFrame(current, frame, sendRequest(pending))
    return yield* Deferred.await(pending.done)
  })

  const typing = (chatId: string) => {
    const frame = { type: "typing", chatId }
    if (current?.ready && Exit.isSuccess(decodeClientFrame(frame))) sendRaw(current, frame)
  }

  const close = Effect.fn("Harmony.close")(function* () {
    if (isClosed) return
    isClosed = true
    yield* endSession(closed("close"), false)
    yield* Scope.close(scope, Exit.void)
    setStatus("closed")
  })

  const effect: HarmonyClientEffect = {
    register,
    login,
    resume,
    logout,
    me,
    chats,
    searchUsers,
    getUser,
    createChat,
    chat,
    renameChat,
    deleteChat,
    addMembers,
    removeMember,
    history,
    markRead,
    readPositions,
    connect,
    subscribe,
    unsubscribe,
    send,
    close
  }

  const run = <A>(program: Effect.Effect<A, HarmonyError>): Promise<A> => Effect.runPromise(program)

  const facade: HarmonyClient = {
    get user() {
      return tokens?.session.user
    },
    get status() {
      return status
    },
    effect,
    register: (input) => run(register(input)),
    login: (input) => run(login(input)),
    resume: (session) => run(resume(session)),
    logout: () => run(logout()),
    me: () => run(me()),
    chats: () => run(chats()),
    searchUsers: (prefix) => run(searchUsers(prefix)),
    getUser: (userId) => run(getUser(userId)),
    createChat: (input) => run(createChat(input)),
    chat: (chatId) => run(chat(chatId)),
    renameChat: (chatId, name) => run(renameChat(chatId, name)),
    deleteChat: (chatId) => run(deleteChat(chatId)),
    addMembers: (chatId, userIds) => run(addMembers(chatId, userIds)),
    removeMember: (chatId, userId) => run(removeMember(chatId, userId)),
    history: (chatId, page) => run(history(chatId, page)),
    markRead: (chatId, seq) => run(markRead(chatId, seq)),
    readPositions: (chatId) => run(readPositions(chatId)),
    connect: () => run(connect()),
    subscribe: (chatId, subscribeOptions) => run(subscribe(chatId, subscribeOptions)),
    unsubscribe: (chatId) => run(unsubscribe(chatId)),
    send: (chatId, body, sendOptions) => run(send(chatId, body, sendOptions)),
    typing,
    on,
    close: () => run(close())
  }

  return { effect, facade }
}

/** The Promise/callback client (see `HarmonyClient`); `client.effect` has the same calls as Effects. */
export const createClient = (options: ClientOptions): HarmonyClient => makeClient(options).facade
