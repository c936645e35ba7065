/**
 * The WebSocket gateway at `/v1/ws`: the `ws` server handles the upgrade and
 * the framing (frames over 64 KiB close with 1009 by `maxPayload`), and each
 * connection runs as a Session fiber.
 *
 * The gateway takes its upgrades straight from the Node HTTP server rather
 * than through effect's HttpServerRequest.upgrade: it needs the raw socket's
 * `bufferedAmount` to tell a slow client (close 4008) from a busy one, which
 * effect's Socket abstraction does not expose.
 */
import { Cause, Clock, Context, Duration, Effect, FiberSet, Layer, Queue, Stream } from "effect"
import type { IncomingMessage, Server } from "node:http"
import type { Duplex } from "node:stream"
import { type WebSocket, WebSocketServer } from "ws"
import { PubSub } from "../ports/PubSub.ts"
import * as Metrics from "../Metrics.ts"
import { ControlChannel, decodeControlSignal } from "../schema/Control.ts"
import { PresenceTracker } from "./PresenceTracker.ts"
import * as Session from "./Session.ts"
import { closeSocket } from "./closeSocket.ts"
import { defaultGatewayLimits, type GatewayLimits } from "./Limits.ts"
import { CloseCode, MaxFrameBytes } from "../schema/Protocol.ts"
import { Accounts } from "../state/Accounts.ts"
import { Chats } from "../state/Chats.ts"
import { Membership } from "../state/Membership.ts"
import { ChatFeeds } from "./ChatFeeds.ts"
import { UnreadFeeds } from "./UnreadFeeds.ts"
import { Fanout } from "../messages/Fanout.ts"
import { History } from "../messages/History.ts"
import { Ingest } from "../messages/Ingest.ts"

export const GatewayPath = "/v1/ws"

export class Gateway extends Context.Service<
  Gateway,
  {
    /** Takes over the upgrade requests for the gateway path on `server`. */
    readonly attach: (server: Server) => Server
    readonly sessions: () => number
  }
>()("harmony/http/Gateway") {
  /**
   * `drainTimeout` bounds how long a stopping node waits, from the moment it
   * starts stopping, for its sessions' close handshakes (SHUTDOWN_TIMEOUT).
   */
  static readonly layer = (
    options: Session.SessionOptions = Session.defaultSessionOptions,
    limits: GatewayLimits = defaultGatewayLimits,
    drainTimeout: Duration.Input = Duration.seconds(20)
  ) =>
    Layer.effect(
      Gateway,
      Effect.gen(function* () {
        yield* Metrics.initialize
        /** Open sockets by user and by login, to end a closed account's or an ended login's sessions on every node. */
        const byUser = new Map<string, Set<WebSocket>>()
        const byFamily = new Map<string, Set<WebSocket>>()
        /** Open sockets by client address, authenticated or not. */
        const byAddress = new Map<string, number>()
        const services: Session.SessionServices = {
          accounts: yield* Accounts,
          chats: yield* Chats,
          membership: yield* Membership,
          ingest: yield* Ingest,
          history: yield* History,
          fanout: yield* Fanout,
          feeds: yield* ChatFeeds,
          presence: yield* PresenceTracker,
          pubsub: yield* PubSub,
          unread: yield* UnreadFeeds,
          register: (userId, familyId, socket) => {
            if ((byUser.get(userId)?.size ?? 0) >= limits.maxSocketsPerUser) return undefined
            const forgetUser = addTo(byUser, userId, socket)
            const forgetFamily = familyId === undefined ? undefined : addTo(byFamily, familyId, socket)
            return () => {
              forgetUser()
              forgetFamily?.()
            }
          }
        }
        const wss = new WebSocketServer({ noServer: true, maxPayload: MaxFrameBytes })
        const fibers = yield* FiberSet.make<void>()
        const runFork = yield* FiberSet.runtime(fibers)()
        let running = 0

        // Stopping: every session is told to reconnect elsewhere (1001).
        // This starts when the HTTP server starts closing (see attach), since
        // the server waits for its connections, upgraded ones included. The
        // node then waits for every close handshake before it goes on
        // stopping: a close frame still in a socket's buffer when the process
        // exits never reaches the client, which would see 1006 instead. A
        // client that does not answer in time is cut off.
        const clock = yield* Clock.Clock
        let goingAwaySince: number | undefined
        const goAway = () => {
          goingAwaySince ??= clock.currentTimeMillisUnsafe()
          for (const client of wss.clients) closeSocket(client, CloseCode.goingAway, "server shutting down")
        }
        const drain = Effect.gen(function* () {
          goAway()
          const waited = clock.currentTimeMillisUnsafe() - (goingAwaySince ?? 0)
          const left = Duration.subtract(Duration.fromInputUnsafe(drainTimeout), Duration.millis(waited))
          const drained = yield* Effect.forEach(wss.clients, closeHandshake, {
            concurrency: "unbounded",
            discard: true
          }).pipe(Effect.timeoutOption(Duration.max(left, Duration.zero)))
          if (drained._tag === "Some") return
          yield* Effect.logWarning("sessions did not finish their close handshake in time; cut off", {
            sessions: wss.clients.size
          })
          for (const client of wss.clients) client.terminate()
        })
        yield* Effect.addFinalizer(() =>
          Effect.gen(function* () {
            yield* drain
            yield* FiberSet.clear(fibers)
            yield* Effect.callback<void>((resume) => wss.close(() => resume(Effect.void)))
          })
        )

        // A closed account's sessions, and an ended login's, end on every node.
        const control = yield* (yield* PubSub).subscribe(ControlChannel)
        yield* control.pipe(
          Stream.map((payload) => decodeControlSignal(payload)),
          Stream.runForEach((signal) =>
            Effect.sync(() => {
              if (signal._tag === "None" || signal.value.type === "chat_deleted") return
              const [sockets, reason] =
                signal.value.type === "user_deleted"
                  ? [byUser.get(signal.value.userId), "the account is closed"]
                  : [byFamily.get(signal.value.familyId), "this login has ended"]
              for (const socket of sockets ?? []) closeSocket(socket, CloseCode.unauthorized, reason)
            })
          ),
          Effect.forkScoped
        )

        // A session's listeners close over its socket, queue and address only:
        // not the upgrade request and its head buffer, which would otherwise
        // live as long as the connection.
        const startSession = (ws: WebSocket, address: string) => {
          const fromAddress = (byAddress.get(address) ?? 0) + 1
          byAddress.set(address, fromAddress)
          if (fromAddress > limits.maxSocketsPerAddress) {
            ws.on("close", () => forgetAddress(address))
            closeSocket(ws, CloseCode.rateLimited, "too many connections from this address")
            return
          }
          const inbound = Effect.runSync(Queue.unbounded<Session.Inbound, Cause.Done>())
          ws.on("message", (data, isBinary) => {
            // Whatever follows a close frame is not read.
            if (ws.readyState !== ws.OPEN) return
            Queue.offerUnsafe(inbound, isBinary ? { _tag: "Binary" } : { _tag: "Text", text: data.toString() })
            // A client sending faster than its session keeps up is read no further until it catches up.
            if (Queue.sizeUnsafe(inbound) >= Session.InboundHighWater) ws.pause()
          })
          ws.on("close", () => {
            forgetAddress(address)
            Queue.endUnsafe(inbound)
          })
          ws.on("error", logSocketError)
          running++
          runFork(
            Session.run(ws, inbound, services, options).pipe(
              Effect.scoped,
              Effect.asVoid,
              Effect.catchCause((cause) =>
                Cause.hasInterruptsOnly(cause) ? Effect.void : Effect.logError("session failed", cause)
              ),
              Effect.ensuring(
                Effect.sync(() => {
                  running--
                  if (ws.readyState === ws.OPEN) closeSocket(ws, CloseCode.normal, "session ended")
                })
              )
            )
          )
        }
        const forgetAddress = (address: string) => {
          const left = (byAddress.get(address) ?? 1) - 1
          if (left === 0) byAddress.delete(address)
          else byAddress.set(address, left)
        }
        // ws reports protocol violations (oversize frames: 1009) and socket
        // errors by closing; the close ends the session.
        const logSocketError = (error: Error) => runFork(Effect.logDebug("websocket error", error))
        const connect = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
          const address = request.socket.remoteAddress ?? "unknown"
          wss.handleUpgrade(request, socket, head, (ws) => startSession(ws, address))
        }

        return Gateway.of({
          attach: (server) => {
            const close = server.close.bind(server)
            server.close = ((callback?: (error?: Error) => void) => {
              goAway()
              return close(callback)
            }) as Server["close"]
            // Upgrades for the gateway path never reach the HTTP router.
            const emit = server.emit.bind(server)
            server.emit = ((event: string, ...args: Array<any>) => {
              if (event === "upgrade" && pathOf(args[0] as IncomingMessage) === GatewayPath) {
                connect(args[0], args[1], args[2])
                return true
              }
              return emit(event, ...args)
            }) as Server["emit"]
            return server
          },
          sessions: () => running
        })
      })
    )
}

/** Completes once the socket is closed: its close handshake done, or the connection gone. */
const closeHandshake = (socket: WebSocket) =>
  Effect.callback<void>((resume) => {
    if (socket.readyState === socket.CLOSED) return resume(Effect.void)
    const onClose = () => resume(Effect.void)
    socket.once("close", onClose)
    return Effect.sync(() => socket.off("close", onClose))
  })

const pathOf = (request: IncomingMessage) => (request.url ?? "").split("?")[0]

/** Adds `socket` to the set at `key`; answers how to take it out again. */
const addTo = (index: Map<string, Set<WebSocket>>, key: string, socket: WebSocket) => {
  const sockets = index.get(key) ?? new Set<WebSocket>()
  index.set(key, sockets)
  sockets.add(socket)
  return () => {
    sockets.delete(socket)
    if (sockets.size === 0 && index.get(key) === sockets) index.delete(key)
  }
}
