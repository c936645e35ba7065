/**
 * The WebSocket protocol (docs/protocol.md "WebSocket: GET /v1/ws"): one JSON
 * object per text frame. Client frames are decoded with `ClientFrame`;
 * server frames are built with the constructors below and encoded once.
 */
import { Schema } from "effect"
import { ChatId, ClientMsgId, type Message, MessageBody, Seq, type UserId } from "./Domain.ts"

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

/** Server frames, as plain JSON-ready objects (the `Message` inside is already encoded). */
export type ServerFrame =
  | { readonly type: "ready"; readonly userId: UserId; readonly sessionId: string; readonly ref?: string }
  | {
      readonly type: "subscribed"
      readonly chatId: ChatId
      readonly lastSeq: number
      readonly recovered: boolean
      readonly epoch?: string
      readonly ref?: string
    }
  | { readonly type: "unsubscribed"; readonly chatId: ChatId; readonly ref?: string }
  | { readonly type: "ack"; readonly clientMsgId: string; readonly id: string; readonly ref?: string }
  | { readonly type: "error"; readonly code: string; readonly message: string; readonly ref?: string }
  | { readonly type: "pong"; readonly ref?: string }
  | { readonly type: "message"; readonly message: typeof Message.Encoded }
  | { readonly type: "typing"; readonly chatId: ChatId; readonly userId: UserId }
  | { readonly type: "read"; readonly chatId: ChatId; readonly userId: UserId; readonly seq: number }
  | { readonly type: "presence"; readonly chatId: ChatId; readonly online: ReadonlyArray<UserId> }
  | { readonly type: "join" | "leave"; readonly chatId: ChatId; readonly userId: UserId }
  | { readonly type: "member_added" | "member_removed"; readonly chatId: ChatId; readonly userId: UserId }
  | { readonly type: "chat_deleted"; readonly chatId: ChatId }

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
