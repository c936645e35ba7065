/**
 * Baseline: a raw `ws` broadcast server speaking Harmony's frames — the
 * minimal equivalent of Harmony's fanout with nothing behind it (no auth
 * check, no log, no persistence). `subscribe` joins a room; `send` numbers
 * the message per room, serializes it once, writes it to every socket in the
 * room and acks the sender. Like Harmony, a socket whose send buffer exceeds
 * 1 MiB is closed with 4008.
 *
 *   PORT=9000 node --import tsx bench/baselines/ws-broadcast.ts
 */
import { randomUUID } from "node:crypto"
import { createServer } from "node:http"
import { WebSocket, WebSocketServer } from "ws"

const port = Number(process.env.PORT ?? 9000)
const maxBufferedBytes = 1024 * 1024

const rooms = new Map<string, Set<WebSocket>>()
const seqs = new Map<string, number>()

const server = createServer((request, response) => {
  response.writeHead(request.url === "/healthz" ? 200 : 404, { "content-type": "application/json" })
  response.end('{"status":"ok"}')
})
const wss = new WebSocketServer({ server, path: "/v1/ws", perMessageDeflate: false })

wss.on("connection", (socket) => {
  const joined = new Set<string>()
  const userId = randomUUID()
  socket.on("message", (data) => {
    let frame: any
    try {
      frame = JSON.parse(data.toString())
    } catch {
      socket.close(4400, "malformed")
      return
    }
    switch (frame.type) {
      case "auth":
        socket.send(JSON.stringify({ type: "ready", userId, sessionId: randomUUID() }))
        return
      case "subscribe": {
        const room = rooms.get(frame.chatId) ?? new Set<WebSocket>()
        rooms.set(frame.chatId, room)
        room.add(socket)
        joined.add(frame.chatId)
        socket.send(
          JSON.stringify({
            type: "subscribed",
            chatId: frame.chatId,
            lastSeq: seqs.get(frame.chatId) ?? 0,
            recovered: true
          })
        )
        return
      }
      case "send": {
        const seq = (seqs.get(frame.chatId) ?? 0) + 1
        seqs.set(frame.chatId, seq)
        const id = randomUUID()
        const text = JSON.stringify({
          type: "message",
          message: {
            chatId: frame.chatId,
            seq,
            id,
            authorId: userId,
            body: frame.body,
            clientMsgId: frame.clientMsgId,
            createdAt: new Date().toISOString()
          }
        })
        for (const peer of rooms.get(frame.chatId) ?? []) {
          if (peer.readyState !== WebSocket.OPEN) continue
          if (peer.bufferedAmount > maxBufferedBytes) peer.close(4008, "too slow")
          else peer.send(text)
        }
        const ack: Record<string, unknown> = { type: "ack", clientMsgId: frame.clientMsgId, id }
        if (frame.ref !== undefined) ack.ref = frame.ref
        socket.send(JSON.stringify(ack))
        return
      }
      case "ping":
        socket.send(JSON.stringify({ type: "pong" }))
        return
    }
  })
  socket.on("close", () => {
    for (const chatId of joined) rooms.get(chatId)?.delete(socket)
  })
  socket.on("error", () => {})
})

server.listen(port, "127.0.0.1", () => console.log(`ws-broadcast baseline listening on ${port}`))
const stop = () => {
  for (const client of wss.clients) client.terminate()
  server.close(() => process.exit(0))
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
