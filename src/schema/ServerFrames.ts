/**
 * The server's WebSocket frames as a decoding Schema, for clients (the SDK in
 * src/client) and tests. The server builds its frames as the `ServerFrame`
 * type of Protocol.ts and encodes them itself; this is the other side of the
 * wire. test/client/frames.test.ts checks at compile time that every
 * `ServerFrame` is an encoded `ServerFrame` here, so the two cannot drift.
 */
import { Schema } from "effect"
import { ChatId, Message, Seq, UserId } from "./Domain.ts"

const Ref = Schema.optionalKey(Schema.String)

export const ReadyFrame = Schema.Struct({
  type: Schema.Literal("ready"),
  userId: UserId,
  sessionId: Schema.String,
  ref: Ref
})
export const SubscribedFrame = Schema.Struct({
  type: Schema.Literal("subscribed"),
  chatId: ChatId,
  lastSeq: Seq,
  recovered: Schema.Boolean,
  /** Absent from servers that predate epochs, or when the server could not read it. */
  epoch: Schema.optionalKey(Schema.String),
  ref: Ref
})
export const UnsubscribedFrame = Schema.Struct({ type: Schema.Literal("unsubscribed"), chatId: ChatId, ref: Ref })
export const AckFrame = Schema.Struct({
  type: Schema.Literal("ack"),
  clientMsgId: Schema.String,
  id: Schema.String,
  ref: Ref
})
/** `code` is one of the HTTP error codes (docs/protocol.md "Errors"); kept open so a newer server's code still decodes. */
export const ErrorFrame = Schema.Struct({
  type: Schema.Literal("error"),
  code: Schema.String,
  message: Schema.String,
  ref: Ref
})
export const PongFrame = Schema.Struct({ type: Schema.Literal("pong"), ref: Ref })
export const MessageFrame = Schema.Struct({ type: Schema.Literal("message"), message: Message })
export const TypingSignal = Schema.Struct({ type: Schema.Literal("typing"), chatId: ChatId, userId: UserId })
export const ReadSignal = Schema.Struct({ type: Schema.Literal("read"), chatId: ChatId, userId: UserId, seq: Seq })
export const PresenceFrame = Schema.Struct({
  type: Schema.Literal("presence"),
  chatId: ChatId,
  online: Schema.Array(UserId)
})
export const PresenceChange = Schema.Struct({
  type: Schema.Literals(["join", "leave"]),
  chatId: ChatId,
  userId: UserId
})
export const MembershipChange = Schema.Struct({
  type: Schema.Literals(["member_added", "member_removed"]),
  chatId: ChatId,
  userId: UserId
})
export const ChatDeletedFrame = Schema.Struct({ type: Schema.Literal("chat_deleted"), chatId: ChatId })

export const ServerFrame = Schema.Union([
  ReadyFrame,
  SubscribedFrame,
  UnsubscribedFrame,
  AckFrame,
  ErrorFrame,
  PongFrame,
  MessageFrame,
  TypingSignal,
  ReadSignal,
  PresenceFrame,
  PresenceChange,
  MembershipChange,
  ChatDeletedFrame
])
export type ServerFrame = typeof ServerFrame.Type

/** Decodes one text frame: JSON, then the frame schema. */
export const decodeServerFrame = Schema.decodeUnknownExit(Schema.fromJsonString(ServerFrame))
