/**
 * The WebSocket protocol (docs/protocol.md "WebSocket: GET /v1/ws"): one JSON
 * object per text frame. Client frames are decoded with `ClientFrame`;
 * server frames are encoded with the `ServerFrame` schema of ServerFrames.ts.
 */
import { Schema } from "effect"
import { ChatId, ClientMsgId, MessageBody, Seq } from "./Domain.ts"

const Ref = Schema.optionalKey(Schema.String.check(Schema.isMaxLength(128)))

export const AuthFrame = Schema.Struct({ type: Schema.Literal("auth"), token: Schema.String, ref: Ref })
export const SubscribeFrame = Schema.Struct({
  type: Schema.Literal("subscribe"),
  chatId: ChatId,
  sinceSeq: Schema.optionalKey(Seq),
  /** The epoch the client's seqs belong to (from its last `subscribed`); another epoch means they name nothing here. */
  epoch: Schema.optionalKey(Schema.String.check(Schema.isMaxLength(64))),
  ref: Ref
})
export const UnsubscribeFrame = Schema.Struct({ type: Schema.Literal("unsubscribe"), chatId: ChatId, ref: Ref })
export const SendFrame = Schema.Struct({
  type: Schema.Literal("send"),
  chatId: ChatId,
  clientMsgId: ClientMsgId,
  body: MessageBody,
  ref: Ref
})
export const TypingFrame = Schema.Struct({ type: Schema.Literal("typing"), chatId: ChatId, ref: Ref })
export const ReadFrame = Schema.Struct({ type: Schema.Literal("read"), chatId: ChatId, seq: Seq, ref: Ref })
export const PingFrame = Schema.Struct({ type: Schema.Literal("ping"), ref: Ref })

export const ClientFrame = Schema.Union([
  AuthFrame,
  SubscribeFrame,
  UnsubscribeFrame,
  SendFrame,
  TypingFrame,
  ReadFrame,
  PingFrame
])
export type ClientFrame = typeof ClientFrame.Type

/** Decodes a text frame: JSON, then the frame schema. */
export const decodeClientFrame = Schema.decodeUnknownEffect(Schema.fromJsonString(ClientFrame))

/** Server frames are one Schema, in ServerFrames.ts: the server encodes with it, the SDK decodes with it. */
export type { ServerFrame } from "./ServerFrames.ts"

/** Close codes (docs/protocol.md). */
export const CloseCode = {
  normal: 1000,
  goingAway: 1001,
  tooLarge: 1009,
  unauthorized: 4001,
  tooSlow: 4008,
  rateLimited: 4029,
  malformed: 4400
} as const

/** The largest frame a client may send (docs/protocol.md). */
export const MaxFrameBytes = 64 * 1024
