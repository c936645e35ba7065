/**
 * Closing a socket from the server side. A socket paused for back-pressure
 * (its session fell behind reading) would never read the client's close
 * reply, so the TCP connection would stay open until `ws`'s 30 s close
 * timeout: reading resumes as the close frame goes out. The gateway ignores
 * frames that arrive after it.
 */
import type { WebSocket } from "ws"

export const closeSocket = (socket: WebSocket, code: number, reason: string): void => {
  if (socket.readyState === socket.OPEN || socket.readyState === socket.CONNECTING) socket.close(code, reason)
  if (socket.isPaused) socket.resume()
}
