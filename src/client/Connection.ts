/**
 * The one WebSocket: opened on demand, authenticated with the access token,
 * watched by a heartbeat, and reconnected after any drop with the backoff
 * `Schedule` (which starts over after a connection that worked, so a server
 * restart costs ~initialDelay, not the delay of the last outage).
 *
 * Frames come in decoded with the server's schema; what they mean is the
 * caller's (`onReady`, `onFrame`).
 */
import { Deferred, Duration, Effect, Exit, FiberHandle, Schedule, Scope } from "effect"
import { decodeServerFrame, type ServerFrame } from "../schema/ServerFrames.ts"
import type { Auth } from "./Auth.ts"
import type { Events } from "./Events.ts"
import { HarmonyError } from "./HarmonyError.ts"

/** How long a connection attempt may take to open and authenticate before it counts as failed. */
const ConnectTimeoutMs = 15_000
/** With no frame for this long the socket is pinged; with none for 3× this long it is presumed dead. */
const HeartbeatMs = 15_000

/**
 * What a `ref` asked for, so an error finds its caller. Only frames with an
 * answer carry a ref; signals (typing, read, ping, re-auth, unsubscribe) do
 * not, so an error about one of those is an `error` event.
 */
export type Request =
  | { readonly kind: "subscribe"; readonly chatId: string }
  | { readonly kind: "send"; readonly clientMsgId: string }

export interface Connection {
  /** The token it authenticated with (a 4001 with a newer token in hand needs no refresh). */
  readonly token: string
  /** Sends a frame as is (the caller validated it). */
  readonly send: (frame: object) => void
  /** Sends a frame with a fresh ref, remembering what it asked for. */
  readonly request: (frame: object, request: Request) => void
  /** What the frame with this ref asked for (forgotten now: a ref is answered once). */
  readonly answered: (ref: string | undefined) => Request | undefined
}

interface Outcome {
  readonly code: number
  readonly reason: string
  readonly wasReady: boolean
  readonly token: string
}

export interface Socket {
  /** The open, authenticated connection, if there is one now. */
  readonly current: () => Connection | undefined
  /** Starts the connection loop if it is not running. */
  readonly start: () => void
  /** Ends the loop and the connection; `connect` callers waiting fail with `error`. */
  readonly stop: (error: HarmonyError) => Effect.Effect<void>
  /** Waits until a connection is open and authenticated. */
  readonly ready: Effect.Effect<void, HarmonyError>
}

export const makeSocket = (options: {
  readonly url: string
  readonly WebSocket: typeof WebSocket
  readonly backoff: Schedule.Schedule<unknown>
  /** The delay before reconnecting after a connection that worked. */
  readonly firstDelay: Schedule.Schedule<unknown>
  readonly scope: Scope.Scope
  readonly auth: Auth
  readonly events: Events
  /** A connection is authenticated: everything the app wants goes out again. */
  readonly onReady: (connection: Connection) => void
  readonly onFrame: (connection: Connection, frame: ServerFrame) => void
  /** A connection ended (before the next one is tried). */
  readonly onEnd: () => void
}): Socket => {
  const { auth, events } = options
  const WebSocketImpl = options.WebSocket
  const loopFiber = Effect.runSync(
    FiberHandle.make<void, never>().pipe(Effect.provideService(Scope.Scope, options.scope))
  )
  const readyWaiters: Array<Deferred.Deferred<void, HarmonyError>> = []
  let current: Connection | undefined
  let nextRef = 0
  let everOpen = false

  /** One connection: open, authenticate, serve frames; answers how it ended. */
  const open = (token: string): Effect.Effect<Outcome> =>
    Effect.gen(function* () {
      let socket: WebSocket
      try {
        socket = new WebSocketImpl(options.url)
      } catch (error) {
        return { code: 1006, reason: String(error), wasReady: false, token }
      }
      const ended = Deferred.makeUnsafe<Outcome>()
      const requests = new Map<string, Request>()
      let ready = false
      let done = false
      let lastFrameAt = Date.now()
      const send = (frame: object) => {
        try {
          socket.send(JSON.stringify(frame))
        } catch {
          // The socket is closing: its close event reconnects, and whatever waits on an answer is resent then.
        }
      }
      const connection: Connection = {
        token,
        send,
        request: (frame, request) => {
          const ref = `r${++nextRef}`
          requests.set(ref, request)
          send({ ...frame, ref })
        },
        answered: (ref) => {
          if (ref === undefined) return undefined
          const request = requests.get(ref)
          requests.delete(ref)
          return request
        }
      }
      const end = (code: number, reason: string) => {
        if (done) return
        done = true
        if (current === connection) current = undefined
        options.onEnd()
        Deferred.doneUnsafe(ended, Effect.succeed({ code, reason, wasReady: ready, token }))
      }
      const onReady = () => {
        ready = true
        current = connection
        events.setStatus("open")
        // Tokens refreshed while it was connecting: the server must know the new expiry.
        const latest = auth.session()?.accessToken
        if (latest !== undefined && latest !== token) send({ type: "auth", token: latest })
        for (const waiter of readyWaiters.splice(0)) Deferred.doneUnsafe(waiter, Effect.void)
        options.onReady(connection)
      }
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          end(1000, "client closed")
          try {
            if (socket.readyState === WebSocketImpl.CONNECTING || socket.readyState === WebSocketImpl.OPEN) {
              socket.close(1000)
            }
          } catch {
            // closing a broken socket: nothing more to do
          }
        })
      )
      socket.addEventListener("open", () => {
        if (!done) send({ type: "auth", token })
      })
      socket.addEventListener("message", (event) => {
        if (done) return
        lastFrameAt = Date.now()
        if (typeof event.data !== "string") {
          events.emit("error", new HarmonyError({ code: "internal", message: "the server sent a binary frame" }))
          return
        }
        const frame = decodeServerFrame(event.data)
        if (Exit.isFailure(frame)) {
          const message = `undecodable frame: ${event.data.slice(0, 200)}`
          events.emit("error", new HarmonyError({ code: "internal", message }))
        } else if (frame.value.type === "ready") {
          // A second `ready` answers a re-authentication: nothing to do.
          if (!ready) onReady()
        } else {
          options.onFrame(connection, frame.value)
        }
      })
      socket.addEventListener("close", (event) => end(event.code, event.reason))
      // An error is always followed by a close; the close says how it ended.
      socket.addEventListener("error", () => {})

      yield* Effect.sleep(Duration.millis(ConnectTimeoutMs)).pipe(
        Effect.andThen(
          Effect.sync(() => {
            if (!ready) end(1006, "connecting timed out")
          })
        ),
        Effect.forkScoped
      )
      // A half-open TCP connection (a sleeping laptop, a dead NAT entry) never closes by itself.
      yield* Effect.sync(() => {
        if (!ready) return
        const silent = Date.now() - lastFrameAt
        if (silent > 3 * HeartbeatMs) end(1006, "no answer to pings")
        else if (silent >= HeartbeatMs) send({ type: "ping" })
      }).pipe(Effect.repeat(Schedule.spaced(Duration.millis(HeartbeatMs))), Effect.forkScoped)
      return yield* Deferred.await(ended)
    }).pipe(Effect.scoped)

  const protocolError = (outcome: Outcome) =>
    new HarmonyError({
      code: "protocol",
      message: `the server closed the connection (${outcome.code} ${outcome.reason})`
    })

  /**
   * One attempt. It succeeds when a connection that worked ended (the backoff
   * starts over), fails with "retry" to back off, "stop" when there is no
   * session any more (a refresh said so and ended it).
   */
  const attempt: Effect.Effect<void, "retry" | "stop"> = Effect.gen(function* () {
    events.setStatus(everOpen ? "reconnecting" : "connecting")
    const token = yield* auth.accessToken.pipe(
      Effect.catch((error) => {
        if (error.code === "unauthorized" || error.code === "closed") return Effect.fail("stop" as const)
        // The refresh could not get through.
        events.emit("error", error)
        return Effect.fail("retry" as const)
      })
    )
    const outcome = yield* open(token)
    everOpen ||= outcome.wasReady
    switch (outcome.code) {
      case 4001: {
        // Unauthorized or expired: a refresh, unless newer tokens already arrived.
        const fresh = yield* Effect.result(auth.refreshAfter(outcome.token))
        if (fresh._tag === "Failure" && (fresh.failure.code === "unauthorized" || fresh.failure.code === "closed")) {
          return yield* Effect.fail("stop" as const)
        }
        break
      }
      case 4029:
        // Rate limited for too long: going straight back would only be limited again.
        events.emit(
          "error",
          new HarmonyError({ code: "rate_limited", message: "the server closed the connection (4029)" })
        )
        return yield* Effect.fail("retry" as const)
      case 4400:
      case 1009:
        // The server says this client sent bad frames: a bug here. Say so, and do not hammer it.
        events.emit("error", protocolError(outcome))
        return yield* Effect.fail("retry" as const)
    }
    if (!outcome.wasReady) return yield* Effect.fail("retry" as const)
  })

  /** Attempts with backoff until one connection worked, and again after it ends; until "stop". */
  const loop: Effect.Effect<void> = Effect.suspend(() => {
    everOpen = false
    return attempt.pipe(
      Effect.retry({ schedule: options.backoff, while: (verdict) => verdict === "retry" }),
      Effect.repeat(options.firstDelay),
      // "stop": the session is over, and whoever ended it told the app.
      Effect.catch(() => Effect.void)
    )
  })

  return {
    current: () => current,
    start: () => {
      Effect.runSync(FiberHandle.run(loopFiber, loop, { onlyIfMissing: true }))
    },
    stop: (error) =>
      Effect.suspend(() => {
        for (const waiter of readyWaiters.splice(0)) Deferred.doneUnsafe(waiter, Effect.fail(error))
        return FiberHandle.clear(loopFiber)
      }),
    ready: Effect.suspend(() => {
      if (current !== undefined) return Effect.void
      const ready = Deferred.makeUnsafe<void, HarmonyError>()
      readyWaiters.push(ready)
      return Deferred.await(ready)
    })
  }
}
