/**
 * Baseline: a Socket.IO server with the same semantics as the raw `ws` one —
 * `subscribe` joins the chat's room (acknowledged), `send` numbers the
 * message per room, emits it to the room (serialized once by the adapter)
 * and acknowledges the sender. WebSocket transport only, no compression.
 *
 *   PORT=9001 node --import tsx bench/baselines/socketio.ts
 */
import { randomUUID } from "node:crypto"
import { createServer } from "node:http"
import { Server } from "socket.io"

const port = Number(process.env.PORT ?? 9001)

const httpServer = createServer((request, response) => {
  if (request.url?.startsWith("/socket.io")) return
  response.writeHead(request.url === "/healthz" ? 200 : 404, { "content-type": "application/json" })
  response.end('{"status":"ok"}')
})
const io = new Server(httpServer, { transports: ["websocket"], perMessageDeflate: false, serveClient: false })
const seqs = new Map<string, number>()

io.on("connection", (socket) => {
  const userId = randomUUID()
  socket.on("subscribe", (chatId: string, ack: (reply: { ok: true }) => void) => {
    void socket.join(chatId)
    ack({ ok: true })
  })
  socket.on(
    "send",
    (frame: { chatId: string; clientMsgId: string; body: string }, ack: (reply: { id: string }) => void) => {
      const seq = (seqs.get(frame.chatId) ?? 0) + 1
      seqs.set(frame.chatId, seq)
      const id = randomUUID()
      io.to(frame.chatId).emit("message", {
        chatId: frame.chatId,
        seq,
        id,
        authorId: userId,
        body: frame.body,
        clientMsgId: frame.clientMsgId,
        createdAt: new Date().toISOString()
      })
      ack({ id })
    }
  )
})

httpServer.listen(port, "127.0.0.1", () => console.log(`socket.io baseline listening on ${port}`))
const stop = () => {
  io.close()
  httpServer.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
