/**
 * A session's side of its socket: the one path every outbound frame takes,
 * and how the session closes it.
 *
 * Outbound frames go straight to the socket; the socket's send buffer is the
 * session's bounded queue. A client too slow to drain it is disconnected
 * with 4008 (like Centrifugo's 3008) — it never holds up fanout to others.
 * Writes are synchronous, so live delivery can run inside a chat feed's
 * listener with no hand-off.
 */
import { Effect } from "effect"
import type { WebSocket } from "ws"
import type { FanoutItem } from "../messages/Fanout.ts"
import { errorsOf, messagesDelivered, sendToDeliver, slowConsumerDisconnects } from "../Metrics.ts"
import { type ApiError, errorCode } from "../schema/Errors.ts"
import { CloseCode } from "../schema/Protocol.ts"
import { encodeServerFrame, type ServerFrame } from "../schema/ServerFrames.ts"
import { syncSpans } from "../Tracing.ts"
import { closeSocket } from "./closeSocket.ts"

/** How a session ended, when it was the session that closed the socket. */
export class Closed {
  readonly code: number
  readonly reason: string
  constructor(code: number, reason: string) {
    this.code = code
    this.reason = reason
  }
}

/** A frame that answers a client frame carries its `ref`, when it had one. */
export const withRef = <F extends ServerFrame>(frame: F, ref: string | undefined): F =>
  ref === undefined ? frame : { ...frame, ref }

/** ws sends a Buffer as a binary frame unless told otherwise. */
const textFrame = { binary: false } as const

export interface Connection {
  /** How the session closed the socket, once it did. */
  readonly closed: () => Closed | undefined
  readonly close: (code: number, reason: string) => Effect.Effect<void>
  /** `close`, from outside any fiber (a timer's callback). */
  readonly closeUnsafe: (code: number, reason: string) => void
  /** Writes a text frame (a string, or its UTF-8); answers whether it was written (not when the socket is gone or the client too slow). */
  readonly write: (text: string | Buffer) => boolean
  readonly send: (frame: ServerFrame) => Effect.Effect<void>
  /** An error frame to the client, counted by its contract code. */
  readonly sendError: (code: string, message: string, ref: string | undefined) => Effect.Effect<void>
  readonly sendApiError: (error: ApiError, ref: string | undefined) => Effect.Effect<void>
  /** A live message: counted, its send→deliver latency observed, traced under its delivery on this node. */
  readonly writeLive: (item: FanoutItem) => void
  /** Runs `writes` with the socket corked: the frames they write leave in one system call. */
  readonly corked: (writes: () => void) => void
}

/**
 * `onClosed` runs once, when the session closes the socket (whoever asked:
 * the session's reader, its token's expiry, a slow write inside a feed's
 * listener), so the session can end without waiting for the close handshake.
 */
export const make = Effect.fnUntraced(function* (
  socket: WebSocket,
  sessionId: string,
  maxBufferedBytes: number,
  onClosed: () => void
) {
  let closed: Closed | undefined
  const context = yield* Effect.context<never>()
  const spans = yield* syncSpans

  const closeNow = (code: number, reason: string) => {
    closeSocket(socket, code, reason)
    if (closed !== undefined) return
    closed = new Closed(code, reason)
    onClosed()
  }

  const write = (text: string | Buffer): boolean => {
    if (socket.readyState !== socket.OPEN) return false
    if (socket.bufferedAmount > maxBufferedBytes) {
      slowConsumerDisconnects.updateUnsafe(1, context)
      closeNow(CloseCode.tooSlow, "too slow: outbound queue overflowed")
      return false
    }
    socket.send(text, textFrame)
    return true
  }

  const send = (frame: ServerFrame) =>
    Effect.sync(() => {
      write(encodeServerFrame(frame))
    })

  const sendError = (code: string, message: string, ref: string | undefined) =>
    Effect.suspend(() => {
      errorsOf(code, "ws").updateUnsafe(1, context)
      return send(withRef({ type: "error", code, message }, ref))
    })

  const writeLive = (item: FanoutItem) => {
    const span =
      spans === undefined || item.span === undefined
        ? undefined
        : spans.start("Session.write", {
            parent: item.span,
            attributes: { "harmony.session.id": sessionId, "harmony.seq": item.seq }
          })
    // The bytes shared by every socket of the node: ws frames them without copying or encoding.
    const written = write(item.frameBytes ?? item.frame)
    if (span !== undefined) spans?.end(span)
    if (!written) return
    messagesDelivered.updateUnsafe(1, context)
    if (item.sentAt !== undefined && Number.isFinite(item.sentAt)) {
      sendToDeliver.updateUnsafe(Math.max(0, Date.now() - item.sentAt) / 1000, context)
    }
  }

  // ws keeps its net.Socket in `_socket` (no public cork): frames written
  // while it is corked go out in one writev when it is uncorked.
  const corked = (writes: () => void) => {
    const raw = (socket as unknown as { _socket?: { cork(): void; uncork(): void } | null })._socket
    if (raw == null) return writes()
    raw.cork()
    try {
      writes()
    } finally {
      raw.uncork()
    }
  }

  return {
    closed: () => closed,
    corked,
    close: (code, reason) => Effect.sync(() => closeNow(code, reason)),
    closeUnsafe: closeNow,
    write,
    send,
    sendError,
    sendApiError: (error, ref) => sendError(errorCode(error), error.message, ref),
    writeLive
  } satisfies Connection as Connection
})
