/**
 * A small typed WebSocket test client for the `/v1/ws` contract (docs/protocol.md
 * "WebSocket"), over the `ws` package: connect, authenticate, send frames (or
 * raw text / binary), await frames matching a predicate with a deadline,
 * collect every frame received, and observe the close code and reason.
 *
 * Every frame the server sends is kept in `frames`, in arrival order, so a
 * test can both wait for what it expects and later assert on everything that
 * arrived (no duplicates, nothing from a chat it should not see). Waits take
 * a `from` index (see `mark()`) to look only at frames that arrived after a
 * point. A wait that cannot succeed any more (the connection closed) fails at
 * once, naming what it waited for, the close, and the last frames.
 */
import { randomUUID } from "node:crypto"
import type { Socket } from "node:net"
import WebSocket from "ws"

/** A frame as the server sent it (a JSON object with a `type`). */
export interface Frame {
  readonly type: string
  readonly ref?: string
  readonly [field: string]: any
}

/** A frame to send: a JSON object, normally with a `type` (tests also send broken ones). */
export interface ClientFrame {
  readonly type?: unknown
  readonly ref?: string
  readonly [field: string]: unknown
}

/** The `Message` of docs/protocol.md. */
export interface Message {
  readonly chatId: string
  readonly seq: number
  readonly id: string
  readonly authorId: string
  readonly body: string
  readonly clientMsgId: string
  readonly createdAt: string
}

export interface MessageFrame extends Frame {
  readonly type: "message"
  readonly message: Message
}

export interface CloseInfo {
  readonly code: number
  readonly reason: string
}

export interface WaitOptions {
  /** How long to wait (default 30 s: the machine is small and shared, and Kafka may be rebalancing). */
  readonly timeoutMs?: number
  /** Only frames at this index of `frames` or later count (default 0). */
  readonly from?: number
  /** Names the wait in a timeout's message. */
  readonly what?: string
}

export const DefaultTimeoutMs = 30_000

/** The gateway's URL for an HTTP base such as `harmony.url`. */
export const wsUrlOf = (base: string) => `${base.replace(/^http/, "ws")}/v1/ws`

const describeFrame = (frame: Frame) => {
  const text = JSON.stringify(frame)
  return text.length > 300 ? `${text.slice(0, 300)}…` : text
}

interface Waiter {
  readonly matches: () => boolean
  readonly onClose: () => void
}

export const isMessage = (frame: Frame, chatId?: string): frame is MessageFrame =>
  frame.type === "message" && (chatId === undefined || frame.message?.chatId === chatId)

export class WsClient {
  /** Every frame received, in order. Text that is not a JSON object is kept as `{type:"<unparsed>", raw}`. */
  readonly frames: Array<Frame> = []
  /** Binary frames received (the server should never send any). */
  readonly binaryFrames: Array<Buffer> = []
  /** Set once the connection closed. */
  closeInfo: CloseInfo | undefined
  /** Resolves when the connection closes. */
  readonly closed: Promise<CloseInfo>

  private readonly waiters = new Set<Waiter>()

  readonly ws: WebSocket

  private constructor(ws: WebSocket) {
    this.ws = ws
    this.closed = new Promise<CloseInfo>((resolve) => {
      ws.on("close", (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() }
        for (const waiter of [...this.waiters]) waiter.onClose()
        resolve(this.closeInfo)
      })
    })
    ws.on("message", (data, isBinary) => {
      if (isBinary) {
        this.binaryFrames.push(Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer))
        return
      }
      const text = data.toString()
      let frame: Frame
      try {
        const parsed = JSON.parse(text)
        frame =
          typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)
            ? (parsed as Frame)
            : { type: "<unparsed>", raw: text }
      } catch {
        frame = { type: "<unparsed>", raw: text }
      }
      this.frames.push(frame)
      for (const waiter of [...this.waiters]) waiter.matches()
    })
    ws.on("error", () => {
      // Protocol errors surface as a close (with its code); nothing to do here.
    })
  }

  /** Opens a connection to `base`'s gateway (no authentication yet). */
  static connect(base: string, options: { readonly timeoutMs?: number } = {}): Promise<WsClient> {
    const ws = new WebSocket(wsUrlOf(base), { handshakeTimeout: options.timeoutMs ?? DefaultTimeoutMs })
    const client = new WsClient(ws)
    return new Promise<WsClient>((resolve, reject) => {
      const fail = (error: Error) => {
        ws.off("open", open)
        reject(new Error(`WebSocket connection to ${wsUrlOf(base)} failed: ${error.message}`))
      }
      const open = () => {
        ws.off("error", fail)
        resolve(client)
      }
      ws.once("open", open)
      ws.once("error", fail)
      ws.once("unexpected-response", (_request, response) =>
        fail(new Error(`upgrade answered HTTP ${response.statusCode}`))
      )
    })
  }

  /** Connects and authenticates; answers the client and its `ready` frame. */
  static async open(base: string, token: string): Promise<{ client: WsClient; ready: Frame }> {
    const client = await WsClient.connect(base)
    try {
      const ready = await client.auth(token)
      return { client, ready }
    } catch (error) {
      client.terminate()
      throw error
    }
  }

  /** Sends `auth` (with a ref) and waits for `ready`; fails if the connection closes instead. */
  auth(token: string): Promise<Frame> {
    return this.request({ type: "auth", token }).then((frame) => {
      if (frame.type !== "ready") throw new Error(`auth answered ${describeFrame(frame)}`)
      return frame
    })
  }

  /** The index the next frame will get: pass it as `from` to wait only for later frames. */
  mark(): number {
    return this.frames.length
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN
  }

  /** Sends a frame as one JSON text frame. */
  send(frame: ClientFrame): void {
    this.ws.send(JSON.stringify(frame))
  }

  /** Sends `data` as is: text unless `binary`. */
  sendRaw(data: string | Buffer, options: { readonly binary?: boolean } = {}): void {
    this.ws.send(data, { binary: options.binary ?? false })
  }

  /** Sends `frame` with a fresh `ref` (unless it has one) and waits for the frame answering it. */
  async request(frame: ClientFrame, options: WaitOptions = {}): Promise<Frame> {
    const ref = frame.ref ?? `ref-${randomUUID()}`
    const from = this.mark()
    this.send({ ...frame, ref })
    return this.waitFor((f) => f.ref === ref, { what: `the answer to ${JSON.stringify(frame)}`, ...options, from })
  }

  /**
   * Sends every frame (each with a fresh `ref` unless it has one) in one burst — the socket is corked
   * while they are written, so they leave in as few TCP segments as possible — and waits for the
   * answer to each; answers them in the order of `frames`.
   */
  async requestAll(frames: ReadonlyArray<ClientFrame>, options: WaitOptions = {}): Promise<Array<Frame>> {
    const withRefs = frames.map((frame) => ({ ...frame, ref: frame.ref ?? `ref-${randomUUID()}` }))
    const from = this.mark()
    this.socket.cork()
    for (const frame of withRefs) this.send(frame)
    this.socket.uncork()
    return Promise.all(
      withRefs.map((frame) =>
        this.waitFor((f) => f.ref === frame.ref, { what: `the answer to ${frame.type} ${frame.ref}`, ...options, from })
      )
    )
  }

  /** The first frame at or after `from` matching `predicate` (already received, or the next one to arrive). */
  waitFor(predicate: (frame: Frame) => boolean, options: WaitOptions = {}): Promise<Frame> {
    return this.waitForCount(predicate, 1, options).then((frames) => frames[0]!)
  }

  /** The first `count` frames at or after `from` matching `predicate`, once that many arrived. */
  waitForCount(predicate: (frame: Frame) => boolean, count: number, options: WaitOptions = {}): Promise<Array<Frame>> {
    const from = options.from ?? 0
    const timeoutMs = options.timeoutMs ?? DefaultTimeoutMs
    const what = options.what ?? `${count} frame(s) matching ${predicate.toString()}`
    return new Promise<Array<Frame>>((resolve, reject) => {
      // Scans each frame once: a wait costs nothing per frame it already looked at.
      const found: Array<Frame> = []
      let next = from
      const finish = (result: Array<Frame> | Error) => {
        clearTimeout(timer)
        this.waiters.delete(waiter)
        if (result instanceof Error) reject(result)
        else resolve(result)
      }
      const problem = (why: string) => {
        const recent = this.frames.slice(-8).map(describeFrame).join("\n  ")
        return new Error(
          `${why} while waiting for ${what} (got ${found.length} of ${count}); ${this.frames.length} frames received, the last:\n  ${recent}`
        )
      }
      const waiter: Waiter = {
        matches: () => {
          for (; next < this.frames.length && found.length < count; next++) {
            const frame = this.frames[next]!
            if (predicate(frame)) found.push(frame)
          }
          if (found.length >= count) {
            finish(found)
            return true
          }
          return false
        },
        onClose: () => {
          if (!waiter.matches()) {
            finish(problem(`the connection closed (${this.closeInfo?.code} ${this.closeInfo?.reason})`))
          }
        }
      }
      const timer = setTimeout(() => finish(problem(`no luck in ${timeoutMs} ms`)), timeoutMs)
      this.waiters.add(waiter)
      if (waiter.matches()) return
      if (this.closeInfo !== undefined) waiter.onClose()
    })
  }

  /** Frames at or after `from` matching `predicate`, received so far. */
  matching(predicate: (frame: Frame) => boolean, from = 0): Array<Frame> {
    return this.frames.slice(from).filter(predicate)
  }

  /** The messages of `chatId` received so far (at or after `from`), in arrival order. */
  messages(chatId: string, from = 0): Array<Message> {
    return this.frames
      .slice(from)
      .filter((frame): frame is MessageFrame => isMessage(frame, chatId))
      .map((frame) => frame.message)
  }

  /** Waits until `count` messages of `chatId` arrived (at or after `from`); answers them in arrival order. */
  async waitForMessages(chatId: string, count: number, options: WaitOptions = {}): Promise<Array<Message>> {
    const frames = await this.waitForCount((frame) => isMessage(frame, chatId), count, {
      what: `${count} messages of chat ${chatId}`,
      ...options
    })
    return frames.map((frame) => (frame as MessageFrame).message)
  }

  /** Waits until the message with `seq` of `chatId` arrived. */
  waitForSeq(chatId: string, seq: number, options: WaitOptions = {}): Promise<Frame> {
    return this.waitFor((frame) => isMessage(frame, chatId) && frame.message.seq === seq, {
      what: `message seq ${seq} of chat ${chatId}`,
      ...options
    })
  }

  /** A round trip: everything the server sent before answering this ping has arrived once it resolves. */
  async ping(options: WaitOptions = {}): Promise<void> {
    const pong = await this.request({ type: "ping" }, options)
    if (pong.type !== "pong") throw new Error(`ping answered ${describeFrame(pong)}`)
  }

  /** Waits for the close; fails if it does not come in time. */
  waitForClose(timeoutMs = DefaultTimeoutMs): Promise<CloseInfo> {
    if (this.closeInfo !== undefined) return Promise.resolve(this.closeInfo)
    return new Promise<CloseInfo>((resolve, reject) => {
      const timer = setTimeout(() => {
        const recent = this.frames.slice(-5).map(describeFrame).join("\n  ")
        reject(new Error(`the connection did not close in ${timeoutMs} ms; the last frames:\n  ${recent}`))
      }, timeoutMs)
      void this.closed.then((info) => {
        clearTimeout(timer)
        resolve(info)
      })
    })
  }

  /** The underlying TCP socket (to stop reading from it: a slow consumer). */
  get socket(): Socket {
    return (this.ws as unknown as { _socket: Socket })._socket
  }

  /** Stops reading from the socket: the server's frames pile up in its buffers. */
  pauseReading(): void {
    this.socket.pause()
  }

  resumeReading(): void {
    this.socket.resume()
  }

  /** Closes politely and waits for the close (or gives up and terminates after `timeoutMs`). */
  async close(code = 1000, timeoutMs = 5_000): Promise<void> {
    if (this.closeInfo !== undefined) return
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(code)
    const timer = setTimeout(() => this.ws.terminate(), timeoutMs)
    await this.closed
    clearTimeout(timer)
  }

  /** Drops the TCP connection without a close handshake. */
  terminate(): void {
    this.ws.terminate()
  }
}
