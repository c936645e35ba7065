/**
 * Transport adapters for the load generator: one connection = one chat
 * member subscribed to one chat. Harmony and the raw `ws` baseline speak the
 * same frames (PROTOCOL.md), so they share the `ws` adapter; Socket.IO has its
 * own (rooms, emit with ack callbacks), forced onto the WebSocket transport.
 */
import { io, type Socket } from "socket.io-client"
import WebSocket from "ws"
import type { TargetKind } from "./common.ts"

export interface Handlers {
  readonly onAck: (clientMsgId: string) => void
  readonly onSendError: (clientMsgId: string | undefined, code: string) => void
  readonly onMessage: (seq: number, body: string) => void
  readonly onClose: (code: string) => void
}

export interface Connection {
  readonly send: (chatId: string, clientMsgId: string, body: string) => void
  readonly close: () => void
}

export interface Member {
  readonly chatId: string
  /** Harmony: the member's access token (the baselines take any). */
  readonly token: string
}

export type Connect = (member: Member, handlers: Handlers) => Promise<Connection>

const connectTimeoutMs = 30_000

/** PROTOCOL.md frames over a plain WebSocket: auth → ready, subscribe → subscribed, send → ack + message. */
const connectWs =
  (url: string): Connect =>
  (member, handlers) =>
    new Promise<Connection>((resolve, reject) => {
      const socket = new WebSocket(`${url.replace(/^http/, "ws")}/v1/ws`, { perMessageDeflate: false })
      let subscribed = false
      const timer = setTimeout(() => {
        socket.terminate()
        reject(new Error("connect/subscribe timed out"))
      }, connectTimeoutMs)
      const fail = (message: string) => {
        clearTimeout(timer)
        if (!subscribed) reject(new Error(message))
      }
      socket.on("open", () => socket.send(JSON.stringify({ type: "auth", token: member.token })))
      socket.on("error", (error) => fail(`websocket error: ${error.message}`))
      socket.on("close", (code, reason) => {
        if (subscribed) handlers.onClose(String(code))
        else fail(`closed ${code} ${reason.toString()} before subscribing`)
      })
      socket.on("message", (data) => {
        const frame = JSON.parse(data.toString())
        switch (frame.type) {
          case "message":
            handlers.onMessage(frame.message.seq, frame.message.body)
            return
          case "ack":
            handlers.onAck(frame.clientMsgId)
            return
          case "error":
            if (!subscribed) fail(`error before subscribing: ${frame.code} ${frame.message}`)
            else handlers.onSendError(frame.ref, frame.code)
            return
          case "ready":
            socket.send(JSON.stringify({ type: "subscribe", chatId: member.chatId }))
            return
          case "subscribed":
            subscribed = true
            clearTimeout(timer)
            resolve({
              send: (chatId, clientMsgId, body) => {
                if (socket.readyState === WebSocket.OPEN) {
                  socket.send(JSON.stringify({ type: "send", chatId, clientMsgId, body, ref: clientMsgId }))
                }
              },
              close: () => socket.close(1000, "bench done")
            })
            return
        }
      })
    })

/** Socket.IO rooms: `subscribe` joins the chat's room, `send` is acknowledged by callback, `message` is the broadcast. */
const connectSocketIo =
  (url: string): Connect =>
  (member, handlers) =>
    new Promise<Connection>((resolve, reject) => {
      const socket: Socket = io(url, {
        transports: ["websocket"],
        forceNew: true,
        reconnection: false,
        timeout: connectTimeoutMs
      })
      let subscribed = false
      const timer = setTimeout(() => {
        socket.disconnect()
        reject(new Error("connect/subscribe timed out"))
      }, connectTimeoutMs)
      socket.on("connect_error", (error) => {
        clearTimeout(timer)
        reject(new Error(`socket.io connect error: ${error.message}`))
      })
      socket.on("disconnect", (reason) => {
        if (subscribed) handlers.onClose(reason)
      })
      socket.on("message", (message: { seq: number; body: string }) => handlers.onMessage(message.seq, message.body))
      socket.on("connect", () => {
        socket.emit("subscribe", member.chatId, () => {
          subscribed = true
          clearTimeout(timer)
          resolve({
            send: (chatId, clientMsgId, body) => {
              socket.emit("send", { chatId, clientMsgId, body }, (reply: { id?: string; error?: string }) => {
                if (reply.error === undefined) handlers.onAck(clientMsgId)
                else handlers.onSendError(clientMsgId, reply.error)
              })
            },
            close: () => socket.disconnect()
          })
        })
      })
    })

export const connector = (target: TargetKind, url: string): Connect =>
  target === "socketio" ? connectSocketIo(url) : connectWs(url)
