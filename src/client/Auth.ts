/**
 * The login's tokens: when to refresh them, one refresh in flight however
 * many callers need it, and authenticated HTTP calls that refresh and retry
 * once on a 401.
 *
 * Why one refresh at a time: the server rotates the refresh token and, after
 * a 5 s grace, treats a second use of the old one as theft and revokes the
 * whole login.
 */
import { Deferred, Duration, Effect, Exit, FiberHandle, Option, Schedule, Schema, Scope } from "effect"
import * as Retry from "../Retry.ts"
import type { Session } from "../schema/Domain.ts"
import { HarmonyError } from "./HarmonyError.ts"
import type { ApiClient, Http } from "./Http.ts"

/** Refresh at this fraction of the access token's life… */
const RefreshAt = 0.8
/** …but at least this long before it expires (at most half its life): a busy client or server needs time to re-authenticate. */
const RefreshMarginMs = 5_000
/** An access token this close to its expiry is refreshed before use. */
const ExpirySlackMs = 5_000
/** The refresh timer wakes at least this often: new tokens (a login, a refresh by a 401) move the time. */
const MaxSleepMs = 60_000

export const closed = (what: string) => new HarmonyError({ code: "closed", message: `${what}: the client was closed` })
export const notLoggedIn = () => new HarmonyError({ code: "unauthorized", message: "not logged in" })

/** The `exp` claim of a JWT access token (the server's tokens are JWTs; anything else has no known expiry). */
const decodeJwtClaims = Schema.decodeUnknownOption(Schema.fromJsonString(Schema.Struct({ exp: Schema.Number })))

/** When a stored token expires (a stored session's `expiresIn` counted from when it was issued). */
export const jwtExpiry = (token: string): number | undefined => {
  const payload = token.split(".")[1]
  if (payload === undefined) return undefined
  try {
    const claims = decodeJwtClaims(atob(payload.replace(/-/g, "+").replace(/_/g, "/")))
    return Option.isSome(claims) ? claims.value.exp * 1000 : undefined
  } catch {
    // not base64: not a JWT, so no known expiry
    return undefined
  }
}

interface Tokens {
  readonly session: Session
  /** When the access token stops working (client clock). */
  readonly expiresAt: number
  /** When to refresh it. */
  readonly refreshAt: number
}

export interface Auth {
  readonly session: () => Session | undefined
  /** Takes new tokens (a login, a refresh, a resume) and arms the refresh timer. */
  readonly set: (session: Session, expiresAt: number) => void
  /** Forgets the tokens and stops the timer; answers whether there were any. */
  readonly clear: Effect.Effect<boolean>
  /** The access token, refreshed first when it is (nearly) expired. */
  readonly accessToken: Effect.Effect<string, HarmonyError>
  /** Refreshes unless someone already replaced `stale`; answers the token to use now. */
  readonly refreshAfter: (stale: string) => Effect.Effect<string, HarmonyError>
  /** An authenticated call of the derived API; a 401 (the token expired anyway, e.g. the machine slept) refreshes once and tries again. */
  readonly authed: <A>(call: (api: ApiClient) => Effect.Effect<A, unknown>) => Effect.Effect<A, HarmonyError>
}

export const makeAuth = (options: {
  readonly http: Http
  readonly scope: Scope.Scope
  /** The reconnect backoff, also used to retry a refresh that cannot get through. */
  readonly backoff: Schedule.Schedule<unknown>
  /** New tokens: tell the app, re-authenticate the socket. */
  readonly onTokens: (session: Session) => void
  /** The refresh token is dead: the session ends. */
  readonly onDead: (error: HarmonyError) => Effect.Effect<void>
}): Auth => {
  const { http } = options
  let tokens: Tokens | undefined
  let refreshing: Deferred.Deferred<Session, HarmonyError> | undefined
  const timer = Effect.runSync(FiberHandle.make<void, never>().pipe(Effect.provideService(Scope.Scope, options.scope)))

  const set = (session: Session, expiresAt: number) => {
    const lifeMs = session.expiresIn * 1000
    const margin = Math.max((1 - RefreshAt) * lifeMs, Math.min(RefreshMarginMs, lifeMs / 2))
    tokens = { session, expiresAt, refreshAt: expiresAt - margin }
    options.onTokens(session)
    Effect.runSync(FiberHandle.run(timer, refreshLoop, { onlyIfMissing: true }))
  }

  const clear = Effect.suspend(() => {
    const had = tokens !== undefined
    tokens = undefined
    return FiberHandle.clear(timer).pipe(Effect.as(had))
  })

  /** Sleeps until the refresh time (at most a minute, then looks again), or refreshes when it has come. */
  const refreshWhenDue: Effect.Effect<void, HarmonyError> = Effect.suspend(() => {
    if (tokens === undefined) return Effect.void
    const wait = tokens.refreshAt - Date.now()
    if (wait > 0) return Effect.sleep(Duration.millis(Math.min(wait, MaxSleepMs)))
    return refresh.pipe(Effect.retry({ schedule: options.backoff, while: (error) => error.transient }), Effect.asVoid)
  })

  /** Until there are no tokens; a refresh that fails for good has ended the session already (`runRefresh`). */
  const refreshLoop: Effect.Effect<void> = refreshWhenDue.pipe(
    Effect.repeat({ while: () => tokens !== undefined }),
    Effect.catch(() => Effect.void)
  )

  const refresh: Effect.Effect<Session, HarmonyError> = Effect.suspend(() => {
    if (refreshing !== undefined) return Deferred.await(refreshing)
    const done = Deferred.makeUnsafe<Session, HarmonyError>()
    refreshing = done
    Effect.runSync(
      runRefresh().pipe(
        Effect.onExit((exit) =>
          Effect.sync(() => {
            refreshing = undefined
            Deferred.doneUnsafe(
              done,
              Exit.isSuccess(exit) || Exit.hasFails(exit) ? exit : Effect.fail(closed("refresh"))
            )
          })
        ),
        Effect.forkIn(options.scope)
      )
    )
    return Deferred.await(done)
  })

  const runRefresh = Effect.fn("Harmony.refresh")(function* () {
    const before = tokens
    if (before === undefined) return yield* notLoggedIn()
    const answer = yield* http
      .call(http.api.auth.refresh({ payload: { refreshToken: before.session.refreshToken } }))
      .pipe(
        // A lost answer is retried quickly, well inside the server's 5 s grace for the old token.
        Effect.retry({
          schedule: Retry.backoff(Duration.millis(200)).pipe(Schedule.upTo({ times: 3 })),
          while: (error) => error.code === "network"
        }),
        Effect.tapError((error) =>
          error.code === "unauthorized" && tokens === before ? options.onDead(error) : Effect.void
        )
      )
    // Logged out (or in as someone else) meanwhile: these tokens are not wanted any more.
    if (tokens !== before) return yield* notLoggedIn()
    set(answer, Date.now() + answer.expiresIn * 1000)
    return answer
  })

  const refreshAfter = (stale: string): Effect.Effect<string, HarmonyError> =>
    Effect.suspend(() =>
      tokens !== undefined && tokens.session.accessToken !== stale
        ? Effect.succeed(tokens.session.accessToken)
        : refresh.pipe(Effect.map((session) => session.accessToken))
    )

  const accessToken: Effect.Effect<string, HarmonyError> = Effect.suspend(() => {
    if (tokens === undefined) return Effect.fail(notLoggedIn())
    if (Date.now() < tokens.expiresAt - ExpirySlackMs) return Effect.succeed(tokens.session.accessToken)
    return refreshAfter(tokens.session.accessToken)
  })

  const authed = <A>(call: (api: ApiClient) => Effect.Effect<A, unknown>): Effect.Effect<A, HarmonyError> =>
    Effect.gen(function* () {
      const token = yield* accessToken
      return yield* http.call(call(http.api), token).pipe(
        Effect.catchIf(
          (error) => error.code === "unauthorized",
          () => refreshAfter(token).pipe(Effect.flatMap((fresh) => http.call(call(http.api), fresh)))
        )
      )
    })

  return { session: () => tokens?.session, set, clear, accessToken, refreshAfter, authed }
}
