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
import { Cause, Context, Effect, FiberSet, Layer, Queue, Stream } from "effect"
import type { IncomingMessage, Server } from "node:http"
import type { Duplex } from "node:stream"
import { type WebSocket, WebSocketServer } from "ws"
import { PubSub } from "../ports/PubSub.ts"
import * as Metrics from "../Metrics.ts"
import { ControlChannel, decodeControlSignal } from "../schema/Control.ts"
import { PresenceTracker } from "./PresenceTracker.ts"
import * as Session from "./Session.ts"
import { CloseCode, MaxFrameBytes } from "../schema/Protocol.ts"
import { Accounts } from "../state/Accounts.ts"
import { Chats } from "../state/Chats.ts"
import { Membership } from "../state/Membership.ts"
import { ChatFeeds } from "./ChatFeeds.ts"
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
  static readonly layer = (options: Session.SessionOptions = Session.defaultSessionOptions) =>
    Layer.effect(
      Gateway,
      Effect.gen(function* () {
        yield* Metrics.initialize
        /** Open sockets by user, to end a closed account's sessions on every node. */
        const byUser = new Map<string, Set<WebSocket>>()
        const services: Session.SessionServices = {
          accounts: yield* Accounts,
          chats: yield* Chats,
          membership: yield* Membership,
          ingest: yield* Ingest,
          history: yield* History,
          fanout: yield* Fanout,
          feeds: yield* ChatFeeds,
          presence: yield* PresenceTracker,
          register: (userId, socket) => {
            const sockets = byUser.get(userId) ?? new Set<WebSocket>()
            byUser.set(userId, sockets)
            sockets.add(socket)
            return () => {
              sockets.delete(socket)
              if (sockets.size === 0) byUser.delete(userId)
            }
          }
        }
        const wss = new WebSocketServer({ noServer: true, maxPayload: MaxFrameBytes })
        const fibers = yield* FiberSet.make<void>()
        const runFork = yield* FiberSet.runtime(fibers)()
        let open = 0

        // Stopping: every session is told to reconnect elsewhere (1001).
        // This runs when the HTTP server starts closing (see attach), since
        // the server waits for its connections, upgraded ones included.
        const goAway = () => {
          for (const client of wss.clients) client.close(CloseCode.goingAway, "server shutting down")
        }
        yield* Effect.addFinalizer(() =>
          Effect.gen(function* () {
            goAway()
            yield* FiberSet.clear(fibers)
            yield* Effect.callback<void>((resume) => wss.close(() => resume(Effect.void)))
          })
        )

        // A closed account's sessions end on every node.
        const control = yield* (yield* PubSub).subscribe(ControlChannel)
        yield* control.pipe(
          Stream.map((payload) => decodeControlSignal(payload)),
          Stream.runForEach((signal) =>
            Effect.sync(() => {
              if (signal._tag === "None" || signal.value.type !== "user_deleted") return
              for (const socket of byUser.get(signal.value.userId) ?? []) {
                socket.close(CloseCode.unauthorized, "the account is closed")
              }
            })
          ),
          Effect.forkScoped
        )

        const connect = (request: IncomingMessage, socket: Duplex, head: Buffer) =>
          wss.handleUpgrade(request, socket, head, (ws) => {
            const inbound = Effect.runSync(Queue.unbounded<Session.Inbound, Cause.Done>())
            ws.on("message", (data, isBinary) => {
              Queue.offerUnsafe(inbound, isBinary ? { _tag: "Binary" } : { _tag: "Text", text: data.toString() })
              // A client sending faster than its session keeps up is read no further until it catches up.
              if (Queue.sizeUnsafe(inbound) >= Session.InboundHighWater) ws.pause()
            })
            ws.on("close", () => {
              Queue.endUnsafe(inbound)
            })
            ws.on("error", (error) => {
              // ws reports protocol violations (oversize frames: 1009) and
              // socket errors by closing; the close ends the session.
              runFork(Effect.logDebug("websocket error", error))
            })
            open++
            runFork(
              Session.run(ws, inbound, services, options).pipe(
                Effect.scoped,
                Effect.asVoid,
                Effect.catchCause((cause) =>
                  Cause.hasInterruptsOnly(cause) ? Effect.void : Effect.logError("session failed", cause)
                ),
                Effect.ensuring(
                  Effect.sync(() => {
                    open--
                    if (ws.readyState === ws.OPEN) ws.close(CloseCode.normal, "session ended")
                  })
                )
              )
            )
          })

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
          sessions: () => open
        })
      })
    )
}

const pathOf = (request: IncomingMessage) => (request.url ?? "").split("?")[0]
